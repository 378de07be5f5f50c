"""The server's passes on Ray actors (``server.engine = "ray"``).

Each of ``server.workers`` actors builds the frozen model ONCE, from the run config, the way
the ServerApp builds its own, and proves it by the digest of its weights; it then takes
:class:`~cola_fed.federation.passes.GroupJob` s and returns
:class:`~cola_fed.federation.passes.GroupResult` s (encoded, unsealed adaptation data). Keys,
channels and sealing stay on the coordinator: an actor never sees a key.

A round's groups are submitted at once, within ``strategy.max-inflight-mb`` of results not yet
taken (estimated from the bytes per sample of the results seen so far), each to the actor with
the fewest groups queued; results are taken as they finish, in any order.

The pool, not Ray, owns retries: Ray neither restarts an actor nor retries its tasks. An actor
that dies (its process crashed, or the host killed it for memory) is killed for good and a fresh
one, with the same weights, takes its slot; the group it was running (an actor runs its groups
in the order they were sent, so that is the first of its groups that did not come back) is sent
again, and the groups queued behind it are sent again without counting. A group lost twice is
taken apart: each of its nodes runs ALONE once; a node whose batch kills that worker too is
reported ``broken`` (counted against it: ``strategy.max-failures`` quarantines it), and the
others run again together, as one group, so that they get what a clean shared pass gives them.
Past ``2 * server.workers + 4`` replacements in one submission the run stops
(:class:`~cola_fed.errors.RunStopped`). Should no result come back for ``strategy.timeout``
seconds, the groups still out are given up for the round (their nodes skipped, not counted
against them: a slow server is not their fault) and the actors that held them are replaced.

Ray itself: with ``server.ray-address`` empty, a Ray of the run's own (its own temp folder under
``/tmp``, no dashboard, ``workers * cpus-per-worker`` CPUs), shut down by :meth:`RayPool.close`;
else the running cluster at that address, left running. Under Flower's simulation engine the
ServerApp shares its process with the engine's own Ray (started for the nodes): the pool joins
it, and its actors reserve no CPU there (the engine sizes its node actors to every CPU).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError, RunStopped
from cola_fed.federation.passes import (
    GroupJob,
    GroupResult,
    PassPool,
    build_engine,
    run_group,
    weights_digest,
)
from cola_fed.gl.engine import Deltas, ServerEngine

log = logging.getLogger("cola_fed")

#: actor replacements one submission may take beyond two per worker, before the run stops
SPARE_REPLACEMENTS = 4


class WorkerDied(RuntimeError):
    """A node's batch killed the Ray worker computing it: with its group, twice, and alone."""


class PassWorker:
    """A Ray actor's body: the run's frozen model, built once, computing groups.

    Parameters
    ----------
    config : RunConfig
        The run config the coordinator built its own engine from.
    threads : int
        Torch threads (the CPUs the actor reserves).
    """

    def __init__(self, config: RunConfig, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.engine = build_engine(config)
        self._digest = weights_digest(self.engine.model)  # before it moves: bytes are bytes
        if config.server.gpus_per_worker > 0 and torch.cuda.is_available():
            self.engine.model.to("cuda")  # Ray set CUDA_VISIBLE_DEVICES to this actor's GPU
        self._delta: tuple[Any, Deltas | None] = (None, None)

    def digest(self) -> str:
        """The digest of the weights this actor computes with."""
        return self._digest

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: GroupJob, delta: list) -> GroupResult:
        """One group's result; ``delta`` is ``[ref]`` of the round's collaborative model
        (a list, so that Ray hands the reference, fetched once per actor and version)."""
        import ray

        [ref] = delta
        if ref is None:
            collaborative = None
        else:
            if self._delta[0] != ref.hex():
                self._delta = (ref.hex(), ray.get(ref))
            collaborative = self._delta[1]
        return run_group(self.engine, job, collaborative).portable()


