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

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.superlink.grid import InMemoryGrid

from cola_fed.config import RunConfig
from cola_fed.edge.graphs import content_hash, graph_keys, graphs_wanted
from cola_fed.errors import RunStopped
from cola_fed.federation.checkpoint import Checkpoint
from cola_fed.federation.checks import Checks
from cola_fed.federation.evaluation import Evaluation
from cola_fed.federation.exchange import Exchange
from cola_fed.federation.failures import Failures, node_error
from cola_fed.federation.membership import MAX_HELLO_TRIES, MAX_REFUSALS_KEPT, Membership
from cola_fed.federation.passes import (
    GroupJob,
    GroupResult,
    LocalPool,
    NodeJob,
    PassPool,
    round_results,
)
from cola_fed.federation.protocol import (
    KIND_TRAIN,
    Sealed,
    TrainOrder,
    seal_bundle,
)
from cola_fed.federation.replies import LateReply, Replies
from cola_fed.federation.resume import Resume
from cola_fed.federation.sampling import MISSES_BEFORE_BACKOFF, Sampling
from cola_fed.federation.sessions import NodeSession, build_plan
from cola_fed.gl.engine import ColAggregate, Deltas, ServerEngine
from cola_fed.tasks.base import Task
from cola_fed.wire import exchange_key_for_run

#: names other modules and tests import from here
__all__ = ["MAX_HELLO_TRIES", "MAX_REFUSALS_KEPT", "MISSES_BEFORE_BACKOFF", "ColaStrategy",
           "LateReply", "NodeSession", "build_plan", "node_error"]

log = logging.getLogger("cola_fed")


