"""The JavaScript node against the Python ONNX node: peak memory and step time, in one run.

Method. One federation per task, driven by the real server strategy through a
:class:`~cola_fed.federation.local_grid.LocalGrid` (the strategy, hello, seals, codecs, Flower's
messages and records are all real; only the SuperLink's transport is left out). It has two
nodes, each in a process of its own, on the same CSV (partitions 0 and 1 of 2, so both take the
same shapes every round):

- node 1000, the Python ONNX node: ``cola_fed.federation.node_process``'s loop with torch hidden
  (``backend = "onnx"``), as ``benchmarks.edge`` measures it; fed Flower's protobuf ``Message``;
- node 1001, the JavaScript node: ``js/packages/node/bench/node-process.mjs``, which runs the
  cola-fed app of ``cola-fed-node`` (``createColaApp``: ``ColaNode`` with the Node.js
  environment and onnxruntime-node) on each message. It is fed what a SuperLink hands a node on
  PullMessages: the message's object tree and its objects, deflated by flwr's own code
  (``Message.deflate``); it inflates them with every check (``decodeMessageTree``), answers
  with ``makeReply`` and ``encodeMessage``, and this side inflates the reply with flwr's
  ``inflate_object_from_contents`` after checking each object's id, as the SuperLink does.

The grid delivers one message at a time, so the two nodes never run at once, and in every round
the Python node's step and the JavaScript node's are moments apart: the per-round ratio is
paired (:func:`benchmarks.common.paired_ratio`). Both use one ONNX Runtime thread
(``onnx-threads = 1``, the default).

Figures, per node:

- peak RSS: the peak resident memory of the node's process over hello and every round (Linux
  ``VmHWM``, which starts afresh at exec); for Node.js, the whole process (V8 and its heap,
  onnxruntime-node, the app);
- step time: one TRAIN message in the node's handler (open the seal, decode the adaptation
  data, fit, encode the adapters and the next batch, seal, save the state), median over rounds;
  for the JavaScript node also with the Flower object codec around it (inflate the message,
  deflate the reply), which the Python node's ClientApp process does not do (its SuperNode does);
- fit time: the learner's ``fit`` calls within that step (``OrtLearner.fit`` on both sides).

Tasks: ``digits`` (8x8 digits, 16 images a batch, an MLP's adapters, as tests/test_js_node.py)
and ``text``, the demo shapes: MiniLM-L6, Low Rank r=8 on ``query``/``value`` + the head's
Linear adapter, Rotten Tomatoes, 32 reviews x 48 tokens, 4 eval batches, 800 reviews of a node's
own (the run ``benchmarks.edge`` measured the Python ONNX node's 133 MB on). Goals (issue 24):
JavaScript peak RSS <= 100 MB; JavaScript step time <= 1.5 x the Python ONNX node's.

    python -m benchmarks.js_node [--tasks digits,text] [--rounds 6] [--text-rounds 4]
        [--rows 800] [--out js_node]

Writes ``benchmarks/results/<out>.json``. Needs the JavaScript build (``make js``).
``COLA_FED_BENCH_NODE_FLAGS`` adds flags to the JavaScript node's ``node`` (e.g.
``--cpu-prof --cpu-prof-dir=/tmp/prof`` to profile it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JS_NODE_PROCESS = ROOT / "js" / "packages" / "node" / "bench" / "node-process.mjs"
#: the goals of issue 24
TARGET_PEAK_RSS_MB = 100.0
TARGET_STEP_RATIO = 1.5
PYTHON_NODE, JS_NODE = 1000, 1001


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="digits,text", help="comma-separated: digits, text")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the digits run")
    parser.add_argument("--text-rounds", type=int, default=5, help="rounds of the text run")
    parser.add_argument("--rows", type=int, default=800, help="rows of each node's CSV")
    parser.add_argument("--out", default="js_node", help="benchmarks/results/<OUT>.json")
    parser.add_argument("--js-arena-off", action="store_true",
                        help="an experiment: the JavaScript node's ONNX Runtime sessions "
                             "without the CPU memory arena and memory patterns, as the Python "
                             "learner sets them")
    parser.add_argument("--python-node", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.python_node:  # the Python ONNX node's child process
        python_node_process()
        return
    if not (ROOT / "js" / "packages" / "node" / "dist" / "app.js").exists():
        raise SystemExit("the JavaScript node is not built: run `make js` first")
    from benchmarks.common import write_result

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise SystemExit(f"--tasks: unknown {sorted(unknown)}; expected some of {sorted(TASKS)}")
    results = {}
    for task in tasks:
        rounds = args.text_rounds if task == "text" else args.rounds
        results[task] = measure(task, rounds, args.rows, js_arena_off=args.js_arena_off)
        print_summary(task, results[task])
    path = write_result(args.out, {
        "config": vars(args), "node": node_version(), "onnx_threads": 1,
        "targets": {"js_peak_rss_mb": TARGET_PEAK_RSS_MB, "step_ratio": TARGET_STEP_RATIO},
        "tasks": results})
    print(f"wrote {path}", file=sys.stderr)


# ------------------------------------------------------------------------------------------
# the two node processes


class _Process:
    """A node in a child process fed over stdin/stdout with 4-byte big-endian length frames."""

    process: subprocess.Popen

    def _write(self, data: bytes) -> None:
        self.process.stdin.write(len(data).to_bytes(4, "big"))
        self.process.stdin.write(data)

    def _read(self) -> bytes:
        head = self.process.stdout.read(4)
        if len(head) < 4:
            raise RuntimeError(f"{type(self).__name__}: the node process exited with "
                               f"{self.process.wait()}")
        return self.process.stdout.read(int.from_bytes(head, "big"))

    def close(self) -> None:
        """End the child (it exits when its input closes) and wait for it."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class PythonOnnxNode(_Process):
    """The Python ONNX node: ``cola_fed.federation.node_process``'s serve loop with torch
    hidden, in ``python -m benchmarks.js_node --python-node``, which also times each
    ``OrtLearner.fit`` and each ONNX Runtime session it creates (written to the file
    ``fit_log``, one line per call)."""

    def __init__(self, env: dict[str, str], fit_log: Path) -> None:
        fit_log.write_text("")
        self.fit_log, self.fit_lines = fit_log, 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.js_node", "--python-node"], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**env, "COLA_FED_BENCH_FIT_LOG": str(fit_log)})
        self.stats: list[dict] = []

    def handle(self, msg, context):
        from flwr.common import serde
        from flwr.proto.message_pb2 import Context as ProtoContext
        from flwr.proto.message_pb2 import Message as ProtoMessage

        self._write(serde.message_to_proto(msg).SerializeToString())
        self._write(serde.context_to_proto(context).SerializeToString())
        self.process.stdin.flush()
        reply = serde.message_from_proto(ProtoMessage.FromString(self._read()))
        context = serde.context_from_proto(ProtoContext.FromString(self._read()))
        stats = json.loads(self._read())
        lines = self.fit_log.read_text().splitlines()
        fits, self.fit_lines = lines[self.fit_lines:], len(lines)
        stats |= {"type": msg.metadata.message_type, "handle_s": stats["seconds"],
                  "fit_s": sum(float(x) for x in fits if not x.startswith("session")),
                  "session_s": sum(float(x.split()[1]) for x in fits if x.startswith("session")),
                  "error": reply.error.reason if reply.has_error() else None}
        self.stats.append(stats)
        return reply, context


