"""The PEFT LoRA arms: (A) central on the pooled batches, (D) FedAvg-LoRA on Flower
(:mod:`cola_fed.baselines.fedavg_lora`: a real ServerApp/ClientApp pair, every client holding
the base model) and (E) each node's LoRA on its own partition alone."""

from __future__ import annotations

import time
from typing import Any

from cola_fed.experiments.cola_arms import ArmResult, peak_rss_mb, pooled_streams


def peft_central(flat: dict[str, Any], nodes: int) -> ArmResult:
    """(A) PEFT LoRA trained centrally on the pooled batches, in the order (B) takes them, from
    the same initial adapters (node 0's)."""
    from cola_fed.baselines.fedavg_lora import lora
    from cola_fed.baselines.fedavg_lora.options import adapter_seed, parse_run_config

    config, _ = parse_run_config(flat)
    task = lora.get_task_of(config)
    model = lora.build_lora_model(config, task=task, seed=adapter_seed(config, 0))
    streams = pooled_streams(task, config, nodes)
    spec = config.optimizer.spec()
    optimizer = lora.build_optimizer(model, spec)
    test = task.server_test_batches()
    result = ArmResult()
    started, step, train_s = time.perf_counter(), 0, 0.0
    result.curve.append({"round": 0, **lora.evaluate(model, task, test)})
    for round_ in range(1, config.num_server_rounds + 1):
        for stream in streams:
            tick = time.perf_counter()
            lora.train_steps(model, [next(stream)], spec, 1, optimizer=optimizer,
                             first_step=step + 1)
            train_s += time.perf_counter() - tick
            step += 1
        if round_ % config.strategy.evaluate_every == 0 or round_ == config.num_server_rounds:
            result.curve.append({"round": round_, **lora.evaluate(model, task, test)})
    result.costs = {"seconds": time.perf_counter() - started,
                    "server-seconds": train_s / config.num_server_rounds,
                    "bytes-down": 0.0, "bytes-up": 0.0, "peak-rss-mb": peak_rss_mb()}
    return result


def fedavg_lora(flat: dict[str, Any], nodes: int) -> ArmResult:
    """(D) FedAvg over PEFT LoRA on Flower, one local step per node and round."""
    from cola_fed.baselines.fedavg_lora import run_fedavg_lora

    return _from_baseline(run_fedavg_lora(flat, num_nodes=nodes))


def local_lora(flat: dict[str, Any], nodes: int) -> ArmResult:
    """(E) each node's LoRA on its own partition alone, one step per round."""
    from cola_fed.baselines.fedavg_lora import run_local_lora

    return _from_baseline(run_local_lora(flat, num_nodes=nodes))


def _from_baseline(run: dict[str, Any]) -> ArmResult:
    """A baseline run's rounds as an :class:`ArmResult`."""
    result = ArmResult()
    trained = [r for r in run["rounds"] if r["round"] > 0]
    for record in run["rounds"]:
        point = {"round": record["round"]}
        for name in ("accuracy", "loss", "perplexity"):
            if f"server-{name}" in record:
                point[name] = record[f"server-{name}"]
                if f"server-{name}-std" in record:
                    point[f"{name}-std"] = record[f"server-{name}-std"]
        if len(point) > 1:
            result.curve.append(point)

    def mean(key: str) -> float:
        values = [r[key] for r in trained if key in r]
        return sum(values) / len(values) if values else 0.0

    result.costs = {"seconds": run["seconds"], "bytes-down": mean("bytes-down-per-node"),
                    "bytes-up": mean("bytes-up-per-node"), "round-seconds": mean("seconds"),
                    "client-step-seconds": mean("client-step-seconds-mean"),
                    "peak-rss-mb": peak_rss_mb()}
    return result


__all__ = ["fedavg_lora", "local_lora", "peft_central"]
