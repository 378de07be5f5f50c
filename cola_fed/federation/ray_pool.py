"""The server's passes on Ray actors (``server.engine = "ray"``).

Each of ``server.workers`` actors builds the frozen model ONCE, from the run config, the way
the ServerApp builds its own, and proves it by the digest of its weights; it then takes
:class:`~cola_fed.federation.passes.GroupJob` s and returns
:class:`~cola_fed.federation.passes.GroupResult` s (encoded, unsealed adaptation data). Keys,
channels and sealing stay on the coordinator: an actor never sees a key.

A round's groups are submitted at once, within ``strategy.max-inflight-mb`` of results not yet
taken (estimated from the bytes per sample of the results seen so far), each to the actor with
the fewest groups queued; results are taken as they finish, in any order. An actor that dies is
restarted by Ray (``max_restarts``) and its queued groups run again (``max_task_retries``, and
the pool resubmits what Ray gives up on); should no result come back for ``strategy.timeout``
seconds, the groups still out are given up for the round (their nodes skipped, not counted
against them) and the actors that held them are restarted.

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
from typing import Any

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
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

#: how often a group is submitted again after the actor running it was lost
MAX_RESUBMITS = 2
#: Ray restarts of one actor before it is given up
MAX_RESTARTS = 4


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
        remote = ray.remote(PassWorker).options(
            num_cpus=cpus, num_gpus=server.gpus_per_worker, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESUBMITS, max_concurrency=1)
        threads = max(1, math.floor(server.cpus_per_worker))
        self.actors = [remote.remote(self.config, threads) for _ in range(server.workers)]
        want = weights_digest(self.engine.model)
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
        from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError

        self.start()
        delta = [ray.put(collaborative) if collaborative is not None else None]  # once
        todo = list(jobs)
        todo.reverse()  # popped from the end: submitted in the round's order
        out: dict[Any, tuple[GroupJob, int, int]] = {}  # ref -> (job, actor, tries)
        cap = self.config.strategy.max_inflight_mb * 1e6
        patience = self.config.strategy.timeout

        def room(job: GroupJob) -> bool:
            if not out:
                return True
            if self._bytes_per_sample is None:  # nothing measured yet: one group per worker
                return len(out) < len(self.actors)
            held = sum(j.samples for j, _, _ in out.values()) + job.samples
            return held * self._bytes_per_sample <= cap

        def send(job: GroupJob, tries: int) -> None:
            load = [0] * len(self.actors)
            for _, actor, _ in out.values():
                load[actor] += 1
            actor = min(range(len(self.actors)), key=load.__getitem__)
            out[self.actors[actor].run.remote(job, delta)] = (job, actor, tries)

        last = time.monotonic()
        while todo or out:
            while todo and room(todo[-1]):
                send(todo.pop(), 0)
            ready, _ = ray.wait(list(out), num_returns=1,
                                timeout=max(0.0, last + patience - time.monotonic()))
            if not ready:  # nothing came back for strategy.timeout seconds: give up the rest
                yield from self._give_up(out, patience)
                last = time.monotonic()
                continue
            ref = ready[0]
            job, _, tries = out.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as err:  # the group's own error, as the local pool raises it
                raise err.as_instanceof_cause() from None
            except (RayActorError, GetTimeoutError, ObjectLostError) as err:
                if tries < MAX_RESUBMITS:
                    log.warning("Ray pool: group %d lost with its worker (%s); submitting it "
                                "again", job.index, type(err).__name__)
                    send(job, tries + 1)
                else:
                    yield _lost(job, f"its worker was lost {tries + 1} times "
                                     f"({type(err).__name__})")
                continue
            last = time.monotonic()
            if result.payloads and job.samples:
                self._bytes_per_sample = max(self._bytes_per_sample or 0.0,
                                             result.nbytes / job.samples)
            yield result

    def _give_up(self, out: dict[Any, tuple[GroupJob, int, int]], patience: float
                 ) -> Iterator[GroupResult]:
        import ray

        stuck = {actor for _, actor, _ in out.values()}
        for ref, (job, _, _) in list(out.items()):
            with contextlib.suppress(Exception):  # done, or not cancellable: restarted below
                ray.cancel(ref, force=False)
            yield _lost(job, f"no worker result for {patience:g} s (strategy.timeout)")
        out.clear()
        for actor in stuck:  # a hung actor would hold later rounds: start it afresh
            ray.kill(self.actors[actor], no_restart=False)

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


def _lost(job: GroupJob, why: str) -> GroupResult:
    return GroupResult(index=job.index, delta=job.delta, lost=why,
                       lost_nodes=tuple(node.name for node in job.nodes))


def _runtime_env() -> dict[str, Any]:
    """Workers import cola-fed (and the tasks) as this process does: its ``sys.path``."""
    path = os.pathsep.join([p for p in sys.path if p] +
                           ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return {"env_vars": {"PYTHONPATH": path}}
