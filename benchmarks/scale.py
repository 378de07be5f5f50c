"""Scale: round time and server peak memory against the number of sampled nodes.

Scale points: digits at 8, 32, 128 and 512 nodes and MiniLM-L6 (``text-classification``) at 8,
16, 32 and 64, every node sampled every round, each point in a fresh server process over an
in-process ``LocalGrid`` whose nodes all live in ONE child process (their keys, learners and
data are not the server's memory). The server process reports:

- ``peak_mb``: its peak RSS (Linux ``VmHWM``) over the whole run, set-up and hello included
  (not ``ru_maxrss``: after a vfork-exec it keeps the peak of the process that started it, and
  it cannot be reset after hello);
- ``growth_mb``: its peak RSS during the rounds (the peak is reset after hello) minus its RSS
  after hello;
- ``held_mb``: what the server must hold, summed over ``strategy.members``: adapters, pending
  batches and held-out batches (numpy ``nbytes``);
- the median seconds of the training rounds (``strategy.rounds[i]["seconds"]``, rounds >= 1),
  per sampled node, split into the nodes' share (the child's handlers, with the transport) and
  the server's.

Settings: digits with one-sample batches and one held-out batch (512 partitions of 1,797 images
leave 3 or 4 samples a node), 5 rounds; MiniLM with 8 reviews x 48 tokens a batch, one held-out
batch, 3 rounds; ``strategy.max-server-batch`` 64, evaluation after the last round only, no
checkpoints, no ONNX graphs; the server and the nodes' process one torch thread each (they take
turns; two spinning thread pools on two shared cores slow both several-fold).

Targets: server peak memory at the largest digits point under 2x the 8-node figure plus what it
must hold (``peak(512) - held(512) < 2 * peak(8)``), and round time linear in sampled nodes
(seconds per node at the largest point within 1.5x of the smallest; least-squares lines of the
round and of the server's share alone are fitted too). Last, a real ``flwr run`` local
simulation (Ray) of digits with 64 nodes x 5 rounds on this machine's cores: its wall time and
per-round seconds (if it fails, smaller ones are tried, and what happened is kept).

Allocator check: glibc keeps freed heap memory (its mmap threshold rises after large buffers
are freed), which shows as RSS growth that is no one's data. The smallest and largest MiniLM
points run again with the threshold fixed (``MALLOC_MMAP_THRESHOLD_``): the growth between them
must then be the extra held bytes, twice (old and new adapters during a round).

The child process keeps each node's Flower ``Context`` itself (``NodeHost``): the stock
``NodeProcess`` sends every node's ``context.state`` (its learner states) back to the server
process with every reply, which would put the nodes' memory on the server's side; what it would
hold is reported as ``node_state_mb``. The child caches every node's data partition, as each
node's own process would.

    python -m benchmarks.scale [--quick] [--no-simulation] [--no-allocator-check]
                               [--nodes N ...] [--time-budget SECONDS] [--output NAME]
    python -m benchmarks.scale --point digits 128   (one scale point; prints its JSON)

Everything here runs on CPUs: the strategy builds its engine on the CPU, so on a GPU machine
the benchmark runs unchanged and leaves the GPU alone (``benchmarks/gpu.sh`` runs it there
with ``--quick`` and a time budget).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cola_fed.federation.local_grid import NodeProcess

os.environ.setdefault("HF_HUB_OFFLINE", "1")

POINTS = {"digits": (8, 32, 128, 512), "text-classification": (8, 16, 32, 64)}
QUICK_POINTS = {"digits": (8, 32, 128), "text-classification": (8, 16)}
ROUNDS = {"digits": 5, "text-classification": 3}
#: 1,797 digits over 512 partitions leave 3 or 4 samples a node: one held-out batch of one
#: sample and one training batch of one sample; the same at every point, so per-node work is
#: constant. MiniLM: 8 reviews of 48 tokens a batch
TASKS = {
    "digits": {"task.name": "digits", "task.batch-size": 1, "task.eval-batches": 1,
               "optimizer.lr": 0.01},
    "text-classification": {"task.name": "text-classification", "task.batch-size": 8,
                            "task.max-length": 48, "task.eval-batches": 1,
                            "optimizer.lr": 0.004},
}
COMMON = {"strategy.fraction-train": 1.0, "strategy.max-server-batch": 64,
          "edge.graphs": False, "checkpoint.every": 0, "strategy.timeout": 3600.0}
SIMULATION = {"num-server-rounds": 5, "task.batch-size": 8, "task.eval-batches": 1,
              "task.partitioner": "iid", "strategy.evaluate-every": 5}
MEMORY_FACTOR, LINEAR_FACTOR = 2.0, 1.5


# --------------------------------------------------------------------------------------------
# the nodes: one child process that keeps every node's context


class NodeHost(NodeProcess):
    """Many nodes' handlers in one child process (``--node-host``) that keeps each node's
    ``Context``: the server process sends a node's context with its first message only, and
    gets back the reply alone.

    Parameters
    ----------
    env : dict
        The child's environment.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--node-host"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.stats: list[dict] = []
        self.known: set[int] = set()
        self.busy = 0.0  # seconds the server process waited on the nodes, transport included
        self.state_bytes: dict[int, int] = {}  # node id -> bytes of its context.state

    def handle(self, msg, context):
        from flwr.common import serde
        from flwr.proto.message_pb2 import Message as ProtoMessage

        started = time.perf_counter()
        node = msg.metadata.dst_node_id
        first = b"" if node in self.known else serde.context_to_proto(context).SerializeToString()
        self.known.add(node)
        for data in (serde.message_to_proto(msg).SerializeToString(), first):
            self.process.stdin.write(len(data).to_bytes(4, "big") + data)
        self.process.stdin.flush()
        reply = serde.message_from_proto(ProtoMessage.FromString(self._read()))
        stats = json.loads(self._read())
        self.state_bytes[node] = stats["state_bytes"]
        self.busy += time.perf_counter() - started
        return reply, context


