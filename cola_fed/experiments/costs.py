"""What each role costs on an experiment's task: step time and peak memory of the ColA server,
of a ColA node on PyTorch and on ONNX Runtime, and of a FedAvg-LoRA client that holds the base
model.

Peak memory is a process's own, so every role runs in a fresh process: one for a short ColA
run on Flower's message path (the real strategy in that process, each node in a process of its
own: even partitions on the ONNX backend with PyTorch hidden, odd ones on PyTorch), and one for
the FedAvg-LoRA client's training steps, on the batches node 0 draws in arm (D). Both use the
experiment's run config at its first seed and partition and the learning rate every arm uses.

    python -m cola_fed.experiments.costs < spec.json   # what measure_costs runs, per role

Times are medians over the rounds after the first (which pays for imports, graph loading and
warm-up).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

#: the longest a role's process may take before it is stopped and reported
TIMEOUT_S = 3600.0
#: the fewest rounds of a cost run: the first is warm-up, the median is of the rest
MIN_ROUNDS = 3
#: the roles of the cost table, in its order, with what their time measures
ROLES = {
    "server": "ColA server: its own work in one round of all nodes (passes, wire forms, "
              "sealing; opening, checking and applying the replies)",
    "torch-node": "ColA node, PyTorch: one TRAIN message (open, step, reply)",
    "onnx-node": "ColA node, ONNX Runtime, no PyTorch: one TRAIN message (open, step, reply)",
    "fedavg-lora-client": "FedAvg-LoRA client, base model held: one LoRA training step",
}


def measure_costs(flat: dict[str, Any], nodes: int, rounds: int, *,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
    """Each role of :data:`ROLES`: ``step-seconds`` (median), ``peak-rss-mb`` (its process's
    peak) and, for the server, ``round-seconds``; a role that could not run has ``error``
    instead, and the others are still measured."""
    from cola_fed.config import RunConfig

    costs: dict[str, Any] = {"rounds": rounds, "nodes": nodes,
                             "mode": RunConfig.from_flat(flat).strategy.mode}
    say(f"costs: a {rounds}-round ColA run with every node in a process of its own")
    costs.update(_in_fresh_process("federation", flat, nodes, rounds,
                                   keys=("server", "torch-node", "onnx-node")))
    say("costs: FedAvg-LoRA client steps in a process of their own")
    costs.update(_in_fresh_process("fedavg-lora-client", flat, nodes, rounds,
                                   keys=("fedavg-lora-client",)))
    for role in ROLES:
        shown = costs[role].get("error") or (f"{costs[role]['step-seconds'] * 1e3:.0f} ms, "
                                             f"{costs[role]['peak-rss-mb']:.0f} MB")
        say(f"costs: {role}: {shown}")
    return costs


def _in_fresh_process(role: str, flat: dict[str, Any], nodes: int, rounds: int, *,
                      keys: tuple[str, ...], timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """Run ``role`` in a fresh process: its figures, or for each of ``keys`` the error that
    ended it (the last lines it wrote)."""
    spec = json.dumps({"role": role, "flat": flat, "nodes": nodes, "rounds": rounds})
    try:
        done = subprocess.run([sys.executable, "-m", "cola_fed.experiments.costs"], input=spec,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        reason = f"{role} process took more than {timeout:.0f} s and was stopped"
    else:
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        tail = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        reason = (f"{role} process failed: " + " / ".join(line.strip() for line in tail)
                  if tail else f"{role} process exited with {done.returncode}")
    return {key: {"error": reason} for key in keys}


def federation_costs(flat: dict[str, Any], nodes: int, rounds: int) -> dict[str, Any]:
    """The server's and each backend's node costs over a ``rounds``-round run; call in a fresh
    process (its peak is the server's)."""
    from cola_fed.config import RunConfig
    from cola_fed.experiments.cola_arms import simulated_nodes
    from cola_fed.federation.local_grid import LocalGrid, NodeProcess
    from cola_fed.federation.node_process import peak_rss_mb
    from cola_fed.federation.server import build_strategy

    config = RunConfig.from_flat({
        **flat, "num-server-rounds": rounds, "strategy.evaluate-every": rounds,
        "strategy.min-available-nodes": nodes, "strategy.min-train-nodes": nodes,
        "strategy.fraction-train": 1.0, "checkpoint.every": 0})
    strategy = build_strategy(config)
    backends = {1000 + i: "onnx" if i % 2 == 0 else "torch" for i in range(nodes)}
    processes: dict[int, NodeProcess] = {}
    with simulated_nodes(flat.get("task.data-path"),
                         skip_invalid_rows=config.task.skip_invalid_rows) as env, \
            tempfile.TemporaryDirectory(prefix="cola-costs-") as cache:
        env["COLA_FED_CACHE"] = cache  # the nodes' graphs and task files, gone with the run
        try:
            for node, backend in backends.items():
                processes[node] = NodeProcess(without_torch=backend == "onnx", env=env)
            grid = LocalGrid(nodes, processes=processes, keep_delivered=False)
            for node, backend in backends.items():
                grid.contexts[node].node_config["backend"] = backend
            strategy.start(grid, num_rounds=rounds, timeout=config.strategy.timeout)
        finally:
            for process in processes.values():
                process.close()
    if strategy.stopped:
        raise RuntimeError(f"the cost run stopped early: {strategy.stopped}")
    trained = [r for r in strategy.rounds if r.get("nodes")]
    costs: dict[str, Any] = {"server": {
        "step-seconds": _steady([r["server-seconds"] for r in trained]),
        "round-seconds": _steady([r["seconds"] for r in trained]),
        "peak-rss-mb": peak_rss_mb()}}
    for backend in ("torch", "onnx"):
        mine = [n for n, b in backends.items() if b == backend]
        if not mine:
            costs[f"{backend}-node"] = {"error": "no node of this backend (one node in all)"}
            continue
        for node in mine:
            session = strategy.sessions.get(node)
            if session is None or session.backend != backend or session.rounds_trained != rounds:
                why = session.last_error if session is not None else "it never joined"
                raise RuntimeError(f"node {node} did not train every round on {backend}: {why}")
        # per node: the hello, then one TRAIN message per round; medians over every node
        rounds_of = [processes[n].stats[1:] for n in mine]
        costs[f"{backend}-node"] = {
            "step-seconds": statistics.median(
                s["seconds"] for stats in rounds_of for s in (stats[1:] or stats)),
            "peak-rss-mb": max(s["peak_rss_mb"] for n in mine for s in processes[n].stats),
            "message-mb": max(s["message_bytes"] for stats in rounds_of for s in stats) / 1e6}
    return costs


def fedavg_lora_client_costs(flat: dict[str, Any], nodes: int, rounds: int) -> dict[str, Any]:
    """One FedAvg-LoRA client: the task's model with PEFT LoRA, ``rounds`` training steps on
    node 0's batches; call in a fresh process (its peak is the client's)."""
    from cola_fed.baselines.fedavg_lora import lora
    from cola_fed.baselines.fedavg_lora.options import adapter_seed, batch_seed, parse_run_config
    from cola_fed.federation.node_process import peak_rss_mb

    config, _ = parse_run_config(flat)
    task = lora.get_task_of(config)
    model = lora.build_lora_model(config, task=task, seed=adapter_seed(config, 0))
    stream = task.client_data(0, nodes).batches(config.task.batch_size,
                                                seed=batch_seed(config, 0))
    spec = config.optimizer.spec()
    optimizer = lora.build_optimizer(model, spec)
    seconds = []
    for step in range(1, rounds + 1):
        batch = next(stream)
        tick = time.perf_counter()
        lora.train_steps(model, [batch], spec, 1, optimizer=optimizer, first_step=step)
        seconds.append(time.perf_counter() - tick)
    return {"fedavg-lora-client": {"step-seconds": _steady(seconds),
                                   "peak-rss-mb": peak_rss_mb()}}


def _steady(values: list[float]) -> float:
    """The median after the first value (warm-up), or the only value."""
    return statistics.median(values[1:] or values)


__all__ = ["ROLES", "fedavg_lora_client_costs", "federation_costs", "measure_costs"]


def main() -> None:
    spec = json.loads(sys.stdin.read())
    role = {"federation": federation_costs, "fedavg-lora-client": fedavg_lora_client_costs}
    print(json.dumps(role[spec["role"]](spec["flat"], spec["nodes"], spec["rounds"])))


if __name__ == "__main__":
    main()