class RayPool(PassPool):
    """The groups on ``server.workers`` Ray actors (see the module documentation).

    Parameters
    ----------
    config : RunConfig
        The run config (``server.*``; ``strategy.max-inflight-mb`` bounds the results out,
        ``strategy.timeout`` the wait for one).
    engine : ServerEngine
        The coordinator's engine: the actors' weights must have its digest, and it forms
        ``col`` mode's deltas.
    """

    def __init__(self, config: RunConfig, engine: ServerEngine) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("server.engine = \"ray\" needs Ray, which is not installed: "
                              "pip install 'cola-fed[sim]' (or set server.engine = \"local\")")
        super().__init__(engine)
        self.config = config
        self.actors: list[Any] = []
        self._owns_ray = False
        self._temp_dir: str | None = None
        self._bytes_per_sample: float | None = None
        self._remote: Any = None
        self._want = ""
        self._replacements = 0

    # ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Join or start Ray and build the actors (the first round does it); refuses actors
        whose weights differ from the coordinator's."""
        if self.actors:
            return
        import ray

        server = self.config.server
        cpus = server.cpus_per_worker
        if ray.is_initialized():  # Flower's simulation engine's, in this very process
            log.info("the Ray pool joins the Ray already running in this process (Flower's "
                     "simulation engine's); its workers reserve no CPU there")
            cpus = 0
        elif server.ray_address:
            ray.init(address=server.ray_address, log_to_driver=False,
                     runtime_env=_runtime_env())
        else:
            self._temp_dir = tempfile.mkdtemp(prefix="cola-ray-", dir="/tmp")
            ray.init(num_cpus=max(1, math.ceil(server.workers * server.cpus_per_worker)),
                     include_dashboard=False, log_to_driver=False, _temp_dir=self._temp_dir,
                     runtime_env=_runtime_env())
            self._owns_ray = True
        # the pool owns retries and restarts (see the module documentation), not Ray
        self._remote = ray.remote(PassWorker).options(
            num_cpus=cpus, num_gpus=server.gpus_per_worker, max_restarts=0,
            max_task_retries=0, max_concurrency=1)
        self.actors = [self._spawn() for _ in range(server.workers)]
        want = self._want = weights_digest(self.engine.model)
        try:
            digests = ray.get([a.digest.remote() for a in self.actors],
                              timeout=self.config.strategy.timeout)
        except Exception as err:
            self.close()
            raise ConfigError(f"server.engine = \"ray\": the {server.workers} workers "
                              f"(server.workers) did not all load the model (given "
                              f"strategy.timeout = {self.config.strategy.timeout:g} s): "
                              f"{type(err).__name__}: {err}") from None
        if any(d != want for d in digests):
            self.close()
            raise ConfigError(f"server.engine = \"ray\": a worker built the model with other "
                              f"weights (digest {sorted(set(digests) - {want})} against the "
                              f"server's {want}): every Ray host must have the same model "
                              f"files and cola-fed version")
        log.info("Ray pool: %d workers, each with the model (weights %s)", len(self.actors),
                 want[:12])

    def submit(self, jobs: Iterable[GroupJob], collaborative: Deltas | None
               ) -> Iterator[GroupResult]:
        """Every group to the actors, within ``strategy.max-inflight-mb`` of results out;
        each result as soon as it is back, in any order."""
        import ray

        self.start()
        self._replacements = 0
        self._replace_dead()
        delta = [ray.put(collaborative) if collaborative is not None else None]  # once
        yield from _Round(self, list(jobs), delta).results()

    def _replace_dead(self) -> None:
        """Replace the actors that died since the last submission: one that dies idle (its
        host killed it) is seen only when asked."""
        import ray

        pings = [actor.pid.remote() for actor in self.actors]
        ray.wait(pings, num_returns=len(pings), timeout=self.config.strategy.timeout)
        for actor, ping in zip(list(self.actors), pings, strict=True):
            try:
                ray.get(ping, timeout=0)
            except Exception as err:
                self.replace_actor(actor, f"was found dead ({type(err).__name__})")

    def _spawn(self) -> Any:
        return self._remote.remote(self.config, max(1, math.floor(self.config.server
                                                                  .cpus_per_worker)))

    def replace_actor(self, actor: Any, why: str) -> None:
        """Kill ``actor`` for good and put a fresh one, with the coordinator's weights, in its
        slot (nothing when it was replaced already).

        Raises
        ------
        RunStopped
            Past ``2 * server.workers + 4`` replacements in one submission, or when the fresh
            actor does not load the model with the coordinator's weights.
        """
        import ray

        slot = next((i for i, a in enumerate(self.actors) if a is actor), None)
        if slot is None:
            return
        ray.kill(actor, no_restart=True)
        self._replacements += 1
        workers = self.config.server.workers
        if self._replacements > 2 * workers + SPARE_REPLACEMENTS:
            raise RunStopped(f"the Ray workers keep dying: {self._replacements} replaced in one "
                             f"round ({workers} workers, server.workers), the latest: {why}")
        log.warning("Ray pool: replacing worker %d: %s", slot, why)
        fresh = self.actors[slot] = self._spawn()
        timeout = self.config.strategy.timeout
        try:
            digest = ray.get(fresh.digest.remote(), timeout=timeout)
        except Exception as err:
            raise RunStopped(f"the Ray workers keep dying: a fresh worker did not load the model "
                             f"within strategy.timeout = {timeout:g} s ({type(err).__name__}: "
                             f"{err}); it replaced one that {why}") from None
        if digest != self._want:
            raise RunStopped(f"a fresh Ray worker built the model with other weights (digest "
                             f"{digest} against the server's {self._want}): every Ray host must "
                             f"have the same model files and cola-fed version")

    def close(self) -> None:
        """Stop the actors; shut down a Ray started for the run and remove its temp folder."""
        if not self.actors and not self._owns_ray:
            return
        import ray

        if ray.is_initialized():
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


