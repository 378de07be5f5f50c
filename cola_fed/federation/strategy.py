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
import json
import logging
import random
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from cola_fed.adapters.init import param_shapes
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.config import BACKENDS, RunConfig
from cola_fed.edge.graphs import content_hash, graph_keys
from cola_fed.errors import ColaError, PayloadError, ProtocolError
from cola_fed.federation.protocol import (
    CLEAR,
    GRAPHS,
    KIND_HELLO,
    KIND_TRAIN,
    METRICS,
    SEALED,
    RunSpec,
)
from cola_fed.federation.records import blob_to_record, record_to_blob
from cola_fed.gl.engine import ServerEngine
from cola_fed.gl.layout import Layout, assign_specs
from cola_fed.tasks.base import ClientData, Task
from cola_fed.wire import (
    SecureChannel,
    decode_adapter_state,
    decode_batch,
    decode_bundle,
    encode_adaptation,
    encode_bundle,
    fingerprint,
    public_bytes,
)
from cola_fed.wire.crypto import PROTOCOL_VERSION

log = logging.getLogger("cola_fed")


def run_spec(layout: Layout, task: Task, config: RunConfig) -> RunSpec:
    """What every node is told about the run at hello."""
    return RunSpec(layout=layout, task=config.task, adapter=config.adapter,
                   optimizer=config.optimizer.spec(), interval=config.data.interval,
                   head=task.head, wire_dtype=config.wire.dtype, data_mode=config.data.mode,
                   backends=config.edge.backends)


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
    history: list[dict[str, float]] = field(default_factory=list)


