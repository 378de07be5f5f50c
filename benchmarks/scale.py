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

The server's engine (``server.engine``): ``--engine local`` (the default) computes in the
server process; ``--engine ray`` on ``server.workers`` Ray actors (the points use the largest
of ``--workers``), each point starting a Ray of its own (in a temporary ``RAY_TMPDIR``). With
the Ray pool the passes run in the actors' processes, so each point also reports the
coordinator's own CPU seconds per round and node (``time.process_time`` of the server
process: sealing, grouping, Ray's submission and transfers; not the passes) next to its peak
RSS, which then excludes the actors' memory.

Engine comparison (``--engine ray --workers 1 2``): ``--compare-task`` (MiniLM-L6 by default)
with ``--compare-nodes`` nodes (32) and ``ROUNDS`` rounds, once per worker count (and once on
the local engine with ``--compare-local``), each in a fresh process, the variants interleaved
``--compare-repeats`` times (3) so that the machine's load hits all alike. It reports each
variant's median round seconds, the round throughput (nodes per second) of the most workers
over one worker (the median of the per-repeat ratios and the ratio of medians), and whether
every variant ended with bit-identical adapters (a SHA-256 over every node's adapters).

    python -m benchmarks.scale [--quick] [--no-simulation] [--no-allocator-check]
                               [--nodes N ...] [--time-budget SECONDS] [--output NAME]
    python -m benchmarks.scale --engine ray --workers 1 2 --compare-nodes 32 \
                               --tasks digits --nodes 8 32 128 512 --no-simulation
    python -m benchmarks.scale --point digits 128   (one scale point; prints its JSON)

Everything here runs on CPUs but the Ray pool's workers with ``--gpus-per-worker``: the
strategy builds its engine on the CPU, so on a GPU machine the benchmark runs unchanged and
leaves the GPU alone (``benchmarks/gpu.sh`` runs it there with ``--quick`` and a time budget,
and the comparison with one Ray worker per GPU).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
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
#: the round throughput two Ray workers should reach over one (issue 26)
COMPARE_GOAL = 1.6


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


def run_point(task: str, nodes: int, rounds: int, threads: int,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``rounds`` rounds of ``task`` with ``nodes`` nodes in one child; the server's time
    and memory figures. The server and the nodes each use ``threads`` torch threads;
    ``overrides`` are run-config keys added last (``server.engine``, ``server.workers``)."""
    import logging

    import torch

    torch.set_num_threads(threads)
    from cola_fed.config import RunConfig
    from cola_fed.federation.local_grid import LocalGrid
    from cola_fed.federation.server import build_strategy

    logging.getLogger("cola_fed").setLevel(logging.WARNING)
    config = RunConfig.from_flat({**TASKS[task], **COMMON, "num-server-rounds": rounds,
                                  "strategy.min-available-nodes": nodes,
                                  "strategy.evaluate-every": rounds, **(overrides or {})})
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
        pool = getattr(strategy, "pool", None)  # the Ray pool's actors (and its own Ray)
        if pool is not None:
            pool.close()
    marks["rounds_peak_mb"] = status_mb("VmHWM")
    marks["server"] = {k.replace("_", "-"): v
                       for k, v in vars(config.server).items()}
    return _point_figures(task, nodes, strategy, host, marks, node_seconds)


def _instrument(strategy, host: NodeHost, marks: dict[str, Any]) -> list[float]:
    """Record RSS after hello (and reset the peak there), and the nodes' seconds of each
    round; returns the list those seconds are appended to (index = round)."""
    hello, after_round = strategy.hello, strategy._after_round
    node_seconds: list[float] = []
    cpu_marks: list[float] = []  # the server process's CPU seconds at the end of each round
    marks["cpu_seconds"] = []

    def timed_hello(grid, timeout):
        hello(grid, timeout)
        marks["hello_peak_mb"], marks["after_hello_mb"] = status_mb("VmHWM"), status_mb("VmRSS")
        reset_peak()

    def timed_after_round(server_round):
        node_seconds.append(host.busy - sum(node_seconds))
        cpu_marks.append(time.process_time())
        if len(cpu_marks) >= 2:  # round 0 is hello's evaluation: rounds >= 1 are counted
            marks["cpu_seconds"].append(cpu_marks[-1] - cpu_marks[-2])
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
    cpu = marks.pop("cpu_seconds")  # the server process's alone: the nodes are another one
    coordinator = {"coordinator_cpu_s": cpu,
                   "median_coordinator_cpu_s": statistics.median(cpu) if cpu else None,
                   "coordinator_cpu_s_per_node": (statistics.median(cpu) / nodes if cpu
                                                  else None)}
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
        "adapters_sha256": adapters_digest(strategy),
        **coordinator, **marks,
    }


def adapters_digest(strategy) -> str:
    """SHA-256 over every member's adapters (partition, layer, parameter, dtype, shape and
    bytes, in sorted order): equal digests are bit-identical adapters."""
    import numpy as np

    digest = hashlib.sha256()
    for partition in sorted(strategy.members):
        adapters = strategy.members[partition].adapters
        for layer in sorted(adapters):
            for name in sorted(adapters[layer]):
                value = np.ascontiguousarray(np.asarray(adapters[layer][name]))
                digest.update(f"{partition}|{layer}|{name}|{value.dtype}|{value.shape}|"
                              .encode())
                digest.update(value.tobytes())
    return digest.hexdigest()


def measure_point(task: str, nodes: int, rounds: int, threads: int, home: Path,
                  env: dict[str, str] | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One scale point in a fresh server process, with its own ``COLA_FED_HOME`` and Ray
    temporary folder (and ``env`` added to its environment, ``overrides`` to its run config)."""
    tag = hashlib.sha256(json.dumps([env, overrides], sort_keys=True).encode()).hexdigest()[:8]
    # Ray's sockets live under RAY_TMPDIR: a short path of its own (a socket path has at most
    # 107 bytes), never the machine's shared /tmp/ray
    ray_tmp = tempfile.mkdtemp(prefix="crs-", dir="/tmp")
    env = {**os.environ, "COLA_FED_HOME": str(home / f"{task}-{nodes}-{tag}"),
           "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           **(env or {})}
    command = [sys.executable, "-m", "benchmarks.scale", "--point", task, str(nodes),
               "--rounds", str(rounds), "--threads", str(threads),
               "--overrides", json.dumps(overrides or {})]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
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
            simulation: list[dict], comparison: dict[str, Any] | None = None) -> None:
    if comparison:
        c = comparison
        print(f"engine comparison, {c['task']} {c['nodes']} nodes x {c['rounds']} rounds, "
              f"{c['repeats']} interleaved repeats:")
        for name, median in c["median_round_s"].items():
            print(f"  {name:8s} median round {median:7.2f} s, "
                  f"{c['round_throughput_nodes_per_s'][name]:6.2f} nodes/s")
        if "throughput_ratio" in c:
            t = c["throughput_ratio"]
            print(f"  throughput {t['of']}: {t['median_of_paired_ratios']:.2f} (paired), "
                  f"{t['ratio_of_medians']:.2f} (of medians); goal >= {t['goal']}: "
                  f"{'met' if t['goal_met'] else 'NOT met'}")
        print(f"  adapters bit-identical across every run: {c['adapters_equal']}")
    print(f"{'task':20s} {'nodes':>5s} {'round s':>8s} {'s/node':>8s} {'server s':>8s} "
          f"{'peak MB':>8s} {'growth':>7s} {'held MB':>8s} {'node st.':>8s} {'coord.':>8s}")
    for task, rows in points.items():
        for r in rows:
            cpu = r.get("coordinator_cpu_s_per_node")
            print(f"{task:20s} {r['nodes']:5d} {r['median_round_s']:8.2f} "
                  f"{r['s_per_node'] * 1e3:6.1f}ms {r['median_server_side_s']:8.2f} "
                  f"{r['peak_mb']:8.1f} {r['growth_mb']:7.1f} {r['held_mb']:8.2f} "
                  f"{r['node_state_mb']:8.1f} "
                  f"{'' if cpu is None else format(cpu * 1e3, '6.1f') + 'ms':>8s}")
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

    point_overrides = engine_overrides(args.engine, max(args.workers), args.gpus_per_worker,
                                       args.cpus_per_worker)
    comparison: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cola-scale-") as home:
        if args.compare_nodes:
            comparison = compare_engines(args, Path(home))
        for task in ([] if args.no_points else args.tasks):
            previous: tuple[int, float] | None = None  # (nodes, seconds the point took)
            for nodes in plan[task]:
                if over_budget(previous[1] * nodes / previous[0] if previous else 0.0):
                    skipped.append(f"{task} {nodes} nodes")
                    print(f"{task} {nodes:4d} nodes: skipped, over the time budget",
                          file=sys.stderr, flush=True)
                    continue
                point_start = time.perf_counter()
                row = measure_point(task, nodes, ROUNDS[task], args.threads, Path(home),
                                    overrides=point_overrides)
                previous = (nodes, time.perf_counter() - point_start)
                points.setdefault(task, []).append(row)
                print(f"[{time.perf_counter() - started:6.1f} s] {task} {nodes:4d} nodes: round "
                      f"{row['median_round_s']:.2f} s, peak {row['peak_mb']:.0f} MB, growth "
                      f"{row['growth_mb']:.1f} MB, held {row['held_mb']:.2f} MB, coordinator "
                      f"CPU {row['coordinator_cpu_s_per_node'] * 1e3:.1f} ms/node",
                      file=sys.stderr, flush=True)
        allocator: dict[str, Any] = {}
        if (not args.no_allocator_check and args.engine == "local"
                and len(points.get("text-classification", [])) >= 2):
            if over_budget():
                skipped.append("allocator check")
            else:
                allocator = allocator_check(points["text-classification"], args.threads,
                                            Path(home))
    simulation = []
    for nodes in ([] if args.no_simulation or args.no_points else args.simulation_nodes):
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
            "engine_comparison": comparison, "simulation": simulation, "skipped": skipped,
            "seconds": time.perf_counter() - started}