def serve_nodes() -> None:
    """The ``--node-host`` child: answer framed messages with the real node handlers, each
    node with its own context (sent once), and report the bytes of its ``context.state``."""
    from flwr.app import Error, Message, MessageType
    from flwr.common import serde
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    from cola_fed.federation import client
    from cola_fed.federation.node_process import read_frame, write_frame

    # every node's partition stays cached, as in each node's own process
    client._cached_client_data = functools.lru_cache(maxsize=None)(
        client._cached_client_data.__wrapped__)
    contexts = {}
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (raw := read_frame(stdin)) is not None:
        msg = serde.message_from_proto(ProtoMessage.FromString(raw))
        first = read_frame(stdin)
        node = msg.metadata.dst_node_id
        if first:
            contexts[node] = serde.context_from_proto(ProtoContext.FromString(first))
        handler = (client.handle_hello if msg.metadata.message_type == MessageType.QUERY
                   else client.handle_train)
        try:
            reply = handler(msg, contexts[node])
        except Exception as err:
            reply = Message(Error(code=1, reason=repr(err)), reply_to=msg)
        write_frame(stdout, serde.message_to_proto(reply).SerializeToString())
        write_frame(stdout, json.dumps({"state_bytes": _state_bytes(contexts[node])}).encode())
        stdout.flush()


def _state_bytes(context) -> int:
    state = context.state
    return (sum(r.count_bytes() for r in state.array_records.values())
            + sum(r.count_bytes() for r in state.config_records.values()))