class ColaStrategy(Membership, Sampling, Exchange, Replies, Checks, Failures, Resume,
                   Evaluation, Strategy):
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
    pool : PassPool, optional
        Where the passes run (:func:`cola_fed.federation.server.open_pool`); by default in
        this process, on ``engine``.
    """

    def __init__(self, engine: ServerEngine, task: Task, config: RunConfig,
                 identity: Ed25519PrivateKey, *, checkpoint: Checkpoint | None = None,
                 on_round: Callable[[ColaStrategy], None] | None = None,
                 pool: PassPool | None = None) -> None:
        self.engine, self.task, self.config = engine, task, config
        #: where the round's passes run (``server.engine``); the strategy's owner closes it
        self.pool = pool if pool is not None else LocalPool(engine)
        self.identity = identity
        #: the task's node files (its tokenizer), shipped at hello under the plan's hashes
        self.files = {name: task.file(name).read_bytes() for name in task.node_files}
        self.plan = build_plan(engine.layout, task, config).with_files(
            {name: content_hash(data) for name, data in self.files.items()})
        self.contract = task.input_contract()
        task.check()
        self._init_membership(config)
        #: with task.partition-by: partition id -> the value (the user) it holds
        self.partition_names = task.partition_names()
        self._init_evaluation(task, config)
        self._init_joins(config)
        self._init_sampling(config)
        self._init_exchange()
        self._init_failures()
        self.rounds: list[dict[str, Any]] = []
        self.stopped: str | None = None  # why the run ended early, if it did
        self.checkpoint, self.on_round = checkpoint, on_round
        self.lineage = 0
        self.last_round = 0  # the last round completed
        self.began = False  # the run has begun (or resumed): its results are worth writing
        self._round_started = 0.0
        self._bytes_down = 0
        # this round's own work: passes, wire forms, sealing; opening, checking and applying
        # the replies (not the time spent waiting for nodes)
        self._server_seconds = 0.0
        self._col_model: tuple[frozenset[str], Deltas] | None = None  # this round's
        robust = config.strategy  # how ``col`` mode's shared delta W is formed
        self.col_aggregate = ColAggregate(robust.col_aggregate, robust.col_trim_fraction,
                                          robust.col_clip_multiple)

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
                                 "each node's failed-rounds in metrics.json)")
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
        # Flower's simulation engine is the one grid whose nodes' backends the run config
        # names (edge.backends); any other grid may bring ONNX nodes
        self.graphs = self._edge_graphs(deployment=not isinstance(grid, InMemoryGrid))
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

    def _edge_graphs(self, *, deployment: bool) -> dict[str, bytes]:
        """The train-step graphs of every node kind in the run, for nodes on the ONNX backend
        (``edge.graphs``: with ``"auto"``, only where some node may use ONNX Runtime);
        exported once per process."""
        if not graphs_wanted(self.config, deployment=deployment):
            return {}
        from cola_fed.edge.export import export_graphs

        started = time.monotonic()
        keys = graph_keys(self.plan.layout, self.plan.all_specs(), self.plan.optimizer,
                          form=self.config.wire.form)
        graphs = export_graphs(keys.values())
        log.info("hello: %d train-step graphs for ONNX nodes, %.0f kB, ready in %.1f s",
                 len(graphs), sum(map(len, graphs.values())) / 1e3, time.monotonic() - started)
        return graphs

    # ----------------------------------------------------------------------------------------
    # the four hooks

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterator[Message]:
        """Each sampled node's sealed TRAIN message, yielded as soon as the pass of its group
        (``strategy.max-server-batch`` samples) is done, in whatever order the pool
        (``server.engine``) finishes groups; in ``col`` mode once every group has returned
        under the round's final collaborative delta (:func:`passes.round_results`)."""
        self._bytes_down, self._col_model, self._server_seconds = 0, None, 0.0
        busy = time.perf_counter()  # the server's own work, not the time its messages wait
        sessions = self.sessions
        sampled = sorted((sessions[n] for n in self._sampled), key=lambda s: s.partition_id)
        by_name = {str(s.node_id): s for s in sampled}
        mode = self.config.strategy.mode
        jobs = [GroupJob(index=i, nodes=tuple(self._in_wire_form(s) for s in group),
                         mode=mode, wire_dtype=self.plan.wire_dtype)
                for i, group in enumerate(self._groups(sampled))]
        deltas = self._collaborative if mode == "col" else None
        for result in round_results(self.pool, jobs, deltas):
            for name, parts in self._adaptation(server_round, result, by_name):
                session = by_name[name]
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

    def _adaptation(self, server_round: int, result: GroupResult,
                    by_name: dict[str, NodeSession]) -> Iterator[tuple[str, dict[str, bytes]]]:
        """A group's result on the coordinator: its faults counted (a node whose batch breaks
        a pass alone is refused this round), then each node's encoded parts, ready to seal."""
        if result.shared_failure:
            log.warning("round %d: the shared pass failed (%s); retrying node by node",
                        server_round, result.shared_failure)
        if result.model_at_fault:
            raise RunStopped(result.model_at_fault)
        for name, err in result.broken.items():
            self._fault(by_name[name].node_id, server_round, err, "its batch breaks the pass")
        if result.lost:
            log.warning("round %d: group %d (%s) skipped this round, not counted against its "
                        "nodes: %s", server_round, result.index,
                        ", ".join(by_name[n].node for n in result.lost_nodes), result.lost)
        for name, why in result.rows_instead.items():
            log.warning("round %d: %s gets rows: its data could not take the %r form (%s)",
                        server_round, by_name[name].node, self.config.wire.form, why)
        yield from result.payloads.items()

    def _in_wire_form(self, session: NodeSession) -> NodeJob:
        """A node's share of its group: its interval of batches at ``session.adapters`` (the
        state the TRAIN order acknowledges, which the node steps from), to be put in the form
        ``wire.form`` picks per layer; an ONNX node takes forms other than rows only with the
        graphs this server ships."""
        form = self.config.wire.form
        if session.backend == "onnx" and not self.graphs:
            form = "rows"
        return NodeJob(name=str(session.node_id), batches=tuple(session.pending),
                       adapters=session.adapters, specs=session.specs, form=form)

    def _collaborative(self, members: frozenset[str]) -> Deltas:
        """``col`` mode: the round's model, the delta W of the sampled nodes still in the round
        (aggregated as ``strategy.col-aggregate`` says), formed once for all its groups (and
        again only when a node whose batch breaks a pass leaves)."""
        if self._col_model is None or self._col_model[0] != members:
            sessions = {str(s.node_id): s for s in self.sessions.values()}
            # in partition order: a set's order varies, and float sums depend on their order
            names = sorted(members, key=lambda n: sessions[n].partition_id)
            self._col_model = members, self.pool.collaborative_deltas(
                {n: sessions[n].adapters for n in names},
                {n: sessions[n].specs for n in names}, self.col_aggregate)
        return self._col_model[1]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply as it arrives; apply the accepted ones when all are in (so that
        in ``col`` mode every node of the round trains against the same model); name the
        sampled nodes that did not train, and why."""
        sessions, reports, opened, trained, bytes_up = self.sessions, [], set(), set(), 0
        for reply in self._timed(replies):  # the time spent on each reply, not waiting
            node, report, size = self._take_reply(server_round, reply, sessions)
            opened.add(node)
            if report is not None:
                reports.append(report)
                trained.add(node)
                bytes_up += size
        self._count_misses(opened, sessions)
        self._apply_replies()
        self._name_failures(server_round, trained)
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


def _run_id(grid: Grid) -> int:
    """The run id of the grid's run (``LocalGrid`` carries its own)."""
    return int(grid.run.run_id)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and value != value
