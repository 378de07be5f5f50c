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
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Median, spread and every time of each variant's wall time, run round-robin so noise
    hits all alike.

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before each clock start and before
    each clock stop, so that an accelerator's queued work is inside the timing it belongs to.
    """
    wait = synchronize or (lambda: None)
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            wait()
            start = time.perf_counter()
            run()
            wait()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
               "repeats": len(ts), "times_s": ts}
        for name, ts in times.items()
    }


def paired_ratio(times: dict[str, dict[str, Any]], numerator: str, denominator: str) -> float:
    """The median over rounds of ``numerator``'s time over ``denominator``'s in the same round
    of :func:`interleaved_medians`: steadier than a ratio of medians when the machine's load
    drifts, as the two runs of a round are moments apart."""
    pairs = zip(times[numerator]["times_s"], times[denominator]["times_s"])
    return statistics.median(a / b for a, b in pairs)


def reset_peak_rss() -> None:
    """Reset this process's peak resident set size (Linux ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def machine(device: str | None = None) -> dict[str, Any]:
    """Where a result was measured: platform, versions, threads, and the GPU if ``device`` is
    a CUDA one."""
    import os

    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "device": device or "cpu",
    }
    if device and device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30,
                 "cuda": torch.version.cuda}
    return info


def write_result(name: str, result: dict[str, Any], device: str | None = None) -> Path:
    """Write ``result`` with the machine's description to ``benchmarks/results/NAME.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine(device), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