def python_node_process() -> None:
    """The Python ONNX node's process: ``node_process.main`` with torch hidden, and
    ``OrtLearner.fit`` timed (the handler is unchanged)."""
    from cola_fed.federation import node_process

    node_process.fix_mmap_threshold()
    sys.meta_path[:] = [node_process.WithoutTorch(f) for f in sys.meta_path]
    from cola_fed.edge.ort_learner import OrtLearner

    fit = OrtLearner.fit
    log = open(os.environ["COLA_FED_BENCH_FIT_LOG"], "a")  # noqa: SIM115 - open for the process

    def timed_fit(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fit(self, *args, **kwargs)
        finally:
            log.write(f"{time.perf_counter() - started!r}\n")
            log.flush()

    OrtLearner.fit = timed_fit
    import onnxruntime

    class TimedSession(onnxruntime.InferenceSession):
        """Session creation timed (the learner creates its sessions in its first fit)."""

        def __init__(self, *args, **kwargs):
            started = time.perf_counter()
            super().__init__(*args, **kwargs)
            log.write(f"session {time.perf_counter() - started!r}\n")
            log.flush()

    onnxruntime.InferenceSession = TimedSession
    node_process.serve(sys.stdin.buffer, sys.stdout.buffer, without_torch=True)


class JsNode(_Process):
    """The JavaScript node (``node-process.mjs``): fed each message as a SuperLink feeds a
    node (object tree + deflated objects); its reply comes back the same way and is checked
    and inflated as the SuperLink does."""

    def __init__(self, node_config: dict, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["node", "--expose-gc", *os.environ.get("COLA_FED_BENCH_NODE_FLAGS", "").split(),
             str(JS_NODE_PROCESS), node_config_arg(node_config),
             str(JS_NODE)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.stats: list[dict] = []

    def handle(self, msg, context):
        from flwr.proto.message_pb2 import ObjectTree
        from flwr.supercore.inflatable.inflatable_object import (
            get_all_nested_objects,
            get_object_id,
            get_object_tree,
        )
        from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

        objects = get_all_nested_objects(msg)
        self._write(get_object_tree(msg).SerializeToString())
        self._write(str(len(objects)).encode())
        for object_id, obj in objects.items():
            self._write(object_id.encode() + obj.deflate())
        self.process.stdin.flush()
        tree = ObjectTree.FromString(self._read())
        contents = {}
        for _ in range(int(self._read())):
            frame = self._read()
            object_id, content = frame[:64].decode(), frame[64:]
            if get_object_id(content) != object_id:  # the SuperLink checks every pushed object
                raise RuntimeError(f"the JavaScript node pushed object {object_id} with bytes "
                                   f"whose id is {get_object_id(content)}")
            contents[object_id] = content
        reply = inflate_object_from_contents(tree.object_id, contents)
        stats = json.loads(self._read())
        # What the SuperLink does with a pushed reply: its id is its object id, and it must
        # answer the message that was pulled (whose id, here, is its object id too; the grid
        # knows it under the id it gave it, so the reply is filed under that one).
        if reply.metadata.reply_to_message_id != msg.object_id:
            raise RuntimeError("the JavaScript node's reply answers another message")
        reply.metadata.__dict__["_message_id"] = tree.object_id
        reply.metadata.__dict__["_reply_to_message_id"] = msg.metadata.message_id
        stats |= {"type": msg.metadata.message_type}
        self.stats.append(stats)
        return reply, context


def node_config_arg(config: dict) -> str:
    """A node config as ``--node-config`` takes it: ``key=value`` pairs, values in TOML."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in config.items())


def node_version() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


# ------------------------------------------------------------------------------------------
# the tasks


def write_digits_csv(path: Path, rows: int) -> Path:
    """A node's own digits CSV: 64 pixel columns in [0, 1], then ``label``."""
    from cola_fed.tasks.digits import load_digits

    features, labels = load_digits()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"p{i}" for i in range(64)), "label"])
        for row in range(min(rows, len(labels))):
            writer.writerow([*(repr(float(v)) for v in features[row]), int(labels[row])])
    return path


