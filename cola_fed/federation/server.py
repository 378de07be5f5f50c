"""Everything a ServerApp does: config -> task, engine, strategy -> run -> results folder."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from cola_fed.config import RunConfig
from cola_fed.federation.checkpoint import Checkpoint
from cola_fed.federation.passes import LocalPool, PassPool, build_engine
from cola_fed.federation.preflight import preflight
from cola_fed.federation.sinks import RoundSinks, flat_params, require
from cola_fed.federation.strategy import ColaStrategy
from cola_fed.gl.engine import ServerEngine
from cola_fed.tasks import get_task
from cola_fed.tasks.tables import SKIPPED_ROWS
from cola_fed.wire import encode_adapter_state
from cola_fed.wire.identity import load_identity, load_or_create_identity

log = logging.getLogger("cola_fed")


def build_strategy(config: RunConfig, *, results: bool = False) -> ColaStrategy:
    """The strategy of a run config; with ``results``, it writes checkpoints (per
    ``checkpoint.*``) and the results folder after every round, into ``output-dir``."""
    if results:  # a ``logging.*`` sink that is not installed is refused before the model loads
        require(config.logging)
    task = get_task(config.task)
    engine = build_engine(config, task)
    # a key named in the config must exist (a typo must not mint a new identity); the default
    # one is created on first use
    path = config.wire.server_key
    identity = load_identity(path) if path else load_or_create_identity()
    pool = open_pool(config, engine)  # the caller closes it: strategy.pool.close()
    if not results:
        return ColaStrategy(engine, task, config, identity=identity, pool=pool)
    out = Path(config.output_dir)
    return ColaStrategy(engine, task, config, identity=identity, pool=pool,
                        checkpoint=Checkpoint(out / "checkpoint"),
                        on_round=RoundReport(out, config))


def open_pool(config: RunConfig, engine: ServerEngine) -> PassPool:
    """Where the run's passes go (``server.engine``): this process, or Ray actors (joined at
    the first round, so that under Flower's simulation engine, which starts its own Ray in this
    process for the nodes, the pool shares it)."""
    if config.server.engine == "ray":
        from cola_fed.federation.ray_pool import RayPool

        return RayPool(config, engine)
    return LocalPool(engine)


class RoundReport:
    """What each round leaves for others to read: the results folder (with what ``cola-fed
    watch`` needs: the rounds planned, when each ended, whether the run has ended) and the
    sinks ``logging.*`` asks for. Called after every round, and with ``final`` once at the
    end, however the run ends."""

    def __init__(self, out: Path, config: RunConfig) -> None:
        self.out, self.total = out, config.num_server_rounds
        self.started = time.perf_counter()
        self.ended_at: dict[str, float] = {}  # round -> when it ended (this process's rounds)
        self.sinks = RoundSinks(out, config.logging, params=flat_params(config),
                                resumed=config.checkpoint.resume)

    def __call__(self, strategy: ColaStrategy, *, final: bool = False) -> None:
        if not final:
            self.ended_at[str(strategy.last_round)] = time.time()
        write_results(strategy, self.out, seconds=time.perf_counter() - self.started,
                      progress={"num-server-rounds": self.total, "ended": final,
                                "round-ended-at": self.ended_at})
        self.sinks.log(strategy.rounds, lineage=strategy.lineage)
        if final:
            self.sinks.close(strategy.stopped or "")


def run_server(grid: Grid, run_config: dict[str, Any]) -> ColaStrategy:
    """Run the config's rounds on ``grid``; results are written after every round and when the
    run ends, however it ends."""
    config = RunConfig.from_flat(run_config)
    preflight(config)  # a bad target or data row: one line, before the weights load
    strategy = build_strategy(config, results=True)
    try:
        strategy.start(grid, num_rounds=config.num_server_rounds, timeout=config.strategy.timeout)
    finally:  # whatever ends the run, every node's adapters and the round records are kept
        strategy.pool.close()
        if strategy.began:  # (a run that never began, or failed to resume, overwrites nothing)
            strategy.on_round(strategy, final=True)
            log.info("results in %s", Path(config.output_dir).resolve())
    return strategy


def write_results(strategy: ColaStrategy, out: Path, *, seconds: float,
                  progress: dict[str, Any] | None = None) -> Path:
    """metrics.json, learning_curve.png and every node's latest adapters (safetensors), each
    replaced atomically: a reader never sees half a file. ``progress`` adds top-level keys to
    metrics.json (:class:`RoundReport`'s, for ``cola-fed watch``)."""
    out.mkdir(parents=True, exist_ok=True)
    nodes = {s.partition_id: {"backend": s.backend, "rounds-trained": s.rounds_trained,
                              "quarantined": s.quarantined, "last-error": s.last_error,
                              # why it did not train when sampled (the newest rounds), and
                              # the round its current run of failed rounds began (or null)
                              "node-id": s.node_id, "failed-rounds": s.failed_rounds,
                              "failing-since": s.failing[0] if s.failing else None,
                              "history": s.history}
             for s in strategy.members.values()}
    _replace(out / "metrics.json", (json.dumps(
        {"rounds": strategy.rounds, "nodes": nodes, "seconds": seconds,
         "last-round": strategy.last_round, "stopped-early": strategy.stopped,
         "partition-names": dict(enumerate(strategy.partition_names)),
         "refused-at-hello": {str(n): why for n, why in strategy.refused_at_hello.items()},
         # data rows task.skip-invalid-rows skipped, per file the server read
         "skipped-rows": dict(SKIPPED_ROWS),
         **(progress or {})},
        indent=2) + "\n").encode())
    adapters = out / "adapters"
    adapters.mkdir(exist_ok=True)
    current = {f"partition-{p}.safetensors" for p in strategy.members}
    for stale in adapters.glob("partition-*.safetensors"):  # an earlier run's, not this one's
        if stale.name not in current:
            stale.unlink()
    for session in strategy.members.values():
        path = adapters / f"partition-{session.partition_id}.safetensors"
        _replace(path, encode_adapter_state(session.adapters))
    plot_learning_curve(strategy.rounds, out / "learning_curve.png")
    log.debug("results in %s", out.resolve())
    return out


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def plot_learning_curve(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # language models: held-out perplexity says more than next-token accuracy
    metric = "perplexity" if any("perplexity-mean" in r for r in rounds) else "accuracy"
    evaluated = [r for r in rounds if f"{metric}-mean" in r]
    trained = [r for r in rounds if "train-loss" in r]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    acc_ax.errorbar([r["round"] for r in evaluated], [r[f"{metric}-mean"] for r in evaluated],
                    yerr=[r[f"{metric}-std"] for r in evaluated], marker="o", capsize=3)
    acc_ax.set(xlabel="round", ylabel=f"held-out {metric}", title=f"held-out {metric}")
    loss_ax.plot([r["round"] for r in trained], [r["train-loss"] for r in trained], marker="o")
    loss_ax.set(xlabel="round", ylabel="mean client loss", title="training loss")
    fig.tight_layout()
    fig.savefig(path.with_name(f".{path.name}.tmp.png"), dpi=100)
    os.replace(path.with_name(f".{path.name}.tmp.png"), path)
    plt.close(fig)
