"""The ColA arms: (B) central, one engine and one learner in one process on the pooled nodes'
batches, and (C) on Flower, the real strategy and client handlers over an in-process grid.

Every arm returns the same shape (:class:`ArmResult`): the server-held test metrics at each
evaluated round and what the run cost.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cola_fed.config import RunConfig
from cola_fed.federation.node_process import peak_rss_mb


@dataclass
class ArmResult:
    """One arm on one seed and partition.

    Attributes
    ----------
    curve : list of dict
        Per evaluated round: ``round``, ``accuracy`` and ``loss`` on the server-held test set
        (the mean over nodes for personalised models, with ``accuracy-std`` over nodes), and
        ``perplexity`` for language models.
    costs : dict
        ``bytes-down`` and ``bytes-up`` per node and round (0 for central arms), ``seconds``
        of wall time, and where they apply ``server-seconds`` (the server's or central
        trainer's own time per round), ``round-seconds`` (federated arms),
        ``client-step-seconds`` (FedAvg-LoRA), and ``peak-rss-mb``: the whole process's peak
        so far (arms run in one process, so it only grows; a per-arm figure needs a process
        of its own, as ``benchmarks.edge`` measures).
    """

    curve: list[dict[str, float]] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"curve": self.curve, "costs": self.costs}


def cola_central(flat: dict[str, Any], nodes: int) -> ArmResult:
    """(B) ColA trained centrally on the pooled batches: each round, one Gradient Learning step
    on each node's next batch in turn (the batches the federated nodes would draw), from node
    0's initial adapters."""
    from cola_fed.federation.strategy import build_plan
    from cola_fed.gl.engine import ServerEngine
    from cola_fed.gl.learner import GradientLearner
    from cola_fed.tasks.registry import get_task
    from cola_fed.tasks.scoring import score

    config = RunConfig.from_flat(flat)
    task = get_task(config.task)
    model = task.build_model()
    engine = ServerEngine(model, targets=task.adapted_targets(model, config.adapter.target_list))
    plan = build_plan(engine.layout, task, config)
    specs = plan.specs_for(0)
    learner = GradientLearner(engine.layout, specs, plan.optimizer, seed=plan.adapter_seed(0))
    streams = pooled_streams(task, config, nodes)
    test = task.server_test_batches()
    result = ArmResult()
    started, server_s = time.perf_counter(), 0.0

    def evaluate(round_: int) -> None:
        state = learner.adapter_state()
        metrics = score(task, test, lambda b: engine.predict(b, state, spec=specs),
                        engine.loss_fn)
        result.curve.append({"round": round_, **metrics})

    evaluate(0)
    for round_ in range(1, config.num_server_rounds + 1):
        for stream in streams:
            batch = next(stream)
            tick = time.perf_counter()
            data = engine.compute({"c": _as_torch(batch)}, {"c": learner.adapter_state()},
                                  specs={"c": specs})["c"]
            server_s += time.perf_counter() - tick
            learner.fit(data)
        if round_ % config.strategy.evaluate_every == 0 or round_ == config.num_server_rounds:
            evaluate(round_)
    result.costs = {"seconds": time.perf_counter() - started,
                    "server-seconds": server_s / config.num_server_rounds,
                    "bytes-down": 0.0, "bytes-up": 0.0, "peak-rss-mb": peak_rss_mb()}
    return result


def cola_federated(flat: dict[str, Any], nodes: int, mode: str) -> ArmResult:
    """(C) ColA on Flower: the real strategy and ClientApp handlers, ``nodes`` nodes over an
    in-process grid, ``strategy.mode = mode`` (``col`` or ``unmerged``)."""
    from cola_fed.federation.local_grid import LocalGrid
    from cola_fed.federation.server import run_server

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cola-experiment-") as out, \
            simulated_nodes(flat.get("task.data-path"),
                            skip_invalid_rows=bool(flat.get("task.skip-invalid-rows"))):
        strategy = run_server(LocalGrid(nodes), {
            **flat, "strategy.mode": mode, "output-dir": out, "checkpoint.every": 0,
            "strategy.min-train-nodes": nodes, "strategy.fraction-train": 1.0})
    if strategy.stopped:
        raise RuntimeError(f"arm cola-{mode}: the run stopped early: {strategy.stopped}")
    result = ArmResult()
    trained = [r for r in strategy.rounds if r.get("nodes")]
    for record in strategy.rounds:
        if "server-accuracy-mean" not in record and "server-loss-mean" not in record:
            continue
        point = {"round": record["round"]}
        for name in ("accuracy", "loss", "perplexity"):
            if f"server-{name}-mean" in record:
                point[name] = record[f"server-{name}-mean"]
                point[f"{name}-std"] = record[f"server-{name}-std"]
        result.curve.append(point)
    per_node = [r["nodes"] for r in trained] or [1]
    result.costs = {
        "seconds": time.perf_counter() - started,
        "bytes-down": statistics.fmean(r["bytes-down"] / n for r, n in zip(trained, per_node))
        if trained else 0.0,
        "bytes-up": statistics.fmean(r["bytes-up"] / n for r, n in zip(trained, per_node))
        if trained else 0.0,
        "round-seconds": statistics.fmean(r["seconds"] for r in trained) if trained else 0.0,
        "server-seconds": statistics.fmean(r["server-seconds"] for r in trained)
        if trained else 0.0,
        "peak-rss-mb": peak_rss_mb(),
    }
    return result


@contextmanager
def simulated_nodes(data_path: str | None, *, skip_invalid_rows: bool = False
                    ) -> Iterator[dict[str, str]]:
    """Within: the environment simulated nodes see, as under ``cola-fed simulate`` (yielded,
    for node processes, and set in this process, for in-process nodes). They partition
    ``data_path`` (the run's ``task.data-path``; a node never takes its data path from the
    server), trust the run's server in a known-servers file of their own that ends with the
    run, and keep no state; nothing of the user's shell (a data file, a state folder) leaks
    in. With ``skip_invalid_rows`` they skip the data rows their task cannot use."""
    from cola_fed.federation.client import DATA_PATH_ENV, SKIP_INVALID_ROWS_ENV
    from cola_fed.federation.node_store import STATE_DIR_ENV
    from cola_fed.wire.identity import KNOWN_SERVERS_ENV

    with tempfile.TemporaryDirectory(prefix="cola-experiment-nodes-") as home:
        changes = {DATA_PATH_ENV: str(data_path) if data_path else None, STATE_DIR_ENV: None,
                   SKIP_INVALID_ROWS_ENV: "1" if skip_invalid_rows else None,
                   KNOWN_SERVERS_ENV: os.path.join(home, "known-servers.json")}
        saved = {key: os.environ.get(key) for key in changes}
        _set_environ(changes)
        try:
            yield dict(os.environ)
        finally:
            _set_environ(saved)


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pooled_streams(task: Any, config: RunConfig, nodes: int) -> list:
    """Each node's seeded batch stream, as its federated node draws it (``Plan.batch_seed``)."""
    from cola_fed.baselines.fedavg_lora.options import batch_seed

    return [task.client_data(p, nodes).batches(config.task.batch_size,
                                               seed=batch_seed(config, p))
            for p in range(nodes)]


def _as_torch(batch: dict) -> dict:
    import torch

    return {k: torch.as_tensor(v) for k, v in batch.items()}


__all__ = ["ArmResult", "cola_central", "cola_federated", "peak_rss_mb", "pooled_streams",
           "simulated_nodes"]
