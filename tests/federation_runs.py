"""A small digits federation over LocalGrid, shared by the federation tests."""

from __future__ import annotations

from cola_fed.config import RunConfig
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.server import build_strategy

DIGITS = {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 2,
          "optimizer.lr": 0.01, "strategy.min-available-nodes": 1}


def run(overrides: dict, nodes: int, rounds: int, **grid_options):
    """Run ``rounds`` rounds of the digits task on ``nodes`` nodes; (strategy, grid)."""
    config = RunConfig.from_flat({**DIGITS, **overrides, "num-server-rounds": rounds})
    strategy = build_strategy(config)
    grid = LocalGrid(nodes, **grid_options)
    strategy.start(grid, num_rounds=rounds, timeout=30)
    return strategy, grid
