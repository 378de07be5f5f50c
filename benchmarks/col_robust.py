"""What each ``strategy.col-aggregate`` costs in accuracy, and what it keeps from one hostile
node: the built-in ``digits`` simulation (cola_fed/simulations/digits.toml: Low Rank rank 8,
AdamW lr 0.02, batch 32, Dirichlet alpha 1.0) in ``col`` mode on 5 nodes over LocalGrid, for
each aggregate and each seed, clean and with partition 4's node sending adapters at
``strategy.max-adapter-norm`` (accepted: they are within it). Reported: the held-out accuracy
and loss of the collaborative model after the last round, mean over the 4 other nodes.

    python -m benchmarks.col_robust [--rounds 60] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from importlib import resources

import numpy as np
import tomllib

from benchmarks.common import write_result
from cola_fed.config import RunConfig, flatten
from cola_fed.federation.adversary import adapter_edit, hostile_node
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.server import build_strategy

RULES = ("mean", "trimmed-mean", "clipped-mean")
NODES, HOSTILE, BOUND = 5, 1004, 1000.0


def at_the_bound(state):
    def scaled(v):
        v = v if float(np.linalg.norm(v)) > 0 else np.ones_like(v)
        return (v * np.float32(0.999 * BOUND / float(np.linalg.norm(v)))).astype(np.float32)
    return {layer: {p: scaled(v) for p, v in ps.items()} for layer, ps in state.items()}


def one_run(rule: str, seed: int, rounds: int, *, hostile: bool) -> dict[str, float]:
    digits = flatten(tomllib.loads(
        resources.files("cola_fed.simulations").joinpath("digits.toml").read_text()))
    config = RunConfig.from_flat({
        **digits, "num-server-rounds": rounds, "task.seed": seed, "edge.graphs": False,
        "strategy.min-available-nodes": 1, "strategy.evaluate-every": rounds,
        "strategy.mode": "col", "strategy.col-aggregate": rule,
        "strategy.max-adapter-norm": BOUND})
    grid = LocalGrid(NODES, handlers={HOSTILE: hostile_node(adapter_edit(at_the_bound))})
    if not hostile:
        grid.disconnect(HOSTILE)
    strategy = build_strategy(config)
    strategy.start(grid, num_rounds=rounds, timeout=3)
    clean = [s.history[-1] for n, s in strategy.sessions.items() if n != HOSTILE]
    return {"accuracy": statistics.fmean(h["accuracy"] for h in clean),
            "loss": statistics.fmean(h["loss"] for h in clean)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    logging.getLogger("cola_fed").setLevel(logging.CRITICAL)
    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    started, results = time.perf_counter(), {}
    for rule in RULES:
        for hostile in (False, True):
            runs = [one_run(rule, seed, args.rounds, hostile=hostile) for seed in args.seeds]
            key = f"{rule}, {'one node at the bound' if hostile else 'clean'}"
            results[key] = {m: statistics.fmean(r[m] for r in runs) for m in runs[0]}
            results[key]["runs"] = runs
            print(f"{key:40s} accuracy {results[key]['accuracy']:.3f}  "
                  f"loss {results[key]['loss']:.4g}", file=sys.stderr, flush=True)
    path = write_result("col_robust", {"rounds": args.rounds, "seeds": args.seeds,
                                       "nodes": NODES, "seconds": time.perf_counter() - started,
                                       "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
