"""The server's forward/backward passes behind one small interface: groups of node batches in,
each node's encoded adaptation data out.

A round cuts its sampled nodes into groups (at most ``strategy.max-server-batch`` samples per
chunk, formed the same way whatever runs them) and hands them to a :class:`PassPool` as
:class:`GroupJob` s. :func:`run_group`, the one pure function of a group, runs its shared
passes (retrying a failing one node by node, as the strategy always did), puts each node's
interval in its wire form and encodes it: everything up to, not including, sealing. Keys,
channels and node sessions stay with the coordinator (the strategy); a pool sees numpy batches,
adapters and specs only.

Two pools: :class:`LocalPool` runs the groups lazily in this process, one after another (the
server holds one group's results at a time); ``cola_fed.federation.ray_pool.RayPool`` runs them
on Ray actors that each hold the frozen model once. :func:`round_results` is what a round does
with a pool: in ``col`` mode it forms the collaborative delta once, and again whenever a node
whose batch breaks a pass leaves, and lets out only results made with the final delta.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from cola_fed.config import RunConfig
from cola_fed.errors import TargetError
from cola_fed.federation.protocol import adaptation_part
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.engine import ColAggregate, Deltas, ServerEngine
from cola_fed.gl.forms import to_forms
from cola_fed.gl.layout import assign_specs
from cola_fed.wire import encode_adaptation

Batch = dict[str, np.ndarray]


def build_engine(config: RunConfig, task: Any = None) -> ServerEngine:
    """The frozen model of a run config with its adapted layers: what the server (and every
    Ray worker, from the same config) computes with."""
    if task is None:
        from cola_fed.tasks import get_task

        task = get_task(config.task)
    model = task.build_model()
    return ServerEngine(model, targets=task.adapted_targets(model, config.adapter.target_list),
                        mode=config.strategy.mode,
                        max_batch_size=config.strategy.max_server_batch)


def weights_digest(model: torch.nn.Module) -> str:
    """A BLAKE2b digest of a model's parameters and buffers (names, dtypes, shapes, bytes): two
    processes that built the model from one run config must agree on it."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class NodeJob:
    """One node's share of a group: its interval of batches, at its adapters.

    Attributes
    ----------
    name : str
        The node's name in the engine's calls (its node id, as text).
    batches : tuple of dict
        Its interval of batches (numpy), in order.
    adapters : dict
        ``{layer: {param: array}}``, the state the TRAIN order acknowledges.
    specs : dict
        Its adapter specs by layer selector.
    form : str
        The wire form its data takes (``wire.form``, or ``rows`` for a node that can only
        take rows).
    """

    name: str
    batches: tuple[Batch, ...]
    adapters: Mapping[str, Mapping[str, Any]]
    specs: Mapping[str, Any]
    form: str

    @property
    def samples(self) -> int:
        """The most samples of one of its batches (what it adds to a pass)."""
        return max(len(next(iter(b.values()))) for b in self.batches)


@dataclass(frozen=True)
class GroupJob:
    """A group of nodes computed in shared passes, one per chunk of their interval.

    Attributes
    ----------
    index : int
        The group's place in the round (results come back in any order).
    nodes : tuple of NodeJob
        Its nodes, in partition order.
    mode : str
        ``strategy.mode``.
    wire_dtype : str
        ``wire.dtype`` of the encoded data.
    delta : int
        ``col`` mode: the version of the round's collaborative delta it is computed with.
    """

    index: int
    nodes: tuple[NodeJob, ...]
    mode: str
    wire_dtype: str = "float32"
    delta: int = 0

    @property
    def samples(self) -> int:
        return sum(node.samples for node in self.nodes)


class PassError(RuntimeError):
    """A node's error in a pass run in another process (a Ray worker), as its type's name and
    message."""


