"""Run an experiment: every arm on every seed and partition, results written as they come.

The learning rate is chosen once, before any arm runs: each rate of ``lr-sweep`` trains arm
``peft-central`` (the baseline everyone knows) on the first seed and partition, and the rate with
the best final test accuracy (lowest loss where a task has no accuracy) is applied identically
to every arm. No arm is ever tuned on its own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cola_fed.experiments.cola_arms import ArmResult, cola_central, cola_federated
from cola_fed.experiments.config import ExperimentConfig

log = logging.getLogger("cola_fed")

#: ``arm -> run(flat run config, nodes)``
ArmRunner = Callable[[dict[str, Any], int], ArmResult]


def _lora_arm(name: str) -> ArmRunner:
    """Arm ``name`` of :mod:`cola_fed.experiments.lora_arms`, imported when it runs (it needs
    PEFT)."""

    def run(flat: dict[str, Any], nodes: int) -> ArmResult:
        from cola_fed.experiments import lora_arms

        return getattr(lora_arms, name)(flat, nodes)

    return run


ARM_RUNNERS: dict[str, ArmRunner] = {
    "peft-central": _lora_arm("peft_central"),
    "cola-central": cola_central,
    "cola-col": lambda flat, nodes: cola_federated(flat, nodes, "col"),
    "cola-unmerged": lambda flat, nodes: cola_federated(flat, nodes, "unmerged"),
    "fedavg-lora": _lora_arm("fedavg_lora"),
    "local-lora": _lora_arm("local_lora"),
}


def final_score(result: ArmResult) -> float:
    """Higher is better: the last test accuracy, else minus the last test loss."""
    last = result.curve[-1]
    return last["accuracy"] if "accuracy" in last else -last["loss"]


def choose_lr(config: ExperimentConfig, say: Callable[[str], None]) -> tuple[float, list]:
    """The learning rate every arm uses, and the sweep's record."""
    if not config.lr_sweep:
        return float(config.arm_config(config.seeds[0], config.partitions[0])
                     .get("optimizer.lr", 1e-3)), []
    sweep = []
    for lr in config.lr_sweep:
        say(f"lr sweep: peft-central at lr {lr:g} (seed {config.seeds[0]}, "
            f"{config.partitions[0]})")
        result = ARM_RUNNERS["peft-central"](
            config.arm_config(config.seeds[0], config.partitions[0], lr), config.nodes)
        sweep.append({"lr": lr, "score": final_score(result), "curve": result.curve})
    best = max(sweep, key=lambda s: s["score"] if math.isfinite(s["score"]) else -math.inf)
    say(f"lr sweep: {best['lr']:g} is applied to every arm")
    return best["lr"], sweep


def run_experiment(config: ExperimentConfig, out: Path, *,
                   say: Callable[[str], None] = print,
                   progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Run ``config``; write ``out/NAME.json`` after every arm (a run cut short keeps what
    finished) and return its contents. ``progress(done, total, running)`` is told of each
    run (arm, seed, partition) as it starts and ends (a progress bar)."""
    from cola_fed.config import RunConfig
    from cola_fed.experiments.report import summarize
    from cola_fed.federation.preflight import preflight

    # the task, data and targets every arm shares, checked before any arm starts
    preflight(RunConfig.from_flat(config.arm_config(config.seeds[0], config.partitions[0])),
              config.nodes)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{config.name}.json"
    started = time.perf_counter()
    lr, sweep = choose_lr(config, say)
    results: dict[str, Any] = {"experiment": config.to_dict(), "machine": machine(), "lr": lr,
                               "lr-sweep": sweep, "runs": []}
    jobs = [(seed, partition, arm) for seed in config.seeds for partition in config.partitions
            for arm in config.arms]
    for i, (seed, partition, arm) in enumerate(jobs, 1):
        say(f"[{i}/{len(jobs)}] {arm}, seed {seed}, {partition} ...")
        if progress is not None:
            progress(i - 1, len(jobs), f"{arm}, seed {seed}, {partition}")
        tick = time.perf_counter()
        result = ARM_RUNNERS[arm](config.arm_config(seed, partition, lr), config.nodes)
        if not result.curve:
            raise RuntimeError(f"arm {arm} (seed {seed}, {partition}) was never evaluated"
                               + (f"; {path} keeps the arms that finished" if i > 1 else ""))
        last = result.curve[-1]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "round")
        say(f"[{i}/{len(jobs)}] {arm}, seed {seed}, {partition}: {shown} "
            f"({time.perf_counter() - tick:.0f} s)")
        results["runs"].append({"arm": arm, "seed": seed, "partition": partition,
                                **result.to_dict()})
        results["seconds"] = time.perf_counter() - started
        results["summary"] = summarize(results)
        path.write_text(json.dumps(results, indent=1) + "\n")
        if progress is not None:
            progress(i, len(jobs), "")
    if config.cost_rounds:
        add_costs(config, results, say=say)
        path.write_text(json.dumps(results, indent=1) + "\n")
    say(f"wrote {path}")
    return results


def machine() -> dict[str, Any]:
    """The machine the figures were measured on, as the results page states it."""
    import torch

    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return {"cpus": len(os.sched_getaffinity(0)), "memory-gib": pages * page_size / 2**30,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "torch-threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform()}


def add_costs(config: ExperimentConfig, results: dict[str, Any], *,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure what each role costs (:mod:`cola_fed.experiments.costs`) at the first seed and
    partition and the run's learning rate, into ``results["costs"]``."""
    from cola_fed.experiments.costs import measure_costs

    flat = config.arm_config(config.seeds[0], config.partitions[0], results["lr"])
    rounds = config.cost_rounds or ExperimentConfig.cost_rounds  # --costs-only of a file with 0
    results["costs"] = {**measure_costs(flat, config.nodes, rounds, say=say),
                        "machine": machine()}
    return results


__all__ = ["ARM_RUNNERS", "add_costs", "choose_lr", "final_score", "machine", "run_experiment"]
