"""ColaStrategy: the server side of ColA as a Flower strategy.

The server keeps, per partition, the node's latest adapter state, its pending batches, its
held-out batches and its channel; never optimizer state. A round computes adaptation data for
every sampled node in shared forward/backward passes (``ServerEngine``), seals each node's share
for that node alone, sends it as soon as its pass is done, and takes back new adapters plus the
next batches. Evaluation runs on the server, on each node's held-out batches with that node's
adapters (personalised accuracy). Nodes may join late, drop out, restart, and the server itself
may resume from a checkpoint (docs/operations.md).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from cola_fed.adapters.init import state_nbytes, state_shapes
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.config import RunConfig, flatten
from cola_fed.edge.graphs import content_hash, graph_keys
from cola_fed.errors import (
    AdapterBoundsError,
    ConfigError,
    ProtocolError,
    RunStopped,
    TargetError,
)
from cola_fed.federation.checkpoint import (
    Checkpoint,
    flatten_state,
    rng_state,
    session_record,
    unflatten_state,
)
from cola_fed.federation.owners import read_partition_owners
from cola_fed.federation.protocol import (
    BACKENDS,
    KIND_HELLO,
    KIND_TRAIN,
    PART_ADAPTERS,
    PART_TRAIN,
    SEALED,
    Assignment,
    Hello,
    HelloClaim,
    HelloReply,
    HelloTranscript,
    Plan,
    Sealed,
    TrainOrder,
    TrainReport,
    adaptation_part,
    batch_part,
    eval_part,
    expect_parts,
    open_bundle,
    open_sealed,
    read_bundle,
    seal_bundle,
)
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.engine import ColAggregate, Deltas, ServerEngine
from cola_fed.gl.forms import to_forms
from cola_fed.gl.layout import Layout, assign_specs
from cola_fed.tasks.base import ClientData, Task
from cola_fed.tasks.scoring import score
from cola_fed.wire import (
    SecureChannel,
    decode_adapter_state,
    decode_batch,
    encode_adaptation,
    exchange_key_for_run,
    fingerprint,
    public_bytes,
    transcript_hash,
)
from cola_fed.wire.codec import Limits
from cola_fed.wire.crypto import verify_node_claim

log = logging.getLogger("cola_fed")

#: hellos a node may leave unanswered, or answer with an error or a reply that does not open
#: (a relay can cause each), before it is left out of the run
MAX_HELLO_TRIES = 3
#: refusal reasons kept for metrics.json (the newest)
MAX_REFUSALS_KEPT = 256
#: rounds in a row a node may send no reply before it is asked less often
MISSES_BEFORE_BACKOFF = 3


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


@dataclass
class _PendingHello:
    message_id: str
    transcript: bytes  # its hash
    expires: float
    reply: Message | None = None  # taken as soon as it arrives, opened at the next admission


class ColaStrategy(Strategy):
    """Collaborative Adaptation with Gradient Learning over Flower.

    Each round the server computes every sampled node's adaptation data, group by group of
    ``strategy.max-server-batch`` samples, and sends each node its sealed payload as soon as
    its group's pass is done (at most ``strategy.max-inflight-mb`` unanswered), reading replies
    as they arrive. Nodes that connect late join at the next round; a node that errs or misses
    ``strategy.timeout`` is skipped for the round and keeps its adapters and batches. With
    ``checkpoint.every``, a checkpoint after each round lets a killed server resume.

    No hook raises for one node's sake: whatever a node sends is checked against the plan and
    the task's input contract, a pass its data breaks is retried without it, and a node refused
    ``strategy.max-failures`` times in a row is quarantined for the run.

    Parameters
    ----------
    engine : ServerEngine
        The frozen model with its adapted layers.
    task : Task
        Gives the fresh head to adapt, the input contract of node batches and the metric.
    config : RunConfig
        Strategy, adapter, optimizer, data, wire and checkpoint settings.
    identity : Ed25519PrivateKey
        The server's long-term identity key: it signs every hello, and the run's exchange key
        is derived from it (``cola_fed.wire.identity``).
    checkpoint : Checkpoint, optional
        Where checkpoints are written (and, with ``checkpoint.resume``, read back).
    on_round : callable, optional
        Called with the strategy after every round (and after the run): writes results.
    """

    def __init__(self, engine: ServerEngine, task: Task, config: RunConfig,
                 identity: Ed25519PrivateKey, *, checkpoint: Checkpoint | None = None,
                 on_round: Callable[[ColaStrategy], None] | None = None) -> None:
        self.engine, self.task, self.config = engine, task, config
        self.identity = identity
        #: the task's node files (its tokenizer), shipped at hello under the plan's hashes
        self.files = {name: task.file(name).read_bytes() for name in task.node_files}
        self.plan = build_plan(engine.layout, task, config).with_files(
            {name: content_hash(data) for name, data in self.files.items()})
        self.contract = task.input_contract()
        task.check()
        #: with strategy.partition-owners: the identities that may hold each partition
        self.owners = (read_partition_owners(config.strategy.partition_owners)
                       if config.strategy.partition_owners else None)
        if config.task.rouge_prompts:
            if not hasattr(task, "rouge_examples"):
                raise ConfigError(f"task.rouge-prompts: the {task.name} task does not "
                                  "generate text; set it to 0")
            task.rouge_examples  # noqa: B018 - refuses now what could not be scored later
        #: with task.partition-by: partition id -> the value (the user) it holds
        self.partition_names = task.partition_names()
        self.members: dict[int, NodeSession] = {}  # by partition id
        self.server_test = task.server_test_batches() if config.task.server_test_size else []
        self.rounds: list[dict[str, Any]] = []
        self.stopped: str | None = None  # why the run ended early, if it did
        self.refused_at_hello: dict[int, str] = {}  # node id -> why it did not join
        self.checkpoint, self.on_round = checkpoint, on_round
        self.lineage = 0
        self.last_round = 0  # the last round completed
        self.began = False  # the run has begun (or resumed): its results are worth writing
        self._hellos: dict[int, _PendingHello] = {}
        self._hello_tries: dict[int, int] = {}  # node id -> hellos it failed to complete
        self._excluded: set[int] = set()  # node ids never asked again in the run
        self._admit_rng = random.Random(config.task.seed + 1)
        self._hello_id = 0
        self._round_started = 0.0
        self._bytes_down = 0
        # this round's own work: passes, wire forms, sealing; opening, checking and applying
        # the replies (not the time spent waiting for nodes)
        self._server_seconds = 0.0
        self._col_model: tuple[frozenset[str], Deltas] | None = None  # this round's
        robust = config.strategy  # how ``col`` mode's shared delta W is formed
        self.col_aggregate = ColAggregate(robust.col_aggregate, robust.col_trim_fraction,
                                          robust.col_clip_multiple)
        self._sampled: set[int] = set()
        self._rng = random.Random(config.task.seed)

    @property
    def sessions(self) -> dict[int, NodeSession]:
        """The sessions of the nodes connected to the run now, by node id."""
        return {s.node_id: s for s in self.members.values() if s.node_id is not None}

    # ----------------------------------------------------------------------------------------
    # the run

    def start(self, grid: Grid, num_rounds: int, timeout: float) -> Result:  # type: ignore[override]
        """Hello round (keys, first batches), then rounds of admit, train, evaluate and
        checkpoint; ends early, keeping every result, when fewer than
        ``strategy.min-train-nodes`` nodes are available for ``strategy.wait-for-nodes`` or
        when the server itself fails, and ends as stopped when no node trained in any round."""
        try:
            self._begin(grid)
            self.hello(grid, timeout)
            if self.last_round == 0:
                self.evaluate(0, ArrayRecord())
                self._after_round(0)
            for server_round in range(self.last_round + 1, num_rounds + 1):
                self._admit(grid)
                self._round_started = time.perf_counter()
                self._sampled = set(self._sample(grid, server_round))
                messages = self.configure_train(server_round, ArrayRecord(), ConfigRecord(),
                                                grid)
                self.aggregate_train(server_round, self._exchange(grid, messages, timeout))
                self.evaluate(server_round, ArrayRecord())
                self.last_round = server_round
                self._after_round(server_round)
            trained = [r["nodes"] for r in self.rounds if "nodes" in r]
            if trained and not any(trained):  # a run that trained nothing has failed
                raise RunStopped(f"no node trained in any of the {len(trained)} rounds: every "
                                 "sampled node failed every round (the log says why; so does "
                                 "each node's last-error in metrics.json)")
        except RunStopped as stop:
            self.stopped = str(stop)
            log.error("the run stopped early: %s", stop)
        except Exception as err:
            if not self.began:  # a config or checkpoint refused before the run began
                raise
            # not a node's fault (those are caught where they happen): the server's own
            # (a full disk, a bug); the run stops with every result written, and a reason
            self.stopped = (f"round {self.last_round + 1}: the server failed, not a node: "
                            f"{type(err).__name__}: {err}")
            log.error("the run stopped early: %s", self.stopped)
            log.debug("where the server failed", exc_info=True)
        finally:
            if self.checkpoint is not None:
                self.checkpoint.unlock()
        return Result()

    def _begin(self, grid: Grid) -> None:
        """The run's keys and graphs, and with ``checkpoint.resume`` the checkpoint's state."""
        self.run_id = _run_id(grid)
        self.exchange = exchange_key_for_run(self.identity, self.run_id)
        self.graphs = self._edge_graphs()
        self.plan = self.plan.with_graphs({n: content_hash(g) for n, g in self.graphs.items()})
        self.lineage = self.run_id
        if self.checkpoint is None:
            self.began = True
            return
        self.checkpoint.lock()
        if self.config.checkpoint.resume:
            self._resume()
            self._drop_unowned()
        else:
            aside = self.checkpoint.set_aside()
            if aside is not None:
                log.warning("starting afresh: the checkpoint of the earlier run in this folder "
                            "was moved to %s (this run does not resume it; "
                            "checkpoint.resume = true does)", aside)
        self.began = True

    def hello(self, grid: Grid, timeout: float) -> None:
        """Wait up to ``timeout`` for ``strategy.min-available-nodes`` nodes, send every
        connected node a hello and wait up to ``timeout`` for the answers."""
        wanted = self.config.strategy.min_available_nodes
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise RunStopped(f"fewer than {wanted} nodes connected within {timeout:.0f} s")
            time.sleep(1.0)
        nodes = list(grid.get_node_ids())
        log.info("hello: %d nodes, server identity %s%s", len(nodes),
                 fingerprint(public_bytes(self.identity)),
                 f"; resuming at round {self.last_round + 1}" if self.last_round else "")
        self._send_hellos(grid, nodes, timeout)
        deadline = time.monotonic() + timeout
        while self._hellos and time.monotonic() < deadline:
            self._collect_hellos(grid)
            if self._hellos:
                time.sleep(0.2)
        self._collect_hellos(grid, expire=True)
        joined = self.sessions
        if len(joined) < self.config.strategy.min_train_nodes:
            raise RunStopped(f"{len(joined)} nodes completed the hello round, fewer than "
                             f"strategy.min-train-nodes = {self.config.strategy.min_train_nodes}")
        log.info("hello: %d nodes joined (partitions %s; backends %s)", len(joined),
                 sorted(s.partition_id for s in joined.values()),
                 dict(sorted(collections.Counter(s.backend for s in joined.values()).items())))
        if self.partition_names:
            log.info("natural partitions (task.partition-by = %s): %s",
                     self.config.task.partition_by,
                     ", ".join(f"{p} = {name!r}" for p, name in enumerate(self.partition_names)))

    def _admit(self, grid: Grid) -> None:
        """Newcomers: take the answers to earlier hellos, and send hellos to nodes that
        connected since: at most ``strategy.max-joins-per-round`` first hellos waiting at
        once, and as many second or third ones (so that ids that never answer cannot keep
        the others out), in random order."""
        self._collect_hellos(grid, expire=True)
        known = set(self.sessions) | self._excluded | set(self._hellos)
        newcomers = [n for n in grid.get_node_ids() if n not in known]
        self._admit_rng.shuffle(newcomers)
        chosen = []
        for first in (True, False):
            waiting = sum((n in self._hello_tries) != first for n in self._hellos)
            room = self.config.strategy.max_joins_per_round - waiting
            chosen += [n for n in newcomers if (n in self._hello_tries) != first][:max(room, 0)]
        if chosen:
            log.info("%d nodes connected since the hello round; sending %d a hello",
                     len(newcomers), len(chosen))
            self._send_hellos(grid, chosen, self.config.strategy.timeout)
            self._collect_hellos(grid)  # the quick ones train this round already

    def _send_hellos(self, grid: Grid, nodes: list[int], timeout: float) -> None:
        # above any earlier hello of the run: a node refuses a replayed one
        self._hello_id = hello_id = max(time.time_ns(), self._hello_id + 1)
        for node in nodes:
            hello = Hello.signed(self.identity, HelloTranscript(
                run_id=self.run_id, node_id=node, hello_id=hello_id,
                identity=public_bytes(self.identity), exchange_key=public_bytes(self.exchange),
                plan=self.plan, lineage=self.lineage), self.graphs, self.files)
            message = Message(hello.to_record(), dst_node_id=node,
                              message_type=MessageType.QUERY, group_id="0", ttl=timeout)
            [message_id] = grid.push_messages([message])
            if message_id:
                self._hellos[node] = _PendingHello(message_id, transcript_hash(hello.transcript),
                                                   time.monotonic() + timeout)

    def _pull_hellos(self, grid: Grid) -> None:
        """Take the hello replies that have arrived, before their time to live ends (also
        while a round runs); they are opened at the next admission."""
        waiting = {h.message_id: n for n, h in self._hellos.items() if h.reply is None}
        if not waiting:
            return
        for reply in grid.pull_messages(list(waiting)):
            node = waiting.get(reply.metadata.reply_to_message_id)
            if node is not None:
                self._hellos[node].reply = reply

    def _collect_hellos(self, grid: Grid, *, expire: bool = False) -> None:
        """Open the hello replies that have arrived; with ``expire``, forget hellos that were
        not answered in time (the node may get another one later)."""
        self._pull_hellos(grid)
        claims = []
        for node, pending in [(n, h) for n, h in self._hellos.items() if h.reply is not None]:
            del self._hellos[node]
            reply = pending.reply
            if reply.metadata.src_node_id != node:  # the SuperLink's: the node is unavailable
                self._refuse_hello(node, "the node did not answer: " + (
                    node_error(reply.error.reason) if reply.has_error() else "?"), retry=True)
                continue
            if reply.has_error():  # its own error, or one a relay made up: asked again
                self._refuse_hello(node, node_error(reply.error.reason), retry=True)
                continue
            try:  # a reply that does not open may not be the node's: asked again
                claims.append(self._open_hello(node, reply, pending.transcript))
            except Exception as err:
                self._refuse_hello(node, f"{type(err).__name__}: {err}", retry=True)
        self._join(claims)
        if expire:
            now = time.monotonic()
            for node in [n for n, h in self._hellos.items() if h.expires < now]:
                del self._hellos[node]
                self._refuse_hello(node, "the node did not answer in time; it is not sampled",
                                   retry=True)

    def _edge_graphs(self) -> dict[str, bytes]:
        """The train-step graphs of every node kind in the run (``edge.graphs``), for nodes on
        the ONNX backend; exported once per process."""
        if not self.config.edge.graphs:
            return {}
        from cola_fed.edge.export import export_graphs

        started = time.monotonic()
        keys = graph_keys(self.plan.layout, self.plan.all_specs(), self.plan.optimizer,
                          form=self.config.wire.form)
        graphs = export_graphs(keys.values())
        log.info("hello: %d train-step graphs for ONNX nodes, %.0f kB, ready in %.1f s",
                 len(graphs), sum(map(len, graphs.values())) / 1e3, time.monotonic() - started)
        return graphs

    def _open_hello(self, node: int, reply: Message, transcript: bytes
                    ) -> tuple[int, HelloClaim, dict, SecureChannel]:
        """A hello reply, opened, with the node's signature of its claim checked."""
        hello = HelloReply.from_record(reply.content)
        channel = SecureChannel(self.exchange, hello.node_public, role="server",
                                run_id=self.run_id, node_id=node, transcript=transcript)
        claim, parts = open_bundle(channel, hello.sealed, KIND_HELLO, HelloClaim,
                                   limits=self._reply_limits(None, upload=True))
        verify_node_claim(bytes.fromhex(claim.identity), transcript, hello.node_public,
                          bytes.fromhex(claim.signature))
        return node, claim, parts, channel

    def _join(self, claims: list[tuple[int, HelloClaim, dict, SecureChannel]]) -> None:
        """Admit opened hellos. A node that proves it holds a partition's identity takes its
        session back (its adapters and batches as the server holds them); a new partition
        gets a session from the node's first adapters and batches. A partition held by
        another identity is refused, and so is every node of a partition that several new
        nodes claim at once (claims are not proof: the first has no right over a later one).
        With ``strategy.partition-owners``, a claim by an identity the file does not list for
        the partition is refused first, for the run, whoever came first."""
        fresh = collections.defaultdict(list)
        for node, claim, parts, channel in claims:
            identity = bytes.fromhex(claim.identity)
            if self.owners is not None and not self.owners.allows(claim.partition_id, identity):
                self._refuse_hello(node, "ProtocolError: " + self.owners.why_not(
                    claim.partition_id, identity))
                continue
            session = self.members.get(claim.partition_id)
            if session is None:
                fresh[claim.partition_id].append((node, claim, parts, channel))
            elif session.identity != identity:
                self._refuse_hello(node, f"ProtocolError: partition {claim.partition_id} is "
                                         "held by another node identity in this run")
            else:
                try:  # the isolation boundary: whatever a node sent, it fails alone
                    self._take_back(session, node, claim, parts, channel)
                except Exception as err:
                    self._refuse_hello(node, f"{type(err).__name__}: {err}")
        for partition, nodes in fresh.items():
            if len(nodes) > 1:
                for node, *_ in nodes:
                    self._refuse_hello(node, f"ProtocolError: partition {partition} is claimed "
                                             "by several nodes; two nodes may not hold one "
                                             "partition", retry=True)
                continue
            node, claim, parts, channel = nodes[0]
            try:  # the isolation boundary: whatever a node sent, it fails alone
                self.members[partition] = self._new_session(node, claim, parts, channel)
            except Exception as err:
                self._refuse_hello(node, f"{type(err).__name__}: {err}")
                continue
            self._joined(node)

    def _take_back(self, session: NodeSession, node: int, claim: HelloClaim, parts: dict,
                   channel: SecureChannel) -> None:
        """The node that held a partition is back (restarted, or the server resumed). If it
        no longer holds the learner state the server holds (it lost it), the server takes the
        checked adapters and batches of the state it has instead: they agree again."""
        if session.acknowledged not in claim.held:
            fresh = self._new_session(node, claim, parts, channel)
            log.warning("hello: the node of partition %d no longer holds its state #%d; "
                        "taking its state #%d instead", claim.partition_id,
                        session.acknowledged, claim.state)
            session.adapters, session.pending = fresh.adapters, fresh.pending
            session.train, session.drawn, session._stream = fresh.train, fresh.drawn, None
            session.acknowledged = session.checkpointed = claim.state
            session.version += 1
        previous = session.node_id
        session.node_id, session.channel, session.missed = node, channel, 0
        self._joined(node)
        log.info("hello: partition %d is back on node %s%s, at its state #%d",
                 claim.partition_id, node,
                 f" (was node {previous})" if previous not in (None, node) else "",
                 session.acknowledged)

    def _drop_unowned(self) -> None:
        """With ``strategy.partition-owners``: forget the resumed sessions of identities the
        file does not list for their partition (taken before the file was, or before it
        changed), so that the owners' claims start them afresh."""
        if self.owners is None:
            return
        for partition, session in list(self.members.items()):
            if not self.owners.allows(partition, session.identity):
                del self.members[partition]
                log.warning("resume: partition %d was held by an identity %s does not list "
                            "for it; its session is dropped, and its owner starts it afresh",
                            partition, self.owners.path)

    def _refuse_hello(self, node: int, why: str, *, retry: bool = False) -> None:
        """A node that did not join: for the run, or (``retry``: no answer, an error or a
        reply that does not open, which a relay can cause) until it has missed
        ``MAX_HELLO_TRIES`` hellos."""
        tries = self._hello_tries[node] = self._hello_tries.get(node, 0) + 1
        if not retry or tries >= MAX_HELLO_TRIES:
            self._excluded.add(node)
        self.refused_at_hello[node] = why if len(why) <= 300 else why[:297] + "..."
        while len(self.refused_at_hello) > MAX_REFUSALS_KEPT:  # the reasons of the newest
            del self.refused_at_hello[next(iter(self.refused_at_hello))]
        log.warning("hello: refused node %s%s: %s", node,
                    "" if node in self._excluded else f" (try {tries} of {MAX_HELLO_TRIES})",
                    why)

    def _joined(self, node: int) -> None:
        self.refused_at_hello.pop(node, None)
        self._hello_tries.pop(node, None)

    def _new_session(self, node: int, claim: HelloClaim, parts: dict,
                     channel: SecureChannel) -> NodeSession:
        """A new partition's session, from the node's checked first adapters and batches."""
        task, upload = self.plan.task, self.plan.data_mode == "upload"
        batches = [PART_TRAIN] if upload else [batch_part(i) for i in range(self.plan.interval)]
        evals = [eval_part(i) for i in range(task.eval_batches)]
        expect_parts(parts, [PART_ADAPTERS, *batches, *evals], f"node {node}'s hello")
        session = NodeSession(
            claim.partition_id, bytes.fromhex(claim.identity),
            self.plan.specs_for(claim.partition_id),
            self._checked_adapters(parts[PART_ADAPTERS], claim.partition_id), [],
            [self._checked_batch(parts[name], name) for name in evals], node_id=node,
            channel=channel, acknowledged=claim.state, checkpointed=claim.state,
            num_examples=claim.num_examples,
            backend=claim.backend)
        if upload:
            session.train = self._checked_batch(parts[PART_TRAIN], PART_TRAIN, upload=True)
            session.draw_pending(self.plan)
        else:
            session.pending = [self._checked_batch(parts[name], name) for name in batches]
        return session

    # ----------------------------------------------------------------------------------------
    # the four hooks

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterator[Message]:
        """Each sampled node's sealed TRAIN message, yielded as soon as the pass of its group
        (``strategy.max-server-batch`` samples) is done: the server never holds more than one
        group's adaptation data."""
        self._bytes_down, self._col_model, self._server_seconds = 0, None, 0.0
        busy = time.perf_counter()  # the server's own work, not the time its messages wait
        sessions = self.sessions
        sampled = sorted((sessions[n] for n in self._sampled), key=lambda s: s.partition_id)
        collaborators = {str(s.node_id): s for s in sampled}  # ``col`` mode's shared model
        for group in self._groups(sampled):
            chunks = self._adaptation(server_round, group, collaborators)
            for session in group:
                data = chunks.pop(session.node_id, None)
                if data is None:
                    continue
                parts = {adaptation_part(i): encode_adaptation(d, dtype=self.plan.wire_dtype)
                         for i, d in enumerate(data)}
                del data
                order = TrainOrder(round=server_round, acknowledged=session.acknowledged,
                                   checkpointed=session.checkpointed)
                sealed = seal_bundle(session.channel, KIND_TRAIN, order, parts)
                del parts
                self._bytes_down += len(sealed)
                self._server_seconds += time.perf_counter() - busy
                yield Message(Sealed(sealed).to_record(), dst_node_id=session.node_id,
                              message_type=MessageType.TRAIN, group_id=str(server_round),
                              ttl=self.config.strategy.timeout)
                busy = time.perf_counter()
        self._server_seconds += time.perf_counter() - busy

    def _sample(self, grid: Grid, server_round: int) -> list[int]:
        """The node ids trained this round: ``strategy.fraction-train`` of the connected nodes
        outside quarantine, drawn by partition (so that a resumed run draws as the first
        would). Waits up to ``strategy.wait-for-nodes`` for ``strategy.min-train-nodes``."""
        strategy = self.config.strategy
        since = time.monotonic()
        while True:
            available = set(grid.get_node_ids())
            ready = {s.partition_id: s.node_id for s in self.members.values()
                     if s.node_id in available and not s.quarantined
                     and self._due(s, server_round)}
            if len(ready) >= strategy.min_train_nodes:
                break
            waited = time.monotonic() - since
            if waited >= strategy.wait_for_nodes:
                raise RunStopped(
                    f"round {server_round}: {len(ready)} nodes available outside quarantine "
                    f"after waiting {waited:.0f} s (strategy.wait-for-nodes), fewer than "
                    f"strategy.min-train-nodes = {strategy.min_train_nodes}")
            if int(waited) % 30 == 0:
                log.info("round %d: %d of %d nodes available; waiting up to %.0f s more",
                         server_round, len(ready), strategy.min_train_nodes,
                         strategy.wait_for_nodes - waited)
            time.sleep(1.0)
            self._admit(grid)
        partitions = sorted(ready)
        count = max(1, round(len(partitions) * strategy.fraction_train))
        if count < len(partitions):
            partitions = sorted(self._rng.sample(partitions, count))
        return [ready[p] for p in partitions]

    @staticmethod
    def _due(session: NodeSession, server_round: int) -> bool:
        """A node that missed more than ``MISSES_BEFORE_BACKOFF`` rounds in a row (each held
        its round up until ``strategy.timeout``) is asked only every 2nd, 4th, ... up to every
        32nd round, until it answers."""
        over = session.missed - MISSES_BEFORE_BACKOFF
        return over <= 0 or server_round % (2 ** min(over, 5)) == 0

    def _groups(self, sessions: list[NodeSession]) -> Iterator[list[NodeSession]]:
        """Consecutive groups of at most ``strategy.max-server-batch`` samples per chunk (a
        node larger than that is a group of its own)."""
        group, filled = [], 0
        limit = self.config.strategy.max_server_batch
        for session in sessions:
            size = max(len(next(iter(b.values()))) for b in session.pending)
            if group and filled + size > limit:
                yield group
                group, filled = [], 0
            group.append(session)
            filled += size
        if group:
            yield group

    def _adaptation(self, server_round: int, group: list[NodeSession],
                    collaborators: dict[str, NodeSession]) -> dict[int, list[AdaptationData]]:
        """Each node's adaptation data in a group, in shared passes. A pass that raises is run
        again node by node, and the nodes whose data breaks it alone are refused this round."""
        chunks: dict[int, list[AdaptationData]] = {s.node_id: [] for s in group}
        live = list(group)
        for i in range(self.plan.interval):
            before = len(live)
            try:
                out = self._compute(live, i, collaborators)
            except Exception as err:
                log.warning("round %d: the shared pass failed (%s: %s); retrying node by node",
                            server_round, type(err).__name__, err)
                out, broken = {}, []
                for session in list(live):
                    try:
                        out.update(self._compute([session], i, collaborators))
                    except Exception as alone:
                        broken.append((session, alone))
                _stop_if_the_model_is_at_fault([e for _, e in broken], len(live))
                for session, alone in broken:
                    self._fault(session.node_id, server_round, alone,
                                "its batch breaks the pass")
                    del chunks[session.node_id]
                    live.remove(session)
                    collaborators.pop(str(session.node_id), None)
                if len(live) < before:  # one shared pass of the others, as a clean round
                    out = self._compute(live, i, collaborators)
            for node, data in out.items():
                if node in chunks:
                    chunks[node].append(data)
        return {s.node_id: self._in_wire_form(s, chunks[s.node_id], server_round) for s in live}

    def _compute(self, sessions: list[NodeSession], chunk: int,
                 collaborators: dict[str, NodeSession]) -> dict[int, AdaptationData]:
        if not sessions:
            return {}
        by_name = {str(s.node_id): s for s in sessions}
        out = self.engine.compute(
            {n: _as_torch(s.pending[chunk]) for n, s in by_name.items()},
            {n: s.adapters for n, s in by_name.items()},
            specs={n: s.specs for n, s in by_name.items()}, mode=self.config.strategy.mode,
            collaborative=self._collaborative(collaborators))
        return {s.node_id: out[n] for n, s in by_name.items()}

    def _in_wire_form(self, session: NodeSession, chunks: list[AdaptationData],
                      server_round: int) -> list[AdaptationData]:
        """One node's interval of ``chunks`` in the exact forms ``wire.form`` picks per layer
        (an ONNX node takes forms other than rows only with the graphs this server ships).
        The parameter gradient is taken at ``session.adapters``: the state the TRAIN order
        acknowledges, which the node steps from. Should that fail for this node (its adapters
        break its family's VJP, memory runs out), it gets rows, which every node takes: one
        node's trouble never stops the round."""
        form = self.config.wire.form
        if form == "rows" or (session.backend == "onnx" and not self.graphs):
            return chunks
        try:
            return to_forms(chunks, self.plan.layout,
                            assign_specs(self.plan.layout, session.specs), form,
                            adapters=session.adapters)
        except Exception as err:
            log.warning("round %d: %s gets rows: its data could not take the %r form (%s: %s)",
                        server_round, session.node, form, type(err).__name__, err)
            return chunks

    def _collaborative(self, collaborators: dict[str, NodeSession]) -> Deltas | None:
        """``col`` mode: the round's model, the delta W of its sampled nodes (aggregated as
        ``strategy.col-aggregate`` says), formed once for all its groups (and again only when
        a node whose batch breaks a pass leaves)."""
        if self.config.strategy.mode != "col":
            return None
        key = frozenset(collaborators)
        if self._col_model is None or self._col_model[0] != key:
            self._col_model = key, self.engine.collaborative_deltas(
                {n: s.adapters for n, s in collaborators.items()},
                specs={n: s.specs for n, s in collaborators.items()},
                aggregate=self.col_aggregate)
        return self._col_model[1]

    def _exchange(self, grid: Grid, messages: Iterator[Message], timeout: float
                  ) -> Iterator[Message]:
        """Send each message as it comes and yield replies as they arrive, with at most
        ``strategy.max-inflight-mb`` of payloads unanswered; each node has ``timeout`` seconds
        from its message to answer."""
        cap = self.config.strategy.max_inflight_mb * 1e6
        inflight: dict[str, tuple[int, float]] = {}  # message id -> (bytes, expires)
        for message in messages:
            size = message.content.array_records[SEALED].count_bytes()
            while inflight and sum(b for b, _ in inflight.values()) + size > cap:
                yield from self._pull(grid, inflight, wait=True)
            node = message.metadata.dst_node_id
            [message_id] = grid.push_messages([message])
            del message
            if not message_id:
                log.warning("the message to node %s could not be sent", node)
                continue
            inflight[message_id] = (size, time.monotonic() + timeout)
            yield from self._pull(grid, inflight, wait=False)
        while inflight:
            yield from self._pull(grid, inflight, wait=True)

    def _pull(self, grid: Grid, inflight: dict[str, tuple[int, float]], *, wait: bool
              ) -> Iterator[Message]:
        """The replies to ``inflight`` messages that have arrived (removing them); with
        ``wait``, poll until one arrives or the earliest deadline passes, when the late are
        given up. Newcomers' hello replies are taken meanwhile."""
        delay = 0.02
        while True:
            replies = list(grid.pull_messages(list(inflight))) if inflight else []
            for reply in replies:
                if inflight.pop(reply.metadata.reply_to_message_id, None) is not None:
                    yield reply
            self._pull_hellos(grid)
            now = time.monotonic()
            late = [m for m, (_, expires) in inflight.items() if expires <= now]
            for message_id in late:
                del inflight[message_id]
            if replies or late or not wait or not inflight:
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _timed(self, replies: Iterable[Message]) -> Iterator[Message]:
        """``replies``, adding to the round's server time what the caller spends on each one
        (the time spent waiting for the next is the nodes', not the server's)."""
        for reply in replies:
            busy = time.perf_counter()
            yield reply
            self._server_seconds += time.perf_counter() - busy

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply as it arrives; apply the accepted ones when all are in (so that
        in ``col`` mode every node of the round trains against the same model)."""
        reports, bytes_up, sessions, opened = [], 0, self.sessions, set()
        for reply in self._timed(replies):  # the time spent on each reply, not waiting
            node = reply.metadata.src_node_id
            session = sessions.get(node)
            if session is None or session.quarantined or node not in self._sampled:
                continue
            if reply.has_error():
                log.warning("round %d: %s failed: %s", server_round, session.node,
                            node_error(reply.error.reason))
                continue
            before = dataclasses.replace(session.channel.state)
            try:  # a reply that does not open may not be the node's (a replay, a forgery)
                sealed = Sealed.from_record(reply.content).sealed
                plaintext = open_sealed(session.channel, sealed, KIND_TRAIN,
                                        limits=self._reply_limits(session, upload=False))
            except Exception as err:
                session.channel.state = before
                log.warning("round %d: %s: a reply that does not open was refused (not "
                            "counted against the node): %s: %s", server_round, session.node,
                            type(err).__name__, err)
                continue
            opened.add(node)
            try:  # the isolation boundary: whatever a node sent, it fails alone
                session.incoming = self._read_train_reply(session, plaintext, server_round)
            except LateReply as err:  # authentic, but held back (a relay can): not the node's
                session.channel.state = before
                log.warning("round %d: %s: %s; dropped, not counted against the node",
                            server_round, session.node, err)
                continue
            except Exception as err:
                # not applied, so not acknowledged: the node resumes from the state we hold
                session.channel.state = before
                self._fault(node, server_round, err, "reply refused")
                continue
            bytes_up += len(sealed)
            reports.append(session.incoming[0])
        for node in self._sampled:  # a node that keeps missing is asked less often
            if node in sessions:
                sessions[node].missed = 0 if node in opened else sessions[node].missed + 1
        busy = time.perf_counter()
        for session in self.members.values():
            if session.incoming is not None:
                self._apply(session)
        self._server_seconds += time.perf_counter() - busy
        failed = len(self._sampled) - len(reports)  # refused, errors, late or never sent
        record = {
            "round": server_round,
            "nodes": len(reports),
            "failed": failed,
            "train-loss": statistics.fmean(r.loss for r in reports) if reports else float("nan"),
            "bytes-down": self._bytes_down,
            "bytes-up": bytes_up,
            "seconds": time.perf_counter() - self._round_started,
            "server-seconds": self._server_seconds,
        }
        self.rounds.append(record)
        log.info("round %d/%d: %d nodes (%d failed)  loss %.4f  down %.2f MB  up %.2f MB  %.2f s",
                 server_round, self.config.num_server_rounds, record["nodes"], failed,
                 record["train-loss"], record["bytes-down"] / 1e6, bytes_up / 1e6,
                 record["seconds"])
        return None, MetricRecord({k: v for k, v in record.items()
                                   if k != "round" and not _isnan(v)})

    def _apply(self, session: NodeSession) -> None:
        report, adapters, pending = session.incoming
        session.incoming = None
        session.adapters, session.acknowledged = adapters, report.state
        if session.train is not None:  # upload mode: the server draws the next batches
            session.draw_pending(self.plan)
        else:
            session.pending = pending
        session.rounds_trained += 1
        session.failures = 0
        session.version += 1

    def _read_train_reply(self, session: NodeSession, plaintext: bytes, server_round: int):
        """An opened TRAIN reply, checked: the round it answers, its parts, the adapters and
        the next batches."""
        report, parts = read_bundle(plaintext, KIND_TRAIN, TrainReport)
        if report.round < server_round:
            raise LateReply(f"an authentic reply to round {report.round} came in round "
                            f"{server_round}")
        if report.round != server_round:
            raise ProtocolError(f"the reply answers round {report.round}, this is round "
                                f"{server_round}")
        upload = session.train is not None
        batches = [] if upload else [batch_part(i) for i in range(self.plan.interval)]
        expect_parts(parts, [PART_ADAPTERS, *batches], f"node {session.node_id}'s reply")
        adapters = self._checked_adapters(parts[PART_ADAPTERS], session.partition_id)
        pending = [] if upload else [self._checked_batch(parts[name], name) for name in batches]
        return report, adapters, pending

    def _fault(self, node: int, server_round: int, err: BaseException, what: str) -> None:
        """Count a refusal against a node; quarantine it after ``strategy.max-failures`` in a
        row. The node keeps its adapters and pending batches."""
        session = self.sessions[node]
        session.failures += 1
        session.last_error = f"round {server_round}: {what}: {type(err).__name__}: {err}"
        log.warning("round %d: %s: %s: %s: %s", server_round, session.node, what,
                    type(err).__name__, err)
        if session.failures >= self.config.strategy.max_failures and not session.quarantined:
            session.quarantined = True
            log.error("%s quarantined for the rest of the run after %d refusals in a row",
                      session.node, session.failures)

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def _after_round(self, server_round: int) -> None:
        """Checkpoint (every ``checkpoint.every`` rounds and after the last), then results."""
        every, last = self.config.checkpoint.every, self.config.num_server_rounds
        if self.checkpoint is not None and every and (
                server_round % every == 0 or server_round == last):
            started = time.perf_counter()
            path = self.checkpoint.save(server_round, self._checkpoint_state(), {
                p: (s.version, s.tensors) for p, s in self.members.items()})
            for session in self.members.values():
                session.checkpointed = session.acknowledged
            log.info("round %d: checkpoint %s (%.2f s)", server_round, path,
                     time.perf_counter() - started)
        if self.on_round is not None:
            self.on_round(self)

    def _checkpoint_state(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"lineage": self.lineage, "server": public_bytes(self.identity).hex(),
                "plan": self.plan.with_graphs({}).to_dict(), "rounds": self.rounds,
                "rng": [version, list(internal), gauss],
                "refused-at-hello": {str(n): why for n, why in self.refused_at_hello.items()},
                "members": {str(p): s.record() for p, s in self.members.items()}}

    def _resume(self) -> None:
        """Take the run back from the newest checkpoint: every partition's session, detached
        until its node answers a hello and proves its identity."""
        state, tensors = self.checkpoint.load()
        where = self.checkpoint.folder
        if state.get("server") != public_bytes(self.identity).hex():
            raise ConfigError(f"the checkpoint in {where} was made by another server identity; "
                              "resume it with the key that made it (wire.server-key)")
        plan, saved = flatten(self.plan.with_graphs({}).to_dict()), flatten(state.get("plan", {}))
        if saved != plan:
            changed = sorted(k for k in plan.keys() | saved.keys() if plan.get(k) != saved.get(k))
            raise ConfigError(f"the run config differs from the checkpoint's in {changed}: a "
                              "resumed run keeps what its nodes were told (task, adapters, "
                              "optimizer, data, wire and edge settings); num-server-rounds, "
                              "strategy.* and checkpoint.* may change")
        # everything is read and checked as strictly as a node's reply before anything is
        # taken: a checkpoint that fails is refused whole (the server's own files are never a
        # node's fault), naming the file and the reason
        def refused(path: Any, err: Exception) -> ConfigError:
            return ConfigError(f"checkpoint {path} is damaged ({type(err).__name__}: {err}); "
                               "nothing was taken from it: resume from a copy of it, or start "
                               "afresh")
        try:
            rng = rng_state(state.get("rng"))
            lineage, last_round, rounds = state["lineage"], state["round"], state["rounds"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in (lineage, last_round)):
                raise ValueError("its lineage and round are not integers >= 0")
            if not (isinstance(rounds, list) and all(
                    isinstance(r, dict) and isinstance(r.get("round"), int) for r in rounds)):
                raise ValueError("its rounds are not a list of round records")
            if not isinstance(state["members"], dict):
                raise ValueError("its members are not an object")
            records = {int(key): session_record(record, int(key))
                       for key, record in state["members"].items()}
        except Exception as err:
            raise refused(self.checkpoint.round_file, err) from None
        members = {}
        for partition, record in records.items():
            try:
                members[partition] = self._restored(partition, record, tensors(partition))
            except Exception as err:
                path = self.checkpoint.folder / str(state["files"].get(str(partition), "?"))
                raise refused(path, err) from None
        self._rng.setstate(rng)
        self.members, self.lineage, self.last_round, self.rounds = (members, lineage,
                                                                    last_round, rounds)
        log.warning("resuming the run of %s after round %d: %d partitions, lineage %d",
                    where, self.last_round, len(self.members), self.lineage)

    def _restored(self, partition: int, record: dict[str, Any],
                  tensors: dict[str, np.ndarray]) -> NodeSession:
        """A partition's session from its checkpoint record and tensors, checked as a node's
        would be (shapes, norms, the task's input contract)."""
        adapters, batches, train = unflatten_state(tensors, ("pending", "eval"))
        layout = self.engine.layout
        expected = state_shapes(layout, assign_specs(layout, self.plan.specs_for(partition)))
        got = {layer: {name: tuple(v.shape) for name, v in params.items()}
               for layer, params in adapters.items()}
        if got != {layer: {name: tuple(shape) for name, shape in params.items()}
                   for layer, params in expected.items()}:
            raise ValueError(f"partition {partition}'s adapters do not fit the plan")
        if any(v.dtype != np.float32 for params in adapters.values() for v in params.values()):
            raise ValueError(f"partition {partition}'s adapters are not all float32")
        self._within_bounds(adapters)
        counts = {"pending": self.plan.interval, "eval": self.plan.task.eval_batches}
        for kind, want in counts.items():
            if len(batches[kind]) != want:
                raise ValueError(f"partition {partition} holds {len(batches[kind])} {kind} "
                                 f"batches, the plan needs {want}")
            for i, batch in enumerate(batches[kind]):
                self.contract.check(batch, batch_size=self.plan.task.batch_size,
                                    what=f"{kind}{i}")
        if (train is not None) != (self.plan.data_mode == "upload"):
            raise ValueError(f"partition {partition} {'holds' if train is not None else 'lacks'}"
                             f" a training split in data.mode = {self.plan.data_mode}")
        if train is not None:
            self.contract.check(train, min_batch=self.plan.task.batch_size,
                                max_batch=self.config.strategy.max_upload_samples, what="train")
        if record["backend"] not in BACKENDS:
            raise ValueError(f"partition {partition}'s backend {record['backend']!r:.40} is "
                             f"not one of {BACKENDS}")
        return NodeSession(
            partition, bytes.fromhex(record["identity"]), self.plan.specs_for(partition),
            adapters, batches["pending"], batches["eval"],
            acknowledged=record["acknowledged"], checkpointed=record["acknowledged"],
            train=train, drawn=record["drawn"], num_examples=record["num-examples"],
            backend=record["backend"], rounds_trained=record["rounds-trained"],
            failures=record["failures"], missed=record["missed"],
            quarantined=record["quarantined"], last_error=record["last-error"],
            history=record["history"], version=record["version"])

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # evaluation runs on the server, on each node's held-out batches

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        s = self.config.strategy
        log.info("ColaStrategy: mode %s, %d adapted layers, adapters %s, interval %d, "
                 "fraction-train %.2f, wire %s", s.mode, len(self.engine.layout),
                 self.config.adapter.kinds or self.config.adapter.kind, self.plan.interval,
                 s.fraction_train, self.config.wire.dtype)

    @property
    def _limits(self) -> Limits:
        """Caps on any one payload part from a node."""
        rows = max(self.plan.task.batch_size, self.config.strategy.max_upload_samples)
        return Limits(max_rows=rows)

    def _reply_limits(self, session: NodeSession | None, *, upload: bool) -> Limits:
        """Caps on a node's whole sealed reply, worked out from the plan before it is opened:
        its adapters (the largest of any kind of node at hello), the samples it may carry
        (``upload``: a hello, with held-out batches and, in upload mode, its whole split) and
        1 MB of headers. Without a per-sample size in the task's contract: 2 GB."""
        per_sample = self.contract.sample_nbytes()
        if per_sample is None:
            return Limits(max_rows=self._limits.max_rows)
        layout, task = self.engine.layout, self.plan.task
        kinds = [session.specs] if session is not None else self.plan.all_specs()
        adapters = max(state_nbytes(layout, assign_specs(layout, specs)) for specs in kinds)
        samples = self.plan.interval * task.batch_size
        if upload:
            samples = task.eval_batches * task.batch_size + (
                self.config.strategy.max_upload_samples if self.plan.data_mode == "upload"
                else samples)
        return Limits(max_bytes=adapters + samples * per_sample + 2**20,
                      max_rows=self._limits.max_rows)

    # ----------------------------------------------------------------------------------------
    # evaluation

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The task's metrics (accuracy, loss; perplexity and ROUGE-L for language models) on
        every node's held-out batches (and on the server-held test set when
        ``task.server-test-size`` is set) of the model that node trains through: its own
        adapters, or in ``col`` mode the collaborative model. Quarantined nodes are left out
        (of the collaborative model too); a node whose evaluation fails is left out of the
        round's figures."""
        every = self.config.strategy.evaluate_every
        last = server_round == self.config.num_server_rounds
        if server_round % every and not last and server_round != 0:
            return None
        active = [s for s in self.members.values() if not s.quarantined]
        held_out: dict[int, dict[str, float]] = {}
        server: dict[int, dict[str, float]] = {}
        for session in active:
            try:
                held_out[session.partition_id] = self._scores(session, session.eval_batches)
                if self.server_test:
                    server[session.partition_id] = self._scores(session, self.server_test)
            except Exception as err:
                held_out.pop(session.partition_id, None)
                server.pop(session.partition_id, None)
                log.warning("round %d: evaluation of %s failed: %s: %s", server_round,
                            session.node, type(err).__name__, err)
                continue
            if self.config.task.rouge_prompts and (server_round == 0 or last):
                try:  # an optional metric: its failure costs the others nothing
                    held_out[session.partition_id]["rouge-l"] = self._rouge(session)
                except Exception as err:
                    log.warning("round %d: ROUGE-L of %s failed: %s: %s", server_round,
                                session.node, type(err).__name__, err)
        if not held_out:
            return None
        metrics: dict[str, float] = {}
        for prefix, per_node in (("", held_out), ("server-", server)):
            for name in dict.fromkeys(n for scores in per_node.values() for n in scores):
                metrics.update(_spread(f"{prefix}{name}", [scores.get(name, math.nan)
                                                           for scores in per_node.values()]))
        for session in active:
            if session.partition_id not in held_out:
                continue
            entry = {"round": server_round, **held_out[session.partition_id]}
            entry.update({f"server-{k}": v for k, v in
                          server.get(session.partition_id, {}).items()})
            session.history.append(entry)
        if self.rounds and self.rounds[-1]["round"] == server_round:
            self.rounds[-1].update(metrics)
        elif server_round == 0:
            self.rounds.append({"round": 0, **metrics})
        self._progress(server_round, metrics)
        return MetricRecord(metrics)

    def _scores(self, session: NodeSession, batches: list[dict[str, np.ndarray]]
                ) -> dict[str, float]:
        """The task's metrics (accuracy, loss, ...) over ``batches``, of the model this node
        trains through: its own adapters, or in ``col`` mode the collaborative model (the mean
        delta W of all nodes outside quarantine)."""
        return score(self.task, batches, lambda batch: self._predict(session, batch),
                     self.engine.loss_fn)

    def _predict(self, session: NodeSession, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the model this node trains through."""
        if self.config.strategy.mode == "col":
            members = {n: s for n, s in self.members.items() if not s.quarantined}
            return self.engine.predict_col(
                batch, {str(n): s.adapters for n, s in members.items()},
                specs={str(n): s.specs for n, s in members.items()},
                aggregate=self.col_aggregate)
        return self.engine.predict(batch, session.adapters, spec=session.specs)

    def _rouge(self, session: NodeSession) -> float:
        """ROUGE-L of greedy generations on server-held test prompts, through this node's
        model."""
        return self.task.rouge_l(lambda batch: self._predict(session, _as_torch(batch)))

    def _progress(self, server_round: int, metrics: dict[str, float]) -> None:
        which = "collaborative model" if self.config.strategy.mode == "col" else "personalised"
        parts = [f"{name} {metrics[f'{name}-mean']:.4g} ± {metrics[f'{name}-std']:.3g}"
                 for name in ("accuracy", "loss", "perplexity", "rouge-l")
                 if f"{name}-mean" in metrics]
        if "accuracy-mean" in metrics:
            parts[0] += (f" (min {metrics['accuracy-min']:.3f}, "
                         f"max {metrics['accuracy-max']:.3f})")
        server = [f"{name} {metrics[f'server-{name}-mean']:.4g}"
                  for name in ("accuracy", "perplexity") if f"server-{name}-mean" in metrics]
        log.info("round %d: held-out (%s, over nodes) %s%s%s", server_round, which,
                 "; ".join(parts), f"; server test set {', '.join(server)}" if server else "",
                 " (base model)" if server_round == 0 else "")

    # ----------------------------------------------------------------------------------------
    # strict decoding against what the server expects

    def _checked_adapters(self, blob: bytes, partition_id: int
                          ) -> dict[str, dict[str, np.ndarray]]:
        """A node's adapter state: exactly the plan's parameters and shapes, finite, and every
        tensor's norm within ``strategy.max-adapter-norm``."""
        layout = self.engine.layout
        expected = state_shapes(layout, assign_specs(layout, self.plan.specs_for(partition_id)))
        state = decode_adapter_state(blob, layout=layout, expected_shapes=expected,
                                     limits=self._limits)
        return self._within_bounds(state)

    def _within_bounds(self, state: dict[str, dict[str, np.ndarray]]
                       ) -> dict[str, dict[str, np.ndarray]]:
        """``state``, if every tensor is finite and within ``strategy.max-adapter-norm``
        (a node's reply and a checkpoint's adapters alike)."""
        limit = self.config.strategy.max_adapter_norm
        for layer, params in state.items():
            for name, value in params.items():
                if not np.isfinite(value).all():
                    raise AdapterBoundsError(f"adapter {layer}/{name} holds values that are "
                                             "not finite")
                norm = float(np.linalg.norm(value.astype(np.float64)))
                if norm > limit:
                    raise AdapterBoundsError(
                        f"adapter {layer}/{name} has norm {norm:.4g}, above "
                        f"strategy.max-adapter-norm = {limit:g}")
        return state

    def _checked_batch(self, blob: bytes, name: str, *, upload: bool = False
                       ) -> dict[str, np.ndarray]:
        """A node's batch, held to the task's input contract: exactly ``task.batch-size``
        samples, or in an upload between one batch and ``strategy.max-upload-samples``."""
        batch = decode_batch(blob, limits=self._limits)
        size = self.plan.task.batch_size
        if upload:
            self.contract.check(batch, min_batch=size,
                                max_batch=self.config.strategy.max_upload_samples, what=name)
        else:
            self.contract.check(batch, batch_size=size, what=name)
        return batch


class LateReply(ProtocolError):
    """An authentic reply to an earlier round: a relay held it back. Dropped; the node is
    not blamed for it."""


def node_error(reason: str) -> str:
    """The gist of an error a node reported: its last line (under Flower's simulation engine
    the reason carries the whole remote traceback, wrapped as ``<class 'X'>:<'...'>``), at
    most 1,200 characters."""
    text = str(reason).strip()
    wrapped = re.fullmatch(r"<class '([\w.]+)'>:<'(.*)'>", text, re.S)
    if wrapped:
        text = wrapped.group(2) if "\n" in wrapped.group(2) else \
            f"{wrapped.group(1).rsplit('.', 1)[-1]}: {wrapped.group(2)}"
    elif text.startswith("<class '") and text.endswith("'>"):  # Ray's "X(ClientAppException)"
        text = text[:-2]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    gist = lines[-1] if lines else "no reason given"
    # a ClientApp error under the simulation engine: "Exception X occurred. Message: ..."
    gist = re.sub(r"^Exception \w+ occurred\. Message: ", "", gist)
    return gist if len(gist) <= 1200 else gist[:1197] + "..."


def _run_id(grid: Grid) -> int:
    """The run id of the grid's run (``LocalGrid`` carries its own)."""
    return int(grid.run.run_id)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _spread(name: str, values: Iterable[float]) -> dict[str, float]:
    """Mean, spread and range of a metric over nodes; a node whose value is not finite (its
    adapters blow the loss up) is left out of that metric, and with no finite value so is it."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return {}
    return {f"{name}-mean": statistics.fmean(values), f"{name}-std": statistics.pstdev(values),
            f"{name}-min": min(values), f"{name}-max": max(values)}


def _stop_if_the_model_is_at_fault(broken: list[Exception], live: int) -> None:
    """Stop the run when every node of a pass (two or more) breaks it alone with one and the
    same ``TargetError``: batches that passed their input contract all fail on the model's
    own structure (a target the forward pass never calls), which is the run's configuration,
    not the nodes' fault. One node alone never stops a run."""
    errors = {f"{type(e).__name__}: {e}" for e in broken}
    if live >= 2 and len(broken) == live and len(errors) == 1 and all(
            isinstance(e, TargetError) for e in broken):
        raise RunStopped(f"every node's batch breaks the server's pass with the same error, "
                         f"so the model or its targets are wrong, not the nodes: {errors.pop()}")


def _as_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}
