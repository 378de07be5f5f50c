"""Timing, memory and result-writing helpers shared by the benchmarks."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def interleaved_medians(
    variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Median and spread of each variant's wall time, run round-robin so noise hits all alike."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
               "repeats": len(ts)}
        for name, ts in times.items()
    }


def reset_peak_rss() -> None:
    """Reset this process's peak resident set size (Linux ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_result(name: str, result: dict[str, Any]) -> Path:
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
