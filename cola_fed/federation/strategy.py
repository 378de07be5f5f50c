"""ColaStrategy: the server side of ColA as a Flower strategy.

The server keeps, per node, its latest adapter state, its pending batches, its held-out batches
and its channel; never optimizer state. A round computes adaptation data for every sampled node
in shared forward/backward passes (``ServerEngine``), seals each node's share for that node alone,
and takes back new adapters plus the next batches. Evaluation runs on the server, on each node's
held-out batches with that node's adapters (personalised accuracy).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import statistics
import time
from collections.abc import Iterable, Iterator
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
from cola_fed.config import RunConfig
from cola_fed.edge.graphs import content_hash, graph_keys
from cola_fed.errors import AdapterBoundsError, ProtocolError, RunStopped
from cola_fed.federation.protocol import (
    KIND_HELLO,
    KIND_TRAIN,
    PART_ADAPTERS,
    PART_TRAIN,
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
from cola_fed.gl.engine import ServerEngine
from cola_fed.gl.layout import Layout, assign_specs
from cola_fed.tasks.base import ClientData, Task
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

log = logging.getLogger("cola_fed")


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
    return Plan(layout=layout, task=dataclasses.replace(config.task, data_path=""),
                node_specs=tuple(node_specs), spec_assignment=assignment,
                optimizer=config.optimizer.spec(), interval=config.data.interval,
                wire_dtype=config.wire.dtype, data_mode=config.data.mode,
                backends=tuple(backends), backend_assignment=backend_assignment)


@dataclass
class NodeSession:
    """What the server holds for one node between rounds."""

    node_id: int
    partition_id: int
    channel: SecureChannel
    specs: dict[str, AdapterSpec]
    adapters: dict[str, dict[str, np.ndarray]]
    pending: list[dict[str, np.ndarray]]
    eval_batches: list[dict[str, np.ndarray]]
    #: ``upload`` mode: the node's training split, as the seeded batch stream the node would draw
    stream: Iterator[dict[str, np.ndarray]] | None = None
    num_examples: int = 0
    backend: str = "torch"
    rounds_trained: int = 0
    #: consecutive refused replies or broken passes; reset by an accepted reply
    failures: int = 0
    quarantined: bool = False
    last_error: str = ""  # the latest refusal counted against the node
    history: list[dict[str, float]] = field(default_factory=list)


class ColaStrategy(Strategy):
    """Collaborative Adaptation with Gradient Learning over Flower.

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
        Strategy, adapter, optimizer, data and wire settings.
    identity : Ed25519PrivateKey
        The server's long-term identity key: it signs every hello, and the run's exchange key
        is derived from it (``cola_fed.wire.identity``).
    """

    def __init__(self, engine: ServerEngine, task: Task, config: RunConfig,
                 identity: Ed25519PrivateKey) -> None:
        self.engine, self.task, self.config = engine, task, config
        self.identity = identity
        self.plan = build_plan(engine.layout, task, config)
        self.contract = task.input_contract()
        self.sessions: dict[int, NodeSession] = {}
        self.server_test = task.server_test_batches() if config.task.server_test_size else []
        self.rounds: list[dict[str, Any]] = []
        self.stopped: str | None = None  # why the run ended early, if it did
        self.refused_at_hello: dict[int, str] = {}  # node id -> why it did not join
        self._round_started = 0.0
        self._bytes_down = 0
        self._sampled: list[int] = []
        self._refused: list[int] = []
        self._rng = random.Random(config.task.seed)

    # ----------------------------------------------------------------------------------------
    # the run

    def start(self, grid: Grid, num_rounds: int, timeout: float) -> Result:  # type: ignore[override]
        """Hello round (keys, first batches), then Flower's train/evaluate loop; ends early,
        keeping every result, when fewer than ``strategy.min-train-nodes`` nodes remain."""
        try:
            self.hello(grid, timeout)
            return super().start(grid=grid, initial_arrays=ArrayRecord(),
                                 num_rounds=num_rounds, timeout=timeout,
                                 evaluate_fn=self.evaluate)
        except RunStopped as stop:
            self.stopped = str(stop)
            log.error("the run stopped early: %s", stop)
            return Result()

    def hello(self, grid: Grid, timeout: float) -> None:
        wanted = self.config.strategy.min_available_nodes
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise RunStopped(f"fewer than {wanted} nodes connected within {timeout:.0f} s")
            time.sleep(1.0)
        run_id = _run_id(grid)
        self.exchange = exchange_key_for_run(self.identity, run_id)
        graphs = self._edge_graphs()
        self.plan = self.plan.with_graphs({n: content_hash(g) for n, g in graphs.items()})
        hello_id = time.time_ns()  # above any earlier hello of this server: replays refused
        transcripts, messages = {}, []
        for node in grid.get_node_ids():
            hello = Hello.signed(self.identity, HelloTranscript(
                run_id=run_id, node_id=node, hello_id=hello_id,
                identity=public_bytes(self.identity), exchange_key=public_bytes(self.exchange),
                plan=self.plan), graphs)
            transcripts[node] = transcript_hash(hello.transcript)
            messages.append(Message(hello.to_record(), dst_node_id=node,
                                    message_type=MessageType.QUERY, group_id="0"))
        log.info("hello: %d nodes, server identity %s", len(messages),
                 fingerprint(public_bytes(self.identity)))
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if node not in transcripts:
                continue
            if reply.has_error():
                self.refused_at_hello[node] = reason = node_error(reply.error.reason)
                log.warning("hello: node %s failed: %s", node, reason)
                continue
            try:  # the isolation boundary: whatever a node sent, it fails alone
                self.sessions[node] = self._open_hello(node, reply, run_id, transcripts[node])
            except Exception as err:
                self.refused_at_hello[node] = f"{type(err).__name__}: {err}"
                log.warning("hello: refused node %s: %s: %s", node, type(err).__name__, err)
        self._refuse_contested_partitions()
        if len(self.sessions) < self.config.strategy.min_train_nodes:
            raise RunStopped(f"{len(self.sessions)} nodes completed the hello round, fewer than "
                             f"strategy.min-train-nodes = {self.config.strategy.min_train_nodes}")
        log.info("hello: %d nodes joined (partitions %s; backends %s)", len(self.sessions),
                 sorted(s.partition_id for s in self.sessions.values()),
                 dict(sorted(collections.Counter(s.backend for s in self.sessions.values())
                             .items())))

    def _edge_graphs(self) -> dict[str, bytes]:
        """The train-step graphs of every node kind in the run (``edge.graphs``), for nodes on
        the ONNX backend; exported once per process."""
        if not self.config.edge.graphs:
            return {}
        from cola_fed.edge.export import export_graphs

        started = time.monotonic()
        keys = graph_keys(self.plan.layout, self.plan.all_specs(), self.plan.optimizer)
        graphs = export_graphs(keys.values())
        log.info("hello: %d train-step graphs for ONNX nodes, %.0f kB, ready in %.1f s",
                 len(graphs), sum(map(len, graphs.values())) / 1e3, time.monotonic() - started)
        return graphs

    def _open_hello(self, node: int, reply: Message, run_id: int,
                    transcript: bytes) -> NodeSession:
        hello = HelloReply.from_record(reply.content)
        channel = SecureChannel(self.exchange, hello.node_public, role="server", run_id=run_id,
                                node_id=node, transcript=transcript)
        claim, parts = open_bundle(channel, hello.sealed, KIND_HELLO, HelloClaim,
                                   limits=self._reply_limits(None, upload=True))
        task, upload = self.plan.task, self.plan.data_mode == "upload"
        batches = [PART_TRAIN] if upload else [batch_part(i) for i in range(self.plan.interval)]
        evals = [eval_part(i) for i in range(task.eval_batches)]
        expect_parts(parts, [PART_ADAPTERS, *batches, *evals], f"node {node}'s hello")
        session = NodeSession(
            node, claim.partition_id, channel, self.plan.specs_for(claim.partition_id),
            self._checked_adapters(parts[PART_ADAPTERS], claim.partition_id), [],
            [self._checked_batch(parts[name], name) for name in evals],
            num_examples=claim.num_examples, backend=claim.backend)
        if upload:
            train = self._checked_batch(parts[PART_TRAIN], PART_TRAIN, upload=True)
            session.stream = ClientData(train=train, eval_batches=[]).batches(
                task.batch_size, seed=self.plan.batch_seed(claim.partition_id))
        else:
            session.pending = [self._checked_batch(parts[name], name) for name in batches]
        return session

    def _refuse_contested_partitions(self) -> None:
        """Two nodes may not hold one partition. Claims are not proof (nodes have no long-term
        identity of their own), so the first claim has no right over a later one: every node
        claiming a contested partition is refused, and none takes another's place."""
        claims = collections.defaultdict(list)
        for node, session in self.sessions.items():
            claims[session.partition_id].append(node)
        for partition, nodes in claims.items():
            if len(nodes) > 1:
                log.warning("hello: refused nodes %s: ProtocolError: they all claim partition %d;"
                            " two nodes may not hold one partition", sorted(nodes), partition)
                for node in nodes:
                    del self.sessions[node]
                    self.refused_at_hello[node] = f"ProtocolError: partition {partition} is " \
                                                  "claimed by several nodes"

    # ----------------------------------------------------------------------------------------
    # the four hooks

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._round_started = time.perf_counter()
        active = [n for n, s in self.sessions.items() if not s.quarantined]
        if len(active) < self.config.strategy.min_train_nodes:
            raise RunStopped(f"round {server_round}: {len(active)} nodes remain outside "
                             "quarantine, fewer than strategy.min-train-nodes = "
                             f"{self.config.strategy.min_train_nodes}")
        available = set(grid.get_node_ids())
        nodes = sorted(n for n in active if n in available)
        count = max(1, round(len(nodes) * self.config.strategy.fraction_train))
        sampled = sorted(self._rng.sample(nodes, count)) if count < len(nodes) else nodes
        for node in sampled:
            session = self.sessions[node]
            if session.stream is not None:  # upload mode: the server draws the batches
                session.pending = [next(session.stream) for _ in range(self.plan.interval)]
        self._refused = []
        chunks = self._adaptation(server_round, sampled)
        messages, self._bytes_down, self._sampled = [], 0, sampled
        for node, data in chunks.items():
            session = self.sessions[node]
            parts = {adaptation_part(i): encode_adaptation(d, dtype=self.plan.wire_dtype)
                     for i, d in enumerate(data)}
            # "acknowledged": the last node message the server accepted, so that a node whose
            # reply was lost resumes from the state the server holds
            order = TrainOrder(round=server_round, acknowledged=session.channel.state.received)
            sealed = seal_bundle(session.channel, KIND_TRAIN, order, parts)
            self._bytes_down += len(sealed)
            messages.append(Message(Sealed(sealed).to_record(), dst_node_id=node,
                                    message_type=MessageType.TRAIN, group_id=str(server_round)))
        return messages

    def _adaptation(self, server_round: int, sampled: list[int]
                    ) -> dict[int, list[AdaptationData]]:
        """Each sampled node's adaptation data, in shared passes. A pass that raises is run
        again node by node, and the nodes whose data breaks it alone are refused this round."""
        chunks: dict[int, list[AdaptationData]] = {node: [] for node in sampled}
        for i in range(self.plan.interval):
            live = list(chunks)
            try:
                out = self._compute(live, i)
            except Exception as err:
                log.warning("round %d: the shared pass failed (%s: %s); retrying node by node",
                            server_round, type(err).__name__, err)
                out = {}
                for node in live:
                    try:
                        out.update(self._compute([node], i))
                    except Exception as alone:
                        self._fault(node, server_round, alone, "its batch breaks the pass")
                        del chunks[node]
                if len(out) < len(live):  # one shared pass of the others, as a clean round
                    out = self._compute(list(out), i)  # (``col`` mode: their shared model)
            for node, data in out.items():
                chunks[node].append(data)
        return chunks

    def _compute(self, nodes: list[int], chunk: int) -> dict[int, AdaptationData]:
        if not nodes:
            return {}
        out = self.engine.compute(
            {str(n): _as_torch(self.sessions[n].pending[chunk]) for n in nodes},
            {str(n): self.sessions[n].adapters for n in nodes},
            specs={str(n): self.sessions[n].specs for n in nodes},
            mode=self.config.strategy.mode,
        )
        return {n: out[str(n)] for n in nodes}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        reports, bytes_up, failed = [], 0, len(self._refused)
        for reply in replies:
            node = reply.metadata.src_node_id
            session = self.sessions.get(node)
            if session is None or session.quarantined or node not in self._sampled:
                continue
            if reply.has_error():
                failed += 1
                log.warning("round %d: node %s failed: %s", server_round, node,
                            node_error(reply.error.reason))
                continue
            before = dataclasses.replace(session.channel.state)
            try:  # a reply that does not open may not be the node's (a replay, a forgery)
                sealed = Sealed.from_record(reply.content).sealed
                plaintext = open_sealed(session.channel, sealed, KIND_TRAIN,
                                        limits=self._reply_limits(session, upload=False))
            except Exception as err:
                session.channel.state = before
                failed += 1
                log.warning("round %d: node %s: a reply that does not open was refused (not "
                            "counted against the node): %s: %s", server_round, node,
                            type(err).__name__, err)
                continue
            try:  # the isolation boundary: whatever a node sent, it fails alone
                report, adapters, pending = self._read_train_reply(session, plaintext,
                                                                   server_round)
            except Exception as err:
                # not applied, so not acknowledged: the node resumes from the state we hold
                session.channel.state = before
                failed += 1
                self._fault(node, server_round, err, "reply refused")
                continue
            session.adapters, session.pending = adapters, pending
            session.rounds_trained += 1
            session.failures = 0
            bytes_up += len(sealed)
            reports.append(report)
        failed = max(failed, len(self._sampled) - len(reports))  # no reply at all counts too
        record = {
            "round": server_round,
            "nodes": len(reports),
            "failed": failed,
            "train-loss": statistics.fmean(r.loss for r in reports) if reports else float("nan"),
            "bytes-down": self._bytes_down,
            "bytes-up": bytes_up,
            "seconds": time.perf_counter() - self._round_started,
        }
        self.rounds.append(record)
        log.info("round %d/%d: %d nodes (%d failed)  loss %.4f  down %.2f MB  up %.2f MB  %.2f s",
                 server_round, self.config.num_server_rounds, record["nodes"], failed,
                 record["train-loss"], record["bytes-down"] / 1e6, bytes_up / 1e6,
                 record["seconds"])
        return None, MetricRecord({k: v for k, v in record.items()
                                   if k != "round" and not _isnan(v)})

    def _read_train_reply(self, session: NodeSession, plaintext: bytes, server_round: int):
        """An opened TRAIN reply, checked: the round it answers, its parts, the adapters and
        the next batches."""
        report, parts = read_bundle(plaintext, KIND_TRAIN, TrainReport)
        if report.round != server_round:
            raise ProtocolError(f"the reply answers round {report.round}, this is round "
                                f"{server_round}")
        upload = session.stream is not None
        batches = [] if upload else [batch_part(i) for i in range(self.plan.interval)]
        expect_parts(parts, [PART_ADAPTERS, *batches], f"node {session.node_id}'s reply")
        adapters = self._checked_adapters(parts[PART_ADAPTERS], session.partition_id)
        pending = session.pending if upload else [self._checked_batch(parts[name], name)
                                                  for name in batches]
        return report, adapters, pending

    def _fault(self, node: int, server_round: int, err: BaseException, what: str) -> None:
        """Count a refusal against a node; quarantine it after ``strategy.max-failures`` in a
        row. The node keeps its adapters and pending batches."""
        session = self.sessions[node]
        session.failures += 1
        session.last_error = f"round {server_round}: {what}: {type(err).__name__}: {err}"
        if node not in self._refused:
            self._refused.append(node)
        log.warning("round %d: node %s (partition %d): %s: %s: %s", server_round, node,
                    session.partition_id, what, type(err).__name__, err)
        if session.failures >= self.config.strategy.max_failures and not session.quarantined:
            session.quarantined = True
            log.error("node %s (partition %d) quarantined for the rest of the run after %d "
                      "refusals in a row", node, session.partition_id, session.failures)

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
        """Accuracy on every node's held-out batches (and on the server-held test set when
        ``task.server-test-size`` is set) of the model that node trains through: its own
        adapters, or in ``col`` mode the collaborative model. Quarantined nodes are left out
        (of the collaborative model too); a node whose evaluation fails is left out of the
        round's figures."""
        every = self.config.strategy.evaluate_every
        last = server_round == self.config.num_server_rounds
        if server_round % every and not last and server_round != 0:
            return None
        active = [s for s in self.sessions.values() if not s.quarantined]
        held_out, server = {}, {}
        for session in active:
            try:
                held_out[session.partition_id] = self._accuracy(session, session.eval_batches)
                if self.server_test:
                    server[session.partition_id] = self._accuracy(session, self.server_test)
            except Exception as err:
                held_out.pop(session.partition_id, None)
                log.warning("round %d: evaluation of node %s failed: %s: %s", server_round,
                            session.node_id, type(err).__name__, err)
        if not held_out:
            return None
        metrics: dict[str, float] = {}
        metrics.update(_spread("accuracy", held_out.values()))
        if server:
            metrics.update(_spread("server-accuracy", server.values()))
        for session in active:
            if session.partition_id not in held_out:
                continue
            entry = {"round": server_round, "accuracy": held_out[session.partition_id]}
            if session.partition_id in server:
                entry["server-accuracy"] = server[session.partition_id]
            session.history.append(entry)
        if self.rounds and self.rounds[-1]["round"] == server_round:
            self.rounds[-1].update(metrics)
        elif server_round == 0:
            self.rounds.append({"round": 0, **metrics})
        self._progress(server_round, metrics)
        return MetricRecord(metrics)

    def _accuracy(self, session: NodeSession, batches: list[dict[str, np.ndarray]]) -> float:
        """Accuracy of the model this node trains through: its own adapters, or in ``col`` mode
        the collaborative model (the mean delta W of all nodes outside quarantine)."""
        correct = counted = 0
        for batch in batches:
            if self.config.strategy.mode == "col":
                members = {n: s for n, s in self.sessions.items() if not s.quarantined}
                logits = self.engine.predict_col(
                    _as_torch(batch), {str(n): s.adapters for n, s in members.items()},
                    specs={str(n): s.specs for n, s in members.items()})
            else:
                logits = self.engine.predict(_as_torch(batch), session.adapters,
                                             spec=session.specs)
            c, n = self.task.correct(logits, torch.as_tensor(batch["labels"]))
            correct, counted = correct + c, counted + n
        return correct / max(counted, 1)

    def _progress(self, server_round: int, metrics: dict[str, float]) -> None:
        server = (f"; server test set {metrics['server-accuracy-mean']:.3f} ± "
                  f"{metrics['server-accuracy-std']:.3f}" if "server-accuracy-mean" in metrics
                  else "")
        which = "collaborative model" if self.config.strategy.mode == "col" else "personalised"
        log.info("round %d: held-out accuracy (%s) %.3f ± %.3f over nodes (min %.3f, max %.3f)"
                 "%s%s", server_round, which, metrics["accuracy-mean"], metrics["accuracy-std"],
                 metrics["accuracy-min"], metrics["accuracy-max"], server,
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
        limit = self.config.strategy.max_adapter_norm
        for layer, params in state.items():
            for name, value in params.items():
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


def node_error(reason: str) -> str:
    """The gist of an error a node reported: its last line (under Flower's simulation engine
    the reason carries the whole remote traceback), at most 1,200 characters."""
    lines = [line.strip() for line in str(reason).strip().splitlines() if line.strip()]
    gist = lines[-1] if lines else "no reason given"
    return gist if len(gist) <= 1200 else gist[:1197] + "..."


def _run_id(grid: Grid) -> int:
    """The run id of the grid's run (``LocalGrid`` carries its own)."""
    return int(grid.run.run_id)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _spread(name: str, values: Iterable[float]) -> dict[str, float]:
    values = list(values)
    return {f"{name}-mean": statistics.fmean(values), f"{name}-std": statistics.pstdev(values),
            f"{name}-min": min(values), f"{name}-max": max(values)}


def _as_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}