def engine_overrides(engine: str, workers: int, gpus: float, cpus: float) -> dict[str, Any]:
    """The run-config keys of one engine variant."""
    if engine == "local":
        return {"server.engine": "local"}
    return {"server.engine": "ray", "server.workers": workers,
            "server.gpus-per-worker": gpus, "server.cpus-per-worker": cpus}


def compare_engines(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """``--compare-task`` at ``--compare-nodes`` nodes once per worker count (and on the local
    engine with ``--compare-local``), interleaved ``--compare-repeats`` times, each run a fresh
    process: round throughput of the most workers over one, and whether the adapters agree."""
    task, nodes = args.compare_task, args.compare_nodes
    variants = {f"ray-{w}": engine_overrides("ray", w, args.gpus_per_worker,
                                             args.cpus_per_worker)
                for w in sorted(set(args.workers))}
    if args.compare_local:
        variants = {"local": engine_overrides("local", 1, 0, 1), **variants}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for repeat in range(args.compare_repeats):
        for name, overrides in variants.items():
            row = measure_point(task, nodes, ROUNDS[task], args.threads, home,
                                overrides=overrides)
            runs[name].append(row)
            print(f"compare {task} {nodes} nodes, repeat {repeat + 1}, {name}: median round "
                  f"{row['median_round_s']:.2f} s, coordinator CPU "
                  f"{row['median_coordinator_cpu_s']:.2f} s, adapters "
                  f"{row['adapters_sha256'][:12]}", file=sys.stderr, flush=True)
    median = {name: statistics.median(s for r in rows for s in r["round_seconds"])
              for name, rows in runs.items()}
    out: dict[str, Any] = {
        "task": task, "nodes": nodes, "rounds": ROUNDS[task], "repeats": args.compare_repeats,
        "variants": variants, "runs": runs, "median_round_s": median,
        "round_throughput_nodes_per_s": {n: nodes / m for n, m in median.items()},
        "adapters_equal": len({r["adapters_sha256"] for rows in runs.values()
                               for r in rows}) == 1,
    }
    one, most = f"ray-{min(args.workers)}", f"ray-{max(args.workers)}"
    if one != most:
        paired = [statistics.median(a["round_seconds"]) / statistics.median(b["round_seconds"])
                  for a, b in zip(runs[one], runs[most])]
        out["throughput_ratio"] = {
            "of": f"{most} over {one}", "ratio_of_medians": median[one] / median[most],
            "median_of_paired_ratios": statistics.median(paired), "paired_ratios": paired,
            "goal": COMPARE_GOAL, "goal_met": statistics.median(paired) >= COMPARE_GOAL}
    return out


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
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="server.engine of the scale points (default local)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="server.workers: the points use the largest; with --engine ray "
                             "and several counts, the comparison runs each (default 2)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="server.gpus-per-worker (default 0)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0,
                        help="server.cpus-per-worker (default 1)")
    parser.add_argument("--compare-nodes", type=int, default=None,
                        help="nodes of the engine comparison (default 32 with --engine ray "
                             "and several --workers; 0 skips it)")
    parser.add_argument("--compare-task", choices=list(POINTS), default="text-classification")
    parser.add_argument("--compare-repeats", type=int, default=3,
                        help="interleaved repeats of the comparison (default 3)")
    parser.add_argument("--compare-local", action="store_true",
                        help="add the local engine to the comparison")
    parser.add_argument("--no-points", action="store_true",
                        help="skip the scale points and the simulation (the comparison "
                             "alone)")
    parser.add_argument("--point", nargs=2, metavar=("TASK", "NODES"), help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--node-host", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.workers) < 1 or args.compare_repeats < 1:
        parser.error("--workers and --compare-repeats must be >= 1")
    if args.compare_nodes is None:
        args.compare_nodes = 32 if args.engine == "ray" and len(set(args.workers)) > 1 else 0
    if args.compare_nodes and args.engine != "ray":
        parser.error("--compare-nodes compares Ray worker counts: add --engine ray")
    if args.node_host:
        serve_nodes()
        return 0
    if args.point:
        task, nodes = args.point
        print(json.dumps(run_point(task, int(nodes), args.rounds or ROUNDS[task],
                                   args.threads, json.loads(args.overrides))))
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
            "time_budget_s": args.time_budget, "engine": args.engine, "workers": args.workers,
            "gpus_per_worker": args.gpus_per_worker, "cpus_per_worker": args.cpus_per_worker},
        **result})
    summary(result["points"], result["targets"], result["simulation"],
            result["engine_comparison"])
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
