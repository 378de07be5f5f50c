"""The FedAvg-LoRA ServerApp: Flower's own FedAvg over the clients' LoRA weights.

What: a Flower ``ServerApp`` whose main runs ``flwr.serverapp.strategy.FedAvg`` (weighted by
``num-examples``) from the seeded initial LoRA state for ``num-server-rounds`` rounds, scores
the global model on the task's server-held test set through FedAvg's ``evaluate_fn`` hook, and
records per round the test metrics, the clients' aggregated training metrics, the bytes each
node received and sent (the ArrayRecords' ``count_bytes``) and the wall time.

Why: it is the baseline a Flower user would otherwise pick, so it uses Flower's strategy as it
is (no subclass) and hooks only where FedAvg offers hooks: ``train_metrics_aggr_fn`` sees every
reply (bytes up, per-node metrics) and ``evaluate_fn`` sees every global model. The global
model starts from ColA's initial adapters of partition 0 (``task.seed``), the same start as
ColA's node 0. Nodes score nothing (``fraction_evaluate = 0``): the server-held test set is
the common yardstick of both arms.

The results land in the server context's state (``RESULTS``, JSON; the final global weights
under ``FINAL_ARRAYS``) and, with ``results-file``, in that file.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from cola_fed.baselines.fedavg_lora import lora
from cola_fed.baselines.fedavg_lora.options import adapter_seed, parse_run_config

log = logging.getLogger("cola_fed")

#: server context.state keys: the results (a ConfigRecord with one JSON string) and the final
#: global LoRA weights
RESULTS = "fedavg-lora.results"
FINAL_ARRAYS = "fedavg-lora.arrays"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg-LoRA on ``grid`` as the run config says; keep the results in
    ``context.state`` (and in ``results-file`` when set)."""
    results, arrays = serve(grid, dict(context.run_config))
    context.state[RESULTS] = ConfigRecord({"json": json.dumps(results)})
    context.state[FINAL_ARRAYS] = arrays
    _, options = parse_run_config(dict(context.run_config))
    if options.results_file:
        path = Path(options.results_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        log.info("FedAvg-LoRA results in %s", path.resolve())


def serve(grid: Grid, run_config: dict[str, Any]) -> tuple[dict[str, Any], ArrayRecord]:
    """FedAvg over LoRA weights for ``num-server-rounds`` rounds: the results (JSON-able) and
    the final global weights."""
    config, options = parse_run_config(run_config)
    task = lora.get_task_of(config)
    task.check()
    model = lora.build_lora_model(config, seed=adapter_seed(config, 0), task=task)
    test = task.server_test_batches() if config.task.server_test_size else []
    state = lora.lora_state(model)
    initial = ArrayRecord(_arrays(state))
    every, last_round = config.strategy.evaluate_every, config.num_server_rounds
    rounds: list[dict[str, Any]] = []
    this_round: dict[str, Any] = {}  # what the train hook saw of the round under way
    clock = {"mark": time.perf_counter(), "down": 0}

    def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
        """FedAvg's own weighted mean of the replies' metrics, and what they cost on the wire."""
        metrics = aggregate_metricrecords(records, weight_key)
        metrics.pop("partition-id", None)  # an identity, not a quantity to average
        up = [sum(r.count_bytes() for r in record.array_records.values()) for record in records]
        per_node = [dict(next(iter(record.metric_records.values()))) for record in records]
        this_round.update({"nodes": len(records), "bytes-up-per-node": statistics.fmean(up),
                           "num-examples": sum(m[weight_key] for m in per_node),
                           "per-node": per_node})
        return metrics

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Score the global model on the server-held test set; close the round's record."""
        now = time.perf_counter()
        entry: dict[str, Any] = {"round": server_round, "seconds": now - clock["mark"],
                                 "bytes-down-per-node": clock["down"] if server_round else 0,
                                 "bytes-up-per-node": 0, "nodes": 0}
        entry.update(this_round)
        this_round.clear()
        if server_round and entry["nodes"]:
            entry.update(_train_metrics(entry["per-node"]))
        scores: dict[str, float] = {}
        if test and (server_round % every == 0 or server_round == last_round):
            lora.load_lora_state(model, {k: v.numpy() for k, v in arrays.items()})
            scores = lora.evaluate(model, task, test)
            if config.task.rouge_prompts and server_round in (0, last_round):
                scores["rouge-l"] = task.rouge_l(lambda batch: lora.predict(model, batch))
            entry.update({f"server-{k}": v for k, v in scores.items()})
        entry["eval-seconds"] = time.perf_counter() - now
        rounds.append(entry)
        _progress(entry)
        clock["down"] = arrays.count_bytes()  # what every node receives next round
        clock["mark"] = time.perf_counter()
        finite = {k: float(v) for k, v in scores.items() if math.isfinite(v)}
        return MetricRecord(finite) if finite else None

    strategy = FedAvg(
        fraction_train=config.strategy.fraction_train, fraction_evaluate=0.0,
        min_train_nodes=config.strategy.min_train_nodes,
        min_available_nodes=config.strategy.min_available_nodes,
        weighted_by_key="num-examples", train_metrics_aggr_fn=aggregate_train_metrics,
    )
    started = clock["mark"] = time.perf_counter()
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=config.num_server_rounds,
        timeout=config.strategy.timeout,
        train_config=ConfigRecord({"local-steps": options.local_steps,
                                   "optimizer-state": options.optimizer_state}),
        evaluate_fn=evaluate_fn,
    )
    results = {
        "method": "fedavg-lora",
        "rounds": rounds,
        "seconds": time.perf_counter() - started,
        "config": dict(run_config),
        "local-steps": options.local_steps,
        "lora-state-bytes": sum(v.nbytes for v in state.values()),
        "trainable-params": sum(p.numel() for _, p in lora.trainable(model)),
        "model-bytes": lora.model_bytes(model),
    }
    final = result.arrays if result.arrays is not None and len(result.arrays) else initial
    return results, final


def _arrays(state: dict) -> dict:
    from flwr.app import Array

    return {k: Array(v) for k, v in state.items()}


def _train_metrics(per_node: list[dict[str, Any]]) -> dict[str, Any]:
    """The round's client metrics: weighted by ``num-examples`` as FedAvg weighs the weights
    (losses), or the spread over nodes (times, memory)."""
    total = sum(m["num-examples"] for m in per_node)
    out: dict[str, Any] = {
        "train-loss": sum(m["train-loss"] * m["num-examples"] for m in per_node) / total,
        "examples-seen": sum(m["examples-seen"] for m in per_node),
    }
    for key in ("step-seconds", "train-seconds", "peak-rss-bytes", "model-bytes"):
        values = [m[key] for m in per_node]
        out[f"client-{key}-mean"] = statistics.fmean(values)
        out[f"client-{key}-max"] = max(values)
    return out


def _progress(entry: dict[str, Any]) -> None:
    parts = [f"server test {name} {entry[f'server-{name}']:.4g}"
             for name in ("accuracy", "loss", "perplexity") if f"server-{name}" in entry]
    if "train-loss" in entry:
        parts.append(f"train loss {entry['train-loss']:.4g}")
    if entry["round"]:
        parts.append(f"{entry['nodes']} nodes, {entry['bytes-down-per-node'] / 1e6:.3g} MB down "
                     f"and {entry['bytes-up-per-node'] / 1e6:.3g} MB up per node")
    log.info("FedAvg-LoRA round %d: %s", entry["round"], "; ".join(parts) or "no scores")