@dataclass(frozen=True)
class _Try:
    """One submission: ``job`` runs for the round's group ``group`` as the whole group, one
    node ``alone`` or the nodes that ``survived`` their probes; ``retried``: lost once
    already."""

    group: GroupJob
    job: GroupJob
    kind: str = "group"  # "group" | "alone" | "survived"
    retried: bool = False
    actor: Any = None


@dataclass
class _Probes:
    """A group taken apart: the nodes whose lone run is out, and those it broke."""

    out: set[str]
    broken: dict[str, BaseException] = field(default_factory=dict)


class _Round:
    """One submission's groups on the pool's actors (see the module documentation)."""

    def __init__(self, pool: RayPool, jobs: list[GroupJob], delta: list) -> None:
        self.pool = pool
        self.delta = delta
        self.todo = [_Try(job, job) for job in reversed(jobs)]  # popped from the end: in order
        self.out: dict[Any, _Try] = {}  # ref -> what runs there, in the order sent
        self.probes: dict[int, _Probes] = {}  # group index -> its nodes run alone
        self.patience = pool.config.strategy.timeout

    def results(self) -> Iterator[GroupResult]:
        import ray
        from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

        last = time.monotonic()
        while self.todo or self.out:
            while self.todo and self._room(self.todo[-1].job):
                self._send(self.todo.pop())
            ready, _ = ray.wait(list(self.out), num_returns=1,
                                timeout=max(0.0, last + self.patience - time.monotonic()))
            if not ready:  # nothing came back for strategy.timeout seconds: give up the rest
                yield from self._give_up()
                last = time.monotonic()
                continue
            try:
                result = ray.get(ready[0])
            except RayTaskError as err:  # the group's own error, as the local pool raises it
                raise err.as_instanceof_cause() from None
            except (RayActorError, ObjectLostError) as err:
                yield from self._worker_lost(self.out[ready[0]].actor, err)
                last = time.monotonic()  # a fresh actor loaded the model meanwhile
                continue
            last = time.monotonic()
            yield from self._done(self.out.pop(ready[0]), result)

    def _room(self, job: GroupJob) -> bool:
        per_sample = self.pool._bytes_per_sample
        if not self.out:
            return True
        if per_sample is None:  # nothing measured yet: one group per worker
            return len(self.out) < len(self.pool.actors)
        held = sum(t.job.samples for t in self.out.values()) + job.samples
        return held * per_sample <= self.pool.config.strategy.max_inflight_mb * 1e6

    def _send(self, attempt: _Try) -> None:
        actors = self.pool.actors
        load = {id(a): 0 for a in actors}
        for sent in self.out.values():
            load[id(sent.actor)] = load.get(id(sent.actor), 0) + 1
        actor = min(actors, key=lambda a: load[id(a)])
        self.out[actor.run.remote(attempt.job, self.delta)] = replace(attempt, actor=actor)

    def _done(self, attempt: _Try, result: GroupResult) -> Iterator[GroupResult]:
        if result.payloads and attempt.job.samples:
            self.pool._bytes_per_sample = max(self.pool._bytes_per_sample or 0.0,
                                              result.nbytes / attempt.job.samples)
        if attempt.kind == "group":
            yield result
        elif attempt.kind == "alone":  # its payload is not sent: it runs again with the others
            probes = self.probes[attempt.group.index]
            probes.out -= {attempt.job.nodes[0].name}
            probes.broken.update(result.broken)
            yield from self._after_probes(attempt.group)
        else:
            broken = self.probes.pop(attempt.group.index).broken
            yield replace(result, broken={**broken, **result.broken})

    def _worker_lost(self, actor: Any, err: BaseException) -> Iterator[GroupResult]:
        """``actor`` died: its groups that finished before count, the first that did not (it
        ran them in order) was running and is lost with it, the others go out again."""
        import ray

        sent = [ref for ref, attempt in self.out.items() if attempt.actor is actor]
        ray.wait(sent, num_returns=len(sent), timeout=self.patience)  # a dead actor's: at once
        why = f"{type(err).__name__}: {err}".splitlines()[0]
        self.pool.replace_actor(actor, f"was lost ({why})")
        running = True
        for ref in sent:
            attempt = self.out.pop(ref)
            try:
                result = ray.get(ref, timeout=0)
            except Exception as lost:
                if running:
                    running = False
                    yield from self._lost(attempt, lost)
                else:
                    self.todo.append(replace(attempt, actor=None))
                continue
            yield from self._done(attempt, result)

    def _lost(self, attempt: _Try, err: BaseException) -> Iterator[GroupResult]:
        """The job ``attempt`` ran was lost with its worker: once more, then node by node."""
        group, nodes = attempt.group, attempt.job.nodes
        what = f"{type(err).__name__}: {err}".splitlines()[0]
        if attempt.kind == "group" and not attempt.retried:
            log.warning("Ray pool: group %d lost with its worker (%s); submitting it again",
                        group.index, what)
            self.todo.append(replace(attempt, retried=True, actor=None))
        elif attempt.kind == "group" and len(nodes) > 1:
            log.warning("Ray pool: group %d lost with its worker twice (%s); running each of "
                        "its %d nodes alone", group.index, what, len(nodes))
            self.probes[group.index] = _Probes(out={node.name for node in nodes})
            self.todo.extend(_Try(group, replace(group, nodes=(node,)), "alone")
                             for node in reversed(nodes))
        elif attempt.kind in ("group", "alone"):
            error = WorkerDied(f"its batch killed the Ray worker computing it twice, the "
                               f"second time alone ({what})")
            if attempt.kind == "group":
                yield replace(_empty(group), broken={nodes[0].name: error})
                return
            probes = self.probes[group.index]
            probes.out -= {nodes[0].name}
            probes.broken[nodes[0].name] = error
            yield from self._after_probes(group)
        else:  # the survivors, lost again: skipped this round, not counted
            broken = self.probes.pop(group.index).broken
            yield replace(_lost(attempt.job, f"its worker was lost again after the nodes that "
                                             f"broke it left ({what})"), broken=broken)

    def _after_probes(self, group: GroupJob) -> Iterator[GroupResult]:
        """Once every node of ``group`` ran alone: those that broke nothing run again together
        (``col`` mode: not now; the round runs them again under the new delta)."""
        probes = self.probes[group.index]
        if probes.out:
            return
        left = tuple(node for node in group.nodes if node.name not in probes.broken)
        if not left or (probes.broken and group.mode == "col"):
            del self.probes[group.index]
            yield replace(_empty(group), broken=probes.broken, stale=bool(left))
        else:
            self.todo.append(_Try(group, replace(group, nodes=left), "survived"))

    def _give_up(self) -> Iterator[GroupResult]:
        """No result for ``strategy.timeout`` seconds: the groups still out are skipped this
        round, not counted against their nodes; the actors that held them are replaced."""
        import ray

        stuck: dict[int, Any] = {}
        groups: dict[int, GroupJob] = {}
        for ref, attempt in self.out.items():
            with contextlib.suppress(Exception):  # done, or not cancellable: replaced below
                ray.cancel(ref, force=False)
            stuck[id(attempt.actor)] = attempt.actor
            groups[attempt.group.index] = attempt.group
        self.out.clear()
        why = f"no worker result for {self.patience:g} s (strategy.timeout)"
        for group in groups.values():
            broken = self.probes.pop(group.index, _Probes(set())).broken
            left = replace(group, nodes=tuple(n for n in group.nodes if n.name not in broken))
            yield replace(_lost(left, why), broken=broken)
        self.todo = [t for t in self.todo if t.group.index not in groups]
        for actor in stuck.values():  # a hung actor would hold later rounds: start it afresh
            self.pool.replace_actor(actor, f"hung ({why})")


def _empty(job: GroupJob) -> GroupResult:
    return GroupResult(index=job.index, delta=job.delta)


def _lost(job: GroupJob, why: str) -> GroupResult:
    return GroupResult(index=job.index, delta=job.delta, lost=why,
                       lost_nodes=tuple(node.name for node in job.nodes))


def _runtime_env() -> dict[str, Any]:
    """Workers import cola-fed (and the tasks) as this process does: its ``sys.path``."""
    path = os.pathsep.join([p for p in sys.path if p] +
                           ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return {"env_vars": {"PYTHONPATH": path}}