@dataclass
class GroupResult:
    """What a group's passes gave.

    Attributes
    ----------
    index, delta : int
        Those of its job.
    payloads : dict
        Node name -> its encoded adaptation parts (``adaptation0``, ...), ready to seal.
    broken : dict
        Node name -> the error with which its batch breaks a pass on its own.
    shared_failure : str
        The error of the shared pass, when it failed and was run again node by node.
    rows_instead : dict
        Node name -> why its data could not take its wire form (it gets rows).
    model_at_fault : str
        Set when every node of the group breaks the pass with one ``TargetError``: the model
        or its targets are wrong, not the nodes (the run stops).
    stale : bool
        ``col`` mode: a node left, so the delta the others were computed with is outdated;
        the group carries no payloads and is run again under the new delta.
    lost : str
        Why the pool could not compute the group at all (workers lost past the deadline);
        its nodes (``lost_nodes``) are skipped for the round, not counted against them.
    """

    index: int
    delta: int = 0
    payloads: dict[str, dict[str, bytes]] = field(default_factory=dict)
    broken: dict[str, BaseException] = field(default_factory=dict)
    shared_failure: str = ""
    rows_instead: dict[str, str] = field(default_factory=dict)
    model_at_fault: str = ""
    stale: bool = False
    lost: str = ""
    lost_nodes: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(len(b) for parts in self.payloads.values() for b in parts.values())

    def portable(self) -> GroupResult:
        """The result with every error as text (:class:`PassError`): a worker's errors cross
        a process, and an exception object need not survive the trip."""
        return replace(self, broken={n: PassError(f"{type(e).__name__}: {e}")
                                     for n, e in self.broken.items()})


def run_group(engine: ServerEngine, job: GroupJob, collaborative: Deltas | None
              ) -> GroupResult:
    """Each node's adaptation data of a group, in shared passes, in its wire form, encoded.

    A shared pass that raises is run again node by node: the nodes whose batch breaks it alone
    are reported in ``broken`` and the others get one shared pass again, as a clean round would
    give them (``col`` mode: the delta changes when a node leaves, so the group is ``stale``
    and the round runs it again under the new delta).
    """
    result = GroupResult(index=job.index, delta=job.delta)
    chunks: dict[str, list[AdaptationData]] = {node.name: [] for node in job.nodes}
    live = list(job.nodes)
    for i in range(len(job.nodes[0].batches) if job.nodes else 0):
        before = len(live)
        try:
            out = _compute(engine, live, i, job.mode, collaborative)
        except Exception as err:
            result.shared_failure = f"{type(err).__name__}: {err}"
            out, broken = {}, []
            for node in live:
                try:
                    out.update(_compute(engine, [node], i, job.mode, collaborative))
                except Exception as alone:
                    broken.append((node, alone))
            result.model_at_fault = _model_at_fault([e for _, e in broken], len(live))
            if result.model_at_fault:
                return result
            for node, alone in broken:
                result.broken[node.name] = alone
                del chunks[node.name]
                live.remove(node)
            if len(live) < before:
                if job.mode == "col":
                    result.stale = True
                    return result
                out = _compute(engine, live, i, job.mode, collaborative)
        for name, data in out.items():
            if name in chunks:
                chunks[name].append(data)
    for node in live:
        data = _in_wire_form(engine, node, chunks.pop(node.name), result)
        result.payloads[node.name] = {adaptation_part(i): encode_adaptation(d,
                                                                            dtype=job.wire_dtype)
                                      for i, d in enumerate(data)}
    return result


def _compute(engine: ServerEngine, nodes: list[NodeJob], chunk: int, mode: str,
             collaborative: Deltas | None) -> dict[str, AdaptationData]:
    if not nodes:
        return {}
    device = next(engine.model.parameters(), torch.empty(0)).device  # a GPU worker's model
    return engine.compute(
        {n.name: {k: torch.as_tensor(v, device=device) for k, v in n.batches[chunk].items()}
         for n in nodes},
        {n.name: n.adapters for n in nodes}, specs={n.name: n.specs for n in nodes},
        mode=mode, collaborative=collaborative)