# --------------------------------------------------------------------------------------------
# one scale point, in a process of its own


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` figure (``VmRSS``, ``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Start ``VmHWM`` afresh from the current RSS (Linux ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def run_point(task: str, nodes: int, rounds: int, threads: int) -> dict[str, Any]:
    """Run ``rounds`` rounds of ``task`` with ``nodes`` nodes in one child; the server's time
    and memory figures. The server and the nodes each use ``threads`` torch threads."""
    import logging

    import torch

    torch.set_num_threads(threads)
    from cola_fed.config import RunConfig
    from cola_fed.federation.local_grid import LocalGrid
    from cola_fed.federation.server import build_strategy

    logging.getLogger("cola_fed").setLevel(logging.WARNING)
    config = RunConfig.from_flat({**TASKS[task], **COMMON, "num-server-rounds": rounds,
                                  "strategy.min-available-nodes": nodes,
                                  "strategy.evaluate-every": rounds})
    marks: dict[str, Any] = {"before_setup_mb": status_mb("VmRSS")}
    strategy = build_strategy(config)
    marks["after_setup_mb"] = status_mb("VmRSS")
    host = NodeHost({**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        grid = LocalGrid(nodes, processes={1000 + i: host for i in range(nodes)},
                         keep_delivered=False)
        node_seconds = _instrument(strategy, host, marks)
        started = time.perf_counter()
        strategy.start(grid, num_rounds=rounds, timeout=3600)
        marks["run_seconds"] = time.perf_counter() - started
        if strategy.stopped:  # a failure of the server's own ends the run, not with a raise
            raise RuntimeError(f"the scale run stopped early: {strategy.stopped}")
    finally:
        host.close()
    marks["rounds_peak_mb"] = status_mb("VmHWM")
    return _point_figures(task, nodes, strategy, host, marks, node_seconds)


def _instrument(strategy, host: NodeHost, marks: dict[str, Any]) -> list[float]:
    """Record RSS after hello (and reset the peak there), and the nodes' seconds of each
    round; returns the list those seconds are appended to (index = round)."""
    hello, after_round = strategy.hello, strategy._after_round
    node_seconds: list[float] = []

    def timed_hello(grid, timeout):
        hello(grid, timeout)
        marks["hello_peak_mb"], marks["after_hello_mb"] = status_mb("VmHWM"), status_mb("VmRSS")
        reset_peak()

    def timed_after_round(server_round):
        node_seconds.append(host.busy - sum(node_seconds))
        after_round(server_round)

    strategy.hello, strategy._after_round = timed_hello, timed_after_round
    return node_seconds


def held_bytes(strategy) -> int:
    """Bytes of what the server holds for its members: adapters, pending and held-out batches
    (and an uploaded training split)."""
    total = 0
    for session in strategy.members.values():
        total += sum(v.nbytes for params in session.adapters.values() for v in params.values())
        for batch in [*session.pending, *session.eval_batches, session.train or {}]:
            total += sum(v.nbytes for v in batch.values())
    return total


def _point_figures(task: str, nodes: int, strategy, host: NodeHost, marks: dict[str, Any],
                   node_seconds: list[float]) -> dict[str, Any]:
    trained = [r for r in strategy.rounds if r["round"] >= 1]
    if not trained or any(r["nodes"] != nodes or r["failed"] for r in trained):
        raise RuntimeError(f"{task} at {nodes} nodes: not every node trained every round: "
                           f"{[(r['round'], r['nodes'], r['failed']) for r in trained]}")
    seconds = [r["seconds"] for r in trained]
    nodes_s = [node_seconds[r["round"]] for r in trained]
    median = statistics.median(seconds)
    return {
        "task": task, "nodes": nodes, "rounds": len(trained),
        "round_seconds": seconds, "median_round_s": median, "s_per_node": median / nodes,
        "median_node_side_s": statistics.median(nodes_s),
        "median_server_side_s": statistics.median(s - n for s, n in zip(seconds, nodes_s)),
        "peak_mb": max(marks["hello_peak_mb"], marks["rounds_peak_mb"]),
        "growth_mb": marks["rounds_peak_mb"] - marks["after_hello_mb"],
        "held_mb": held_bytes(strategy) / 2**20,
        "node_state_mb": sum(host.state_bytes.values()) / 2**20,
        "bytes_down_per_round": trained[-1]["bytes-down"],
        "bytes_up_per_round": trained[-1]["bytes-up"],
        "accuracy_mean": strategy.rounds[-1].get("accuracy-mean"),
        **marks,
    }


def measure_point(task: str, nodes: int, rounds: int, threads: int, home: Path,
                  env: dict[str, str] | None = None) -> dict[str, Any]:
    """One scale point in a fresh server process, with its own ``COLA_FED_HOME`` (and ``env``
    added to its environment)."""
    env = {**os.environ, "COLA_FED_HOME": str(home / f"{task}-{nodes}-{len(env or {})}"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), **(env or {})}
    command = [sys.executable, "-m", "benchmarks.scale", "--point", task, str(nodes),
               "--rounds", str(rounds), "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# the real flwr run simulation


def flwr_simulation(nodes: int, timeout: float) -> dict[str, Any]:
    """``flwr run`` of the digits simulation with ``nodes`` nodes (Ray, local): wall time and
    the metrics' per-round seconds, or what went wrong."""
    from cola_fed.federation.simulate import simulate

    overrides = {**SIMULATION, "strategy.min-available-nodes": nodes}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cola-scale-sim-") as folder:
        try:
            out = simulate("digits", output_dir=Path(folder) / "out", num_supernodes=nodes,
                           overrides=overrides, stream=False, timeout=timeout)
        except Exception as err:
            return {"nodes": nodes, "ok": False, "wall_s": time.perf_counter() - started,
                    "error": f"{type(err).__name__}: {str(err)[-2000:]}"}
        metrics = json.loads((out / "metrics.json").read_text())
    trained = [r for r in metrics["rounds"] if r["round"] >= 1]
    return {"nodes": nodes, "ok": all(r["nodes"] == nodes for r in trained),
            "wall_s": time.perf_counter() - started, "server_seconds": metrics["seconds"],
            "rounds": [{k: r.get(k) for k in ("round", "nodes", "failed", "seconds")}
                       for r in trained],
            "median_round_s": statistics.median(r["seconds"] for r in trained),
            "accuracy_mean": metrics["rounds"][-1].get("accuracy-mean"),
            "overrides": overrides}


# --------------------------------------------------------------------------------------------
# the whole benchmark


def targets(points: dict[str, list[dict]]) -> dict[str, Any]:
    """The memory target on digits and the linearity of round time, for each task."""
    out: dict[str, Any] = {}
    digits = points.get("digits", [])
    if len(digits) >= 2:
        small, large = digits[0], digits[-1]
        bound = MEMORY_FACTOR * small["peak_mb"]
        lhs = large["peak_mb"] - large["held_mb"]
        out["memory"] = {
            "check": f"peak({large['nodes']}) - held({large['nodes']}) < "
                     f"{MEMORY_FACTOR:g} * peak({small['nodes']})",
            "computed": f"{large['peak_mb']:.1f} - {large['held_mb']:.1f} = {lhs:.1f} MB < "
                        f"{MEMORY_FACTOR:g} * {small['peak_mb']:.1f} = {bound:.1f} MB",
            "holds": lhs < bound,
            "growth_check": f"growth({large['nodes']}) - held({large['nodes']}) = "
                            f"{large['growth_mb'] - large['held_mb']:.1f} MB, growth("
                            f"{small['nodes']}) = {small['growth_mb']:.1f} MB",
        }
    for task, rows in points.items():
        if len(rows) >= 2:
            out[f"linearity-{task}"] = linearity(rows)
    return out


def linearity(rows: list[dict]) -> dict[str, Any]:
    """Seconds per node at the largest point over the smallest, and a least-squares line
    ``round s = a + b * nodes`` with its R^2; the same for the server's share alone."""
    xs = [r["nodes"] for r in rows]
    ratio = rows[-1]["s_per_node"] / rows[0]["s_per_node"]
    server = [r["median_server_side_s"] / r["nodes"] for r in rows]
    return {"per_node_ratio_largest_to_smallest": ratio,
            "check": f"s/node({xs[-1]}) / s/node({xs[0]}) <= {LINEAR_FACTOR:g}",
            "holds": ratio <= LINEAR_FACTOR,
            **line_fit(xs, [r["median_round_s"] for r in rows]),
            "server_side_per_node_ratio": server[-1] / server[0],
            "server_side": line_fit(xs, [r["median_server_side_s"] for r in rows])}


def line_fit(xs: list[int], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = a + b * x``: intercept, slope and R^2."""
    fit = statistics.linear_regression(xs, ys)
    mean = statistics.fmean(ys)
    total = sum((y - mean) ** 2 for y in ys)
    residual = sum((y - fit.intercept - fit.slope * x) ** 2 for x, y in zip(xs, ys))
    return {"fit_intercept_s": fit.intercept, "fit_s_per_node": fit.slope,
            "fit_r2": 1 - residual / total if total else 1.0}


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def summary(points: dict[str, list[dict]], checks: dict[str, Any],
            simulation: list[dict]) -> None:
    print(f"{'task':20s} {'nodes':>5s} {'round s':>8s} {'s/node':>8s} {'server s':>8s} "
          f"{'peak MB':>8s} {'growth':>7s} {'held MB':>8s} {'node st.':>8s}")
    for task, rows in points.items():
        for r in rows:
            print(f"{task:20s} {r['nodes']:5d} {r['median_round_s']:8.2f} "
                  f"{r['s_per_node'] * 1e3:6.1f}ms {r['median_server_side_s']:8.2f} "
                  f"{r['peak_mb']:8.1f} {r['growth_mb']:7.1f} {r['held_mb']:8.2f} "
                  f"{r['node_state_mb']:8.1f}")
    for name, check in checks.items():
        detail = check.get("computed") or (
            f"ratio {check['per_node_ratio_largest_to_smallest']:.2f} (server's share alone "
            f"{check['server_side_per_node_ratio']:.2f}), R^2 {check['fit_r2']:.3f}")
        print(f"{name}: {check['check']}: {detail}: {'holds' if check['holds'] else 'FAILS'}")
    for sim in simulation:
        if sim["ok"]:
            print(f"flwr run digits {sim['nodes']} nodes x {len(sim['rounds'])} rounds: "
                  f"{sim['wall_s']:.0f} s wall, median round {sim['median_round_s']:.2f} s")
        else:
            print(f"flwr run digits {sim['nodes']} nodes: FAILED after {sim['wall_s']:.0f} s: "
                  f"{sim.get('error', 'not every node trained')[:300]}")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every scale point, each in a fresh process, then the allocator check and the simulation.

    With ``args.time_budget``, a point whose predicted end (the previous point's seconds scaled
    by its node count) falls after the budget is skipped, and so are the stages after it that
    would start past the budget; what was skipped is listed in the result.
    """
    started = time.perf_counter()
    plan = ({task: tuple(args.nodes) for task in POINTS} if args.nodes
            else QUICK_POINTS if args.quick else POINTS)
    points: dict[str, list[dict]] = {}
    skipped: list[str] = []

    def over_budget(predicted: float = 0.0) -> bool:
        return (args.time_budget is not None
                and time.perf_counter() - started + predicted > args.time_budget)

    with tempfile.TemporaryDirectory(prefix="cola-scale-") as home:
        for task in args.tasks:
            previous: tuple[int, float] | None = None  # (nodes, seconds the point took)
            for nodes in plan[task]:
                if over_budget(previous[1] * nodes / previous[0] if previous else 0.0):
                    skipped.append(f"{task} {nodes} nodes")
                    print(f"{task} {nodes:4d} nodes: skipped, over the time budget",
                          file=sys.stderr, flush=True)
                    continue
                point_start = time.perf_counter()
                row = measure_point(task, nodes, ROUNDS[task], args.threads, Path(home))
                previous = (nodes, time.perf_counter() - point_start)
                points.setdefault(task, []).append(row)
                print(f"[{time.perf_counter() - started:6.1f} s] {task} {nodes:4d} nodes: round "
                      f"{row['median_round_s']:.2f} s, peak {row['peak_mb']:.0f} MB, growth "
                      f"{row['growth_mb']:.1f} MB, held {row['held_mb']:.2f} MB",
                      file=sys.stderr, flush=True)
        allocator: dict[str, Any] = {}
        if not args.no_allocator_check and len(points.get("text-classification", [])) >= 2:
            if over_budget():
                skipped.append("allocator check")
            else:
                allocator = allocator_check(points["text-classification"], args.threads,
                                            Path(home))
    simulation = []
    for nodes in ([] if args.no_simulation else args.simulation_nodes):
        if over_budget():
            skipped.append(f"flwr run {nodes} nodes")
            continue
        simulation.append(flwr_simulation(nodes, args.simulation_timeout))
        print(f"[{time.perf_counter() - started:6.1f} s] flwr run {nodes} nodes: "
              f"{simulation[-1]['ok']}, {simulation[-1]['wall_s']:.0f} s",
              file=sys.stderr, flush=True)
        if simulation[-1]["ok"]:
            break  # the largest that works
    return {"points": points, "targets": targets(points), "allocator_check": allocator,
            "simulation": simulation, "skipped": skipped,
            "seconds": time.perf_counter() - started}


def allocator_check(rows: list[dict], threads: int, home: Path) -> dict[str, Any]:
    """The smallest and largest MiniLM points again (one round), with glibc's mmap threshold
    fixed at 128 kB (``MALLOC_MMAP_THRESHOLD_``): every large buffer is then returned to the
    system when freed, so the growth left is what the server holds. Held bytes count twice in a
    round: the new adapters and batches of every node are applied once all replies are in."""
    env = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    small, large = (measure_point("text-classification", r["nodes"], 1, threads, home, env)
                    for r in (rows[0], rows[-1]))
    extra = large["growth_mb"] - small["growth_mb"]
    held = 2 * (large["held_mb"] - small["held_mb"])
    print(f"allocator check: growth({large['nodes']}) - growth({small['nodes']}) = {extra:.1f} "
          f"MB, 2 x extra held = {held:.1f} MB", file=sys.stderr, flush=True)
    return {"env": env, "points": [small, large], "extra_growth_mb": extra,
            "twice_extra_held_mb": held,
            "check": f"growth({large['nodes']}) - growth({small['nodes']}) <= 1.25 * 2 * "
                     f"(held({large['nodes']}) - held({small['nodes']})) + 8 MB",
            "holds": extra <= 1.25 * held + 8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="digits 8-128 and MiniLM 8-16 nodes, simulation of 16 nodes")
    parser.add_argument("--tasks", nargs="+", choices=list(POINTS), default=list(POINTS))
    parser.add_argument("--no-simulation", action="store_true", help="skip the flwr run")
    parser.add_argument("--no-allocator-check", action="store_true",
                        help="skip the MiniLM points with a fixed mmap threshold")
    parser.add_argument("--simulation-nodes", type=int, nargs="+", default=None,
                        help="node counts to try, largest first, until one works (default 64 "
                             "32 16; --quick: 16)")
    parser.add_argument("--simulation-timeout", type=float, default=900.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the server and of the nodes' process (default 1: "
                             "the two take turns, and a shared machine stays steady)")
    parser.add_argument("--nodes", type=int, nargs="+", default=None,
                        help="node counts of every task's points, instead of the built-in ones "
                             "(a small dry run: --tasks digits --nodes 4 8)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="skip points and stages that would end after this many seconds")
    parser.add_argument("--output", default="scale",
                        help="result name under benchmarks/results/ (default scale)")
    parser.add_argument("--point", nargs=2, metavar=("TASK", "NODES"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--node-host", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node_host:
        serve_nodes()
        return 0
    if args.point:
        task, nodes = args.point
        print(json.dumps(run_point(task, int(nodes), args.rounds or ROUNDS[task],
                                   args.threads)))
        return 0
    if args.simulation_nodes is None:
        args.simulation_nodes = [16] if args.quick else [64, 32, 16]
    result = run_all(args)
    from benchmarks.common import write_result

    path = write_result(args.output, {
        "command": "python -m benchmarks.scale " + " ".join(argv if argv is not None
                                                              else sys.argv[1:]),
        "machine_detail": machine(), "config": {
            "tasks": TASKS, "common": COMMON, "rounds": ROUNDS, "simulation": SIMULATION,
            "quick": args.quick, "nodes": args.nodes, "torch_threads": args.threads,
            "time_budget_s": args.time_budget},
        **result})
    summary(result["points"], result["targets"], result["simulation"])
    if result["allocator_check"]:
        check = result["allocator_check"]
        print(f"allocator check ({check['env']}): {check['check']}: {check['extra_growth_mb']:.1f}"
              f" MB vs 2 x extra held {check['twice_extra_held_mb']:.1f} MB: "
              f"{'holds' if check['holds'] else 'FAILS'}")
    if result["skipped"]:
        print(f"skipped (time budget): {', '.join(result['skipped'])}")
    print(f"total {result['seconds']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
