"""What the server holds per partition (``NodeSession``) and tells every node (``build_plan``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cola_fed.adapters.spec import AdapterSpec
from cola_fed.config import RunConfig
from cola_fed.federation.checkpoint import flatten_state
from cola_fed.federation.protocol import Assignment, Plan, TrainReport
from cola_fed.gl.layout import Layout
from cola_fed.tasks.base import ClientData, Task
from cola_fed.wire import SecureChannel


def build_plan(layout: Layout, task: Task, config: RunConfig) -> Plan:
    """What every node is told about the run at hello, resolved from the run config."""
    assignment, kinds = Assignment.from_rule("adapter.kinds", config.adapter.kinds,
                                             config.adapter.kind)
    node_specs = []
    for kind in kinds:
        specs = {"*": config.adapter.spec_of_kind(kind)}
        if task.head:  # a fresh, frozen head learns through a Linear adapter with bias
            specs[task.head] = AdapterSpec(kind="linear", bias=True)
        node_specs.append(specs)
    backend_assignment, backends = Assignment.from_rule("edge.backends", config.edge.backends,
                                                        "")
    return Plan(layout=layout, task=task.plan_config(),
                node_specs=tuple(node_specs), spec_assignment=assignment,
                optimizer=config.optimizer.spec(), interval=config.data.interval,
                wire_dtype=config.wire.dtype, data_mode=config.data.mode,
                backends=tuple(backends), backend_assignment=backend_assignment)


@dataclass
class NodeSession:
    """What the server holds for one partition's node between rounds.

    ``node_id`` and ``channel`` are the node's current connection: a node that restarts (or
    every node, when the server resumes from a checkpoint) gets a new one at its next hello,
    after proving with ``identity`` that it is the node that held the partition.
    """

    partition_id: int
    identity: bytes  # the node's long-term identity key (public)
    specs: dict[str, AdapterSpec]
    adapters: dict[str, dict[str, np.ndarray]]
    pending: list[dict[str, np.ndarray]]
    eval_batches: list[dict[str, np.ndarray]]
    node_id: int | None = None
    channel: SecureChannel | None = None
    #: the number of the node's learner state that ``adapters`` and ``pending`` are, and of
    #: the one the latest checkpoint holds
    acknowledged: int = 0
    checkpointed: int = 0
    #: ``upload`` mode: the node's training split, and how many batches the server has drawn
    #: from its seeded batch stream
    train: dict[str, np.ndarray] | None = None
    drawn: int = 0
    num_examples: int = 0
    backend: str = "torch"
    rounds_trained: int = 0
    #: consecutive refused replies or broken passes; reset by an accepted reply
    failures: int = 0
    #: consecutive rounds it was sampled in and sent no reply that opened (down, late, lost)
    missed: int = 0
    quarantined: bool = False
    last_error: str = ""  # the latest refusal counted against the node
    #: the round its current run of failed rounds began and the run's latest reason (None
    #: once it trains again): a failure is logged once per run, not every round
    failing: tuple[int, str] | None = None
    #: its failed rounds, the newest ``failures.MAX_FAILED_ROUNDS_KEPT``: round, node id,
    #: reason and detail (metrics.json's ``failed-rounds``)
    failed_rounds: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    #: bumped whenever the tensors above change (a checkpoint rewrites only what changed)
    version: int = 0
    #: an accepted reply of this round, applied when the round's replies are in
    incoming: tuple[TrainReport, dict, list] | None = None
    _stream: Iterator[dict[str, np.ndarray]] | None = None

    @property
    def node(self) -> str:
        return f"node {self.node_id} (partition {self.partition_id})"

    def draw_pending(self, plan: Plan) -> None:
        """``upload`` mode: the next ``interval`` batches of the node's seeded stream."""
        if self._stream is None:
            self._stream = ClientData(train=self.train, eval_batches=[]).batches(
                plan.task.batch_size, seed=plan.batch_seed(self.partition_id))
            for _ in range(self.drawn):
                next(self._stream)
        self.pending = [next(self._stream) for _ in range(plan.interval)]
        self.drawn += plan.interval

    def tensors(self) -> dict[str, np.ndarray]:
        return flatten_state(self.adapters, {"pending": self.pending,
                                             "eval": self.eval_batches}, self.train)

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps of the session besides its tensors."""
        return {"identity": self.identity.hex(), "acknowledged": self.acknowledged,
                "drawn": self.drawn, "num-examples": self.num_examples,
                "backend": self.backend, "rounds-trained": self.rounds_trained,
                "failures": self.failures, "missed": self.missed,
                "quarantined": self.quarantined,
                "last-error": self.last_error, "history": self.history,
                "version": self.version}
