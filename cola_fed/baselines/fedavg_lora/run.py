"""Run the FedAvg-LoRA baseline in this process, and its no-federation counterpart.

What: :func:`run_fedavg_lora` runs the real ServerApp/ClientApp pair
(:mod:`~cola_fed.baselines.fedavg_lora.server_app`,
:mod:`~cola_fed.baselines.fedavg_lora.client_app`) over a
:class:`~cola_fed.federation.local_grid.LocalGrid` (every node's ClientApp is called in this
process; no SuperLink, no Ray); :func:`run_local_lora` trains each node's LoRA on its own
partition alone for as many steps, the "why federate at all" reference.

Why: the evidence that ColA is worth it needs the baselines on the same task, the same
partitions, the same seeded batch streams, the same initial adapters and the same optimizer,
configured by the same flat run config (``cola_fed.config.RunConfig.from_flat`` keys plus
``local-steps``, ``optimizer-state``, ``results-file``); both return one JSON-able shape::

    {"method": "fedavg-lora" | "local-lora",
     "rounds": [{"round", "server-accuracy", "server-loss", ..., "train-loss",
                 "bytes-down-per-node", "bytes-up-per-node", "seconds", ...}, ...],
     "seconds", "config", "num-nodes", "local-steps", "lora-state-bytes",
     "trainable-params", "model-bytes"}

Round 0 is the initial model. ``train-loss`` is the num-examples-weighted mean over nodes in
both. In ``local-lora`` rounds the ``server-*`` metrics are the mean over nodes, with ``-std``,
``-min`` and ``-max`` beside them, each node's figures are under ``per-node``, and nothing
travels. In ``fedavg-lora`` rounds ``per-node`` holds each reply's MetricRecord.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict

from cola_fed.baselines.fedavg_lora import lora
from cola_fed.baselines.fedavg_lora.options import adapter_seed, batch_seed, parse_run_config
from cola_fed.tasks.base import ClientData

_run_ids = itertools.count(1)


def run_fedavg_lora(run_config: dict[str, Any], *, num_nodes: int,
                    local_steps: int = 1) -> dict[str, Any]:
    """FedAvg over PEFT LoRA with ``num_nodes`` nodes (partitions ``0 .. num_nodes - 1``),
    ``local_steps`` optimizer steps per node and round, for ``num-server-rounds`` rounds.

    Flower's FedAvg drives the rounds from the ServerApp; each node's ClientApp gets the run
    config and its ``partition-id``/``num-partitions``, as in Flower's simulation.
    """
    return run_fedavg_lora_with_weights(run_config, num_nodes=num_nodes,
                                        local_steps=local_steps)[0]


def run_fedavg_lora_with_weights(
    run_config: dict[str, Any], *, num_nodes: int, local_steps: int = 1,
    reply_filter: Callable[[int, Message], Message | None] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """:func:`run_fedavg_lora`, also returning the final global LoRA weights; ``reply_filter``
    (``LocalGrid``'s) sees, and may change or drop, every node's reply on its way back."""
    from cola_fed.baselines.fedavg_lora import client_app, server_app
    from cola_fed.federation.local_grid import LocalGrid

    flat = {**run_config, "local-steps": local_steps,
            "strategy.min-available-nodes": num_nodes}
    parse_run_config(flat)  # a bad key fails here, not inside a node
    grid = LocalGrid(num_nodes, run_id=next(_run_ids), client_app=client_app.app,
                     reply_filter=reply_filter, keep_delivered=False)
    for context in grid.contexts.values():
        context.run_config = dict(flat)
    server = Context(grid.run_id, 1, {}, RecordDict(), dict(flat))
    started = time.perf_counter()
    server_app.app(grid, server)
    results = json.loads(server.state[server_app.RESULTS]["json"])
    results.update({"seconds": time.perf_counter() - started, "num-nodes": num_nodes})
    weights = {k: v.numpy() for k, v in server.state[server_app.FINAL_ARRAYS].items()}
    return results, weights


@dataclass
class _Node:
    """One node of a local-only run: its data, batch stream, weights and optimizer state."""

    partition_id: int
    data: ClientData
    stream: Any
    weights: dict
    optimizer: dict = field(default_factory=dict)
    steps: int = 0


def run_local_lora(run_config: dict[str, Any], *, num_nodes: int,
                   local_steps: int = 1) -> dict[str, Any]:
    """Each of ``num_nodes`` nodes trains its own LoRA on its own partition, alone, for
    ``num-server-rounds`` x ``local_steps`` steps: from ColA's initial adapters of its
    partition, on ColA's batch stream of its partition, keeping its optimizer state (or not:
    ``optimizer-state``). Every ``strategy.evaluate-every`` rounds each node's model is scored
    on the server-held test set; a round records the mean over nodes, its spread and each node.
    """
    flat = {**run_config, "local-steps": local_steps}
    config, options = parse_run_config(flat)
    task = lora.get_task_of(config)
    task.check()
    model = lora.build_lora_model(config, task=task)
    test = task.server_test_batches() if config.task.server_test_size else []
    spec = config.optimizer.spec()
    keep = options.optimizer_state == "keep"
    started = time.perf_counter()
    nodes = []
    for partition_id in range(num_nodes):
        data = task.client_data(partition_id, num_nodes)
        weights = lora.lora_from_cola(model, lora.initial_adapters(
            model.cola_targets, config, adapter_seed(config, partition_id)))
        nodes.append(_Node(partition_id, data, data.batches(config.task.batch_size,
                                                            batch_seed(config, partition_id)),
                           weights))
    rounds = []
    every, last_round = config.strategy.evaluate_every, config.num_server_rounds
    for server_round in range(last_round + 1):
        mark = time.perf_counter()
        per_node: list[dict[str, Any]] = [{"partition": n.partition_id} for n in nodes]
        if server_round:
            for node, record in zip(nodes, per_node):
                lora.load_lora_state(model, node.weights)
                optimizer = lora.build_optimizer(model, spec)
                if keep and node.optimizer:
                    lora.load_optimizer_state(optimizer, model, node.optimizer)
                losses = lora.train_steps(model, node.stream, spec, local_steps,
                                          optimizer=optimizer, first_step=node.steps + 1)
                node.steps += local_steps
                node.weights = lora.lora_state(model)
                node.optimizer = lora.optimizer_state(optimizer, model) if keep else {}
                record["train-loss"] = statistics.fmean(losses)
                record["num-examples"] = node.data.num_examples
        entry: dict[str, Any] = {"round": server_round, "nodes": len(nodes),
                                 "bytes-down-per-node": 0, "bytes-up-per-node": 0}
        if server_round:
            total = sum(r["num-examples"] for r in per_node)  # weighted as FedAvg's
            entry["train-loss"] = sum(r["train-loss"] * r["num-examples"] for r in per_node) / total
            entry["examples-seen"] = len(nodes) * local_steps * config.task.batch_size
        entry["seconds"] = time.perf_counter() - mark
        if test and (server_round % every == 0 or server_round == last_round):
            for node, record in zip(nodes, per_node):
                lora.load_lora_state(model, node.weights)
                record.update({f"server-{k}": v
                               for k, v in lora.evaluate(model, task, test).items()})
            for name in dict.fromkeys(k for r in per_node for k in r if k.startswith("server-")):
                entry.update(_spread(name, [r.get(name, math.nan) for r in per_node]))
        entry["eval-seconds"] = time.perf_counter() - mark - entry["seconds"]
        entry["per-node"] = per_node
        rounds.append(entry)
    return {
        "method": "local-lora",
        "rounds": rounds,
        "seconds": time.perf_counter() - started,
        "config": flat,
        "num-nodes": num_nodes,
        "local-steps": local_steps,
        "lora-state-bytes": sum(v.nbytes for v in nodes[0].weights.values()),
        "trainable-params": sum(p.numel() for _, p in lora.trainable(model)),
        "model-bytes": lora.model_bytes(model),
    }


def _spread(name: str, values: list[float]) -> dict[str, float]:
    """``name`` (the mean over nodes), ``name-std``, ``-min`` and ``-max``, of the finite
    values (a node whose model blew up is left out, as in ColA's figures)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return {}
    return {name: statistics.fmean(values), f"{name}-std": statistics.pstdev(values),
            f"{name}-min": min(values), f"{name}-max": max(values)}
