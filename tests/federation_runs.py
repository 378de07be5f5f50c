"""A small digits federation over LocalGrid, shared by the federation tests.

Run as a script, it is a server process of its own (for the kill-and-resume tests):
``python tests/federation_runs.py OUT RUN_ID NODES ROUNDS DELAY [--resume]``, with every node's
state in ``OUT/node-state/partition-<i>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cola_fed.config import RunConfig
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.server import build_strategy, run_server

DIGITS = {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 2,
          "optimizer.lr": 0.01, "strategy.min-available-nodes": 1}


def run(overrides: dict, nodes: int, rounds: int, **grid_options):
    """Run ``rounds`` rounds of the digits task on ``nodes`` nodes; (strategy, grid)."""
    config = RunConfig.from_flat({**DIGITS, **overrides, "num-server-rounds": rounds})
    strategy = build_strategy(config)
    grid = LocalGrid(nodes, **grid_options)
    strategy.start(grid, num_rounds=rounds, timeout=3)
    return strategy, grid


def run_with_state(out: Path, run_id: int, nodes: int, rounds: int, *, delay: float = 0.0,
                   resume: bool = False, overrides: dict | None = None, **grid_options):
    """A run that writes results and checkpoints to ``out``, its nodes keeping their state in
    ``out/node-state``; (strategy, grid)."""
    grid = LocalGrid(nodes, run_id=run_id, delays={1000 + i: delay for i in range(nodes)},
                     **grid_options)
    for i, context in enumerate(grid.contexts.values()):
        context.node_config["state-dir"] = str(out / "node-state" / f"partition-{i}")
    config = {**DIGITS, "num-server-rounds": rounds, "output-dir": str(out),
              "checkpoint.resume": resume, "strategy.timeout": 30.0, **(overrides or {})}
    return run_server(grid, config), grid


if __name__ == "__main__":
    out, run_id, nodes, rounds, delay = sys.argv[1:6]
    run_with_state(Path(out), int(run_id), int(nodes), int(rounds), delay=float(delay),
                   resume="--resume" in sys.argv)