def _in_wire_form(engine: ServerEngine, node: NodeJob, chunks: list[AdaptationData],
                  result: GroupResult) -> list[AdaptationData]:
    """One node's interval in the exact forms its ``form`` picks per layer, the parameter
    gradient taken at ``node.adapters``. Should that fail for this node (its adapters break
    its family's VJP, memory runs out), it gets rows, which every node takes."""
    if node.form == "rows":
        return chunks
    try:
        return to_forms(chunks, engine.layout, assign_specs(engine.layout, node.specs),
                        node.form, adapters=node.adapters)
    except Exception as err:
        result.rows_instead[node.name] = f"{type(err).__name__}: {err}"
        return chunks


def _model_at_fault(broken: list[BaseException], live: int) -> str:
    """Why the run must stop, when every node of a pass (two or more) breaks it alone with
    one and the same ``TargetError``: batches that passed their input contract all fail on the
    model's own structure, which is the run's configuration, not the nodes' fault."""
    errors = {f"{type(e).__name__}: {e}" for e in broken}
    if live >= 2 and len(broken) == live and len(errors) == 1 and all(
            isinstance(e, TargetError) for e in broken):
        return (f"every node's batch breaks the server's pass with the same error, so the "
                f"model or its targets are wrong, not the nodes: {errors.pop()}")
    return ""


class PassPool:
    """Where a round's groups are computed. ``submit`` yields each group's result as soon as
    it is done, in any order; ``collaborative_deltas`` forms ``col`` mode's shared model on
    the coordinator; ``close`` frees the pool's resources.

    Parameters
    ----------
    engine : ServerEngine
        The coordinator's own engine (it forms the collaborative deltas).
    """

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine

    def submit(self, jobs: Iterable[GroupJob], collaborative: Deltas | None
               ) -> Iterator[GroupResult]:
        raise NotImplementedError

    def collaborative_deltas(self, adapters: Mapping[str, Mapping[str, Any]],
                             specs: Mapping[str, Any], aggregate: ColAggregate) -> Deltas:
        """``col`` mode's model of ``adapters``, formed once per round (and per node that
        leaves it) on the coordinator."""
        return self.engine.collaborative_deltas(adapters, specs=specs, aggregate=aggregate)

    def close(self) -> None:
        """Free what the pool holds (nothing for the local pool)."""


class LocalPool(PassPool):
    """The groups in this process, one after another, each computed only when the round asks
    for the next result: the server holds one group's results at a time."""

    def submit(self, jobs: Iterable[GroupJob], collaborative: Deltas | None
               ) -> Iterator[GroupResult]:
        for job in jobs:
            yield run_group(self.engine, job, collaborative)


def round_results(pool: PassPool, jobs: list[GroupJob],
                  deltas: Callable[[frozenset[str]], Deltas] | None) -> Iterator[GroupResult]:
    """A round's group results, as a pool returns them.

    Without ``deltas`` (``unmerged``, ``merged``) each result is final and comes out as soon
    as its group is done. With ``deltas`` (``col`` mode: the names of the nodes still in the
    round -> their collaborative model), results are held until every group has returned
    under one delta: when a node breaks a pass and leaves, the delta changes, so every group
    computed with the old one is run again (without the nodes that left) and its first results
    are discarded, never let out. Results that carry broken nodes come out at once, without
    payloads (the coordinator counts the fault). The cost: in ``col`` mode the coordinator holds
    a whole round's encoded payloads before it sends the first, and a round in which a node
    breaks a pass computes its groups once more.
    """
    if deltas is None or not jobs:
        yield from pool.submit(jobs, None)
        return
    members = frozenset(node.name for job in jobs for node in job.nodes)
    version = 0
    while True:
        collaborative = deltas(members)
        held: list[GroupResult] = []
        left: set[str] = set()
        for result in pool.submit(jobs, collaborative):
            if result.broken or result.model_at_fault or result.shared_failure:
                left |= set(result.broken)
                yield replace(result, payloads={}, rows_instead={})  # the faults, not the data
            if not result.stale and not result.model_at_fault:
                held.append(result)
        if not left:
            for result in held:
                yield replace(result, broken={}, shared_failure="")  # already reported
            return
        members -= left
        version += 1
        jobs = [replace(job, delta=version,
                        nodes=tuple(n for n in job.nodes if n.name not in left))
                for job in jobs]
        jobs = [job for job in jobs if job.nodes]