def write_reviews_csv(path: Path, rows: int) -> Path:
    """A node's own reviews: ``text``, ``label`` (the first ``rows`` of Rotten Tomatoes)."""
    from cola_fed.tasks.text_classification import load_rotten_tomatoes

    reviews = load_rotten_tomatoes()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(reviews.texts[:rows], reviews.labels[:rows]))
    return path


#: task -> (run config, CSV writer): digits as tests/test_js_node.py runs it; text as the demo
#: run of benchmarks.edge (where the Python ONNX node peaked at 133 MB)
TASKS = {
    "digits": ({"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 1},
               write_digits_csv),
    "text": ({"task.batch-size": 32, "task.max-length": 48, "task.eval-batches": 4,
              "optimizer.lr": 0.004}, write_reviews_csv),
}


def measure(task: str, rounds: int, rows: int, *, js_arena_off: bool = False) -> dict:
    """One federation of the two nodes on ``task``; their per-message stats and summary."""
    from cola_fed.config import RunConfig
    from cola_fed.federation.server import build_strategy

    task_config, write_csv = TASKS[task]
    with tempfile.TemporaryDirectory(prefix="js-node-bench-") as folder:
        tmp = Path(folder)
        data = write_csv(tmp / "data.csv", rows)
        env = {**os.environ, "COLA_FED_HOME": str(tmp / "home"),
               "COLA_FED_CACHE": str(tmp / "cache")}

        def node_config(name: str) -> dict:
            return {"data-path": str(data), "state-dir": str(tmp / f"state-{name}"),
                    "graph-cache": str(tmp / f"graphs-{name}"),
                    "known-servers": str(tmp / f"known-{name}.json")}

        config = RunConfig.from_flat({"num-server-rounds": rounds, "edge.graphs": True,
                                      "strategy.min-available-nodes": 2,
                                      "strategy.evaluate-every": rounds, **task_config})
        strategy = build_strategy(config)
        python = PythonOnnxNode(env, tmp / "fit-times.txt")
        js = JsNode({"partition-id": 1, "num-partitions": 2, **node_config("js")},
                    {**env, "COLA_FED_BENCH_ORT_ARENA": "off" if js_arena_off else "on"})
        python_config = {**node_config("python"), "backend": "onnx"}
        seconds, sessions = run_side_by_side(
            task, strategy, {PYTHON_NODE: ("python", python), JS_NODE: ("js", js)}, rounds,
            prepare=lambda grid: grid.contexts[PYTHON_NODE].node_config.update(python_config))
    assert all(s.backend == "onnx" for s in sessions.values())
    assert not any(s["torch_imported"] for s in python.stats)
    return summarise(python.stats, js.stats) | {"rounds": rounds, "rows": rows,
                                                 "run_config": task_config,
                                                 "wall_s": seconds}


def run_side_by_side(task: str, strategy, nodes: dict, rounds: int, prepare=None
                     ) -> tuple[float, dict]:
    """Run ``strategy`` for ``rounds`` over a LocalGrid of the node processes ``nodes`` (node id
    -> (name, process)); every node must train in every round. The wall seconds, and the
    strategy's session of each node."""
    from cola_fed.federation.local_grid import LocalGrid

    started = time.perf_counter()
    try:
        grid = LocalGrid(len(nodes), processes={n: proc for n, (_, proc) in nodes.items()},
                         keep_delivered=False)
        if prepare is not None:
            prepare(grid)
        strategy.start(grid, num_rounds=rounds, timeout=600)
    finally:
        for _, proc in nodes.values():
            proc.close()
    seconds = time.perf_counter() - started
    sessions = {node: strategy.sessions.get(node) for node in nodes}
    trained = {node: (s.rounds_trained if s is not None else 0) for node, s in sessions.items()}
    errors = [f"{name}: {s['error']}" for name, proc in nodes.values() for s in proc.stats
              if s.get("error")]
    if trained != dict.fromkeys(nodes, rounds):
        raise RuntimeError(f"{task}: rounds trained {trained} of {rounds}; errors: {errors}; "
                           f"the run: {strategy.stopped or 'not stopped'}")
    return seconds, sessions


def summarise(python: list[dict], js: list[dict]) -> dict:
    """Peak RSS, step and fit medians of each node, and the JavaScript node's ratios."""
    from benchmarks.common import paired_ratio

    def node(stats: list[dict], extra: tuple[str, ...] = ()) -> dict:
        train = [s for s in stats if s["type"] == "train"]
        hello = [s for s in stats if s["type"] != "train"]
        times = {key: [s[key] for s in train]
                 for key in ("handle_s", "fit_s", "session_s", *extra)}
        times["fit_without_sessions_s"] = [s["fit_s"] - s["session_s"] for s in train]
        row = {"peak_rss_mb": max(s["peak_rss_mb"] for s in stats),
               "after_hello_peak_rss_mb": hello[-1]["peak_rss_mb"] if hello else None,
               "held_rss_mb": [s["held_rss_mb"] for s in stats],
               "hello_s": [s["handle_s"] for s in hello],
               "train_message_mb": [s["message_bytes"] / 1e6 for s in train]}
        for key, values in times.items():
            row[key.removesuffix("_s") + "_median_s"] = statistics.median(values)
            row[key] = values
        return row

    py, js_row = node(python), node(js, ("message_s",))
    steps = {"python": {"times_s": py["handle_s"]}, "js": {"times_s": js_row["handle_s"]}}
    fits = {"python": {"times_s": py["fit_s"]}, "js": {"times_s": js_row["fit_s"]}}
    ratios = {
        "peak_rss": js_row["peak_rss_mb"] / py["peak_rss_mb"],
        "step": js_row["handle_median_s"] / py["handle_median_s"],
        "step_paired": paired_ratio(steps, "js", "python"),
        "step_with_object_codec": js_row["message_median_s"] / py["handle_median_s"],
        "fit": js_row["fit_median_s"] / py["fit_median_s"],
        "fit_paired": paired_ratio(fits, "js", "python"),
        "fit_without_sessions": (js_row["fit_without_sessions_median_s"]
                                 / py["fit_without_sessions_median_s"]),
        "sessions": js_row["session_median_s"] / py["session_median_s"],
    }
    return {"python_onnx_node": py, "js_node": js_row, "js_over_python": ratios,
            "meets": {"js_peak_rss": js_row["peak_rss_mb"] <= TARGET_PEAK_RSS_MB,
                      "step_ratio": ratios["step"] <= TARGET_STEP_RATIO}}


def print_summary(task: str, result: dict) -> None:
    py, js, ratio = result["python_onnx_node"], result["js_node"], result["js_over_python"]
    print(f"{task}: peak RSS python {py['peak_rss_mb']:.1f} MB, js {js['peak_rss_mb']:.1f} MB "
          f"({ratio['peak_rss']:.2f}x); step python {py['handle_median_s'] * 1e3:.1f} ms, js "
          f"{js['handle_median_s'] * 1e3:.1f} ms ({ratio['step']:.2f}x, paired "
          f"{ratio['step_paired']:.2f}x; with the object codec "
          f"{js['message_median_s'] * 1e3:.1f} ms); fit python {py['fit_median_s'] * 1e3:.1f} "
          f"ms, js {js['fit_median_s'] * 1e3:.1f} ms ({ratio['fit']:.2f}x), of which sessions "
          f"python {py['session_median_s'] * 1e3:.1f} ms, js "
          f"{js['session_median_s'] * 1e3:.1f} ms",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