class ColaStrategy(Strategy):
    """Collaborative Adaptation with Gradient Learning over Flower.

    Parameters
    ----------
    engine : ServerEngine
        The frozen model with its adapted layers.
    task : Task
        Gives the fresh head to adapt and the accuracy metric.
    config : RunConfig
        Strategy, adapter, optimizer, data and wire settings.
    server_key : X25519PrivateKey or None
        The server's key; ``None`` generates one for this run (its fingerprint is logged).
    """

    def __init__(self, engine: ServerEngine, task: Task, config: RunConfig,
                 server_key: X25519PrivateKey | None = None) -> None:
        self.engine, self.task, self.config = engine, task, config
        self.key = server_key or X25519PrivateKey.generate()
        self.spec = run_spec(engine.layout, task, config)
        self.sessions: dict[int, NodeSession] = {}
        self.server_test = task.server_test_batches() if config.task.server_test_size else []
        self.rounds: list[dict[str, Any]] = []
        self._round_started = 0.0
        self._bytes_down = 0
        self._sampled = 0
        self._rng = random.Random(config.task.seed)

    # ----------------------------------------------------------------------------------------
    # the run

    def start(self, grid: Grid, num_rounds: int, timeout: float) -> Result:  # type: ignore[override]
        """Hello round (keys, first batches), then Flower's train/evaluate loop."""
        self.hello(grid, timeout)
        return super().start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=num_rounds,
                             timeout=timeout, evaluate_fn=self.evaluate)

    def hello(self, grid: Grid, timeout: float) -> None:
        wanted = self.config.strategy.min_available_nodes
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise ColaError(f"fewer than {wanted} nodes connected within {timeout:.0f} s")
            time.sleep(1.0)
        graphs = self._edge_graphs()
        content = RecordDict({
            CLEAR: ConfigRecord({
                "protocol-version": PROTOCOL_VERSION,
                "server-public-key": public_bytes(self.key),
                "run-spec": self.spec.to_json(),
                "graph-hashes": json.dumps({n: content_hash(g) for n, g in graphs.items()}),
            }),
            GRAPHS: ConfigRecord(graphs),
        })
        messages = [Message(content, dst_node_id=node, message_type=MessageType.QUERY,
                            group_id="0") for node in grid.get_node_ids()]
        log.info("hello: %d nodes, server key %s", len(messages),
                 fingerprint(public_bytes(self.key)))
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("hello: node %s failed: %s", node, reply.error.reason)
                continue
            try:
                self.sessions[node] = self._open_hello(node, reply)
            except (PayloadError, ColaError, KeyError, TypeError, ValueError) as err:
                log.warning("hello: refused node %s: %r", node, err)
        if not self.sessions:
            raise ColaError("no node completed the hello round")
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
        keys = graph_keys(self.spec.layout, self.spec.all_specs(), self.spec.optimizer)
        graphs = export_graphs(keys.values())
        log.info("hello: %d train-step graphs for ONNX nodes, %.0f kB, ready in %.1f s",
                 len(graphs), sum(map(len, graphs.values())) / 1e3, time.monotonic() - started)
        return graphs

    def _open_hello(self, node: int, reply: Message) -> NodeSession:
        clear = reply.content[CLEAR]
        channel = SecureChannel(self.key, bytes(clear["node-public-key"]), role="server",
                                run_id=reply.metadata.run_id, node_id=node)
        bundle = decode_bundle(channel.open(record_to_blob(reply.content[SEALED]), round=0,
                                            kind=KIND_HELLO))
        partition_id = int(clear["partition-id"])
        backend = str(clear["backend"])
        if backend not in BACKENDS:
            raise ProtocolError(f"node {node} reports an unknown backend {backend!r}")
        specs = self.spec.specs_for(partition_id)
        adapters = self._checked_adapters(bundle["adapters"], partition_id)
        evals = [self._checked_batch(bundle[name]) for name in sorted(bundle)
                 if name.startswith("eval")]
        session = NodeSession(node, partition_id, channel, specs, adapters, [], evals,
                              num_examples=int(clear["num-examples"]),
                              backend=backend)
        if self.spec.data_mode == "upload":
            train = ClientData(train=self._checked_batch(bundle["train"]), eval_batches=[])
            session.stream = train.batches(self.config.task.batch_size,
                                           seed=self.spec.batch_seed(partition_id))
        else:
            session.pending = [self._checked_batch(bundle[f"batch{i}"])
                               for i in range(self.spec.interval)]
        return session

    # ----------------------------------------------------------------------------------------
    # the four hooks

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._round_started = time.perf_counter()
        available = set(grid.get_node_ids())
        nodes = sorted(n for n in self.sessions if n in available)
        count = max(1, round(len(nodes) * self.config.strategy.fraction_train))
        sampled = sorted(self._rng.sample(nodes, count)) if count < len(nodes) else nodes
        chunks: dict[int, list[Any]] = {node: [] for node in sampled}
        for node in sampled:
            session = self.sessions[node]
            if session.stream is not None:  # upload mode: the server draws the batches
                session.pending = [next(session.stream) for _ in range(self.spec.interval)]
        for i in range(self.spec.interval):
            out = self.engine.compute(
                {str(n): _as_torch(self.sessions[n].pending[i]) for n in sampled},
                {str(n): self.sessions[n].adapters for n in sampled},
                specs={str(n): self.sessions[n].specs for n in sampled},
                mode=self.config.strategy.mode,
            )
            for node in sampled:
                chunks[node].append(out[str(node)])
        messages, self._bytes_down, self._sampled = [], 0, len(sampled)
        for node in sampled:
            parts = {f"adaptation{i}": encode_adaptation(data, dtype=self.config.wire.dtype)
                     for i, data in enumerate(chunks[node])}
            sealed = self.sessions[node].channel.seal(encode_bundle(parts), round=server_round,
                                                      kind=KIND_TRAIN)
            self._bytes_down += len(sealed)
            # "acknowledged": the last node message the server accepted, so that a node whose
            # reply was lost resumes from the state the server holds
            clear = ConfigRecord({"server-round": server_round,
                                  "acknowledged": self.sessions[node].channel.state.received})
            content = RecordDict({CLEAR: clear, SEALED: blob_to_record(sealed)})
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN,
                                    group_id=str(server_round)))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        losses, bytes_up, failed = [], 0, 0
        for reply in replies:
            node = reply.metadata.src_node_id
            session = self.sessions.get(node)
            if session is None or reply.has_error():
                failed += 1
                log.warning("round %d: node %s failed: %s", server_round, node,
                            reply.error.reason if reply.has_error() else "unknown node")
                continue
            before = dataclasses.replace(session.channel.state)
            try:
                blob = record_to_blob(reply.content[SEALED])
                bundle = decode_bundle(session.channel.open(blob, round=server_round,
                                                            kind=KIND_TRAIN))
                adapters = self._checked_adapters(bundle["adapters"], session.partition_id)
                pending = session.pending if session.stream is not None else [
                    self._checked_batch(bundle[f"batch{i}"]) for i in range(self.spec.interval)]
                loss = float(reply.content[METRICS]["loss"])
            except (PayloadError, KeyError, TypeError, ValueError) as err:
                # not applied, so not acknowledged: the node resumes from the state we hold
                session.channel.state = before
                failed += 1
                log.warning("round %d: refused the reply of node %s: %s", server_round, node, err)
                continue
            session.adapters, session.pending = adapters, pending
            session.rounds_trained += 1
            bytes_up += len(blob)
            losses.append(loss)
        failed = max(failed, self._sampled - len(losses))  # no reply at all counts too
        record = {
            "round": server_round,
            "nodes": len(losses),
            "failed": failed,
            "train-loss": statistics.fmean(losses) if losses else float("nan"),
            "bytes-down": self._bytes_down,
            "bytes-up": bytes_up,
            "seconds": time.perf_counter() - self._round_started,
        }
        self.rounds.append(record)
        log.info("round %d/%d: %d nodes (%d failed)  loss %.4f  down %.2f MB  up %.2f MB  %.2f s",
                 server_round, self.config.num_server_rounds, record["nodes"], failed,
                 record["train-loss"], record["bytes-down"] / 1e6, bytes_up / 1e6,
                 record["seconds"])
        return None, MetricRecord({k: v for k, v in record.items() if k != "round"})

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
                 self.config.adapter.kinds or self.config.adapter.kind, self.spec.interval,
                 s.fraction_train,
                 self.config.wire.dtype)

    # ----------------------------------------------------------------------------------------
    # evaluation

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Accuracy on every node's held-out batches (and on the server-held test set when
        ``task.server-test-size`` is set) of the model that node trains through: its own
        adapters, or in ``col`` mode the collaborative model."""
        every = self.config.strategy.evaluate_every
        last = server_round == self.config.num_server_rounds
        if server_round % every and not last and server_round != 0:
            return None
        metrics: dict[str, float] = {}
        held_out = {s.partition_id: self._accuracy(s, s.eval_batches)
                    for s in self.sessions.values()}
        metrics.update(_spread("accuracy", held_out.values()))
        if self.server_test:
            server = {s.partition_id: self._accuracy(s, self.server_test)
                      for s in self.sessions.values()}
            metrics.update(_spread("server-accuracy", server.values()))
        for session in self.sessions.values():
            entry = {"round": server_round, "accuracy": held_out[session.partition_id]}
            if self.server_test:
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
        the collaborative model (the mean delta W of all nodes)."""
        correct = counted = 0
        for batch in batches:
            if self.config.strategy.mode == "col":
                logits = self.engine.predict_col(
                    _as_torch(batch), {str(n): s.adapters for n, s in self.sessions.items()},
                    specs={str(n): s.specs for n, s in self.sessions.items()})
            else:
                logits = self.engine.predict(_as_torch(batch), session.adapters,
                                             spec=session.specs)
            c, n = self.task.correct(logits, torch.as_tensor(batch["labels"]))
            correct, counted = correct + c, counted + n
        return correct / max(counted, 1)

    def _progress(self, server_round: int, metrics: dict[str, float]) -> None:
        server = (f"; server test set {metrics['server-accuracy-mean']:.3f} ± "
                  f"{metrics['server-accuracy-std']:.3f}" if self.server_test else "")
        which = "collaborative model" if self.config.strategy.mode == "col" else "personalised"
        log.info("round %d: held-out accuracy (%s) %.3f ± %.3f over nodes (min %.3f, max %.3f)"
                 "%s%s", server_round, which, metrics["accuracy-mean"], metrics["accuracy-std"],
                 metrics["accuracy-min"], metrics["accuracy-max"], server,
                 " (base model)" if server_round == 0 else "")

    # ----------------------------------------------------------------------------------------
    # strict decoding against what the server expects

    def _checked_adapters(self, blob: bytes, partition_id: int
                          ) -> dict[str, dict[str, np.ndarray]]:
        layout = self.engine.layout
        specs = assign_specs(layout, self.spec.specs_for(partition_id))
        expected = {name: param_shapes(spec, layout[name].d_in, layout[name].d_out)
                    for name, spec in specs.items()}
        return decode_adapter_state(blob, layout=self.engine.layout, expected_shapes=expected)

    def _checked_batch(self, blob: bytes) -> dict[str, np.ndarray]:
        batch = decode_batch(blob)
        if "labels" not in batch:
            raise PayloadError("a client batch has no labels")
        return batch


def _spread(name: str, values: Iterable[float]) -> dict[str, float]:
    values = list(values)
    return {f"{name}-mean": statistics.fmean(values), f"{name}-std": statistics.pstdev(values),
            f"{name}-min": min(values), f"{name}-max": max(values)}


def _as_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}
