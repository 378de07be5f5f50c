"""The browser node against the Node.js node: step time and memory, in one run.

Method. One federation per task, driven by the real server strategy through a
:class:`~cola_fed.federation.local_grid.LocalGrid`, as :mod:`benchmarks.js_node` drives it (the
strategy, hello, seals, codecs, Flower's messages and records are real; the SuperLink's transport
is left out). Two nodes, on the same CSV (partitions 0 and 1 of 2, so both take the same shapes
every round; the server gives a partition to one node only):

- node 1001, the Node.js node: ``js/packages/node/bench/node-process.mjs`` (``createColaApp``:
  ``ColaNode`` with the Node.js environment and onnxruntime-node, one thread);
- node 1000, the browser node: ``js/packages/browser/bench/drive-bench.mjs`` opens the bench page
  (``bench/bench-page.ts``, built into a temporary folder, never into the shipped ``dist-web/``)
  in Debian's headless Chromium through playwright-core. The page runs ``ColaNode`` on the
  shipped browser environment (``src/environment.ts``: identity, state files and caches in
  IndexedDB under non-extractable WebCrypto keys; onnxruntime-web on WebAssembly, one thread,
  SIMD). Both nodes are fed the same way: a message's object tree and Flower-deflated objects,
  as a SuperLink hands them out on PullMessages (the browser's reach the page over loopback
  HTTP, outside the timings), answered the same way and checked as the SuperLink checks them.

The grid delivers one message at a time, so the two nodes never run at once, and in each round
the two steps are moments apart: the per-round ratio is paired
(:func:`benchmarks.common.paired_ratio`), steadier than a ratio of medians on a loaded machine.

Figures, per node: the step (one TRAIN message in the node's handler: open the seal, decode,
fit, encode, seal, save), with the Flower object codec around it, the learner's ``fit`` and the
ONNX Runtime sessions made within it, medians over rounds; memory: for Node.js, the process's
peak RSS (``VmHWM``); for the browser, the tab's renderer process's peak RSS (its ``VmHWM`` in
``/proc``), which holds Blink, V8 and onnxruntime-web's WebAssembly memory. Chromium's
``performance.memory`` and CDP's ``JSHeapUsedSize`` count V8's heap only, not the WASM memory
where the graphs' weights and activations live, so they are reported (after a forced garbage
collection) beside the RSS, not instead of it. The whole browser's RSS (every process) is
reported too. WebGPU: the page reports whether ``navigator.gpu`` gives an adapter; the node
runs on WASM either way (WebGPU is never required).

Tasks: ``digits`` and ``text`` (the MiniLM demo shapes), as :mod:`benchmarks.js_node` runs them.

    python -m benchmarks.browser_node [--tasks digits,text] [--rounds 6] [--text-rounds 4]
        [--rows 800] [--out browser_node]

Writes ``benchmarks/results/<out>.json``. Needs the JavaScript build (``make js``) and Chromium
(Debian's ``chromium``, which ``make test`` installs; ``COLA_FED_CHROMIUM`` names another binary).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.js_node import JS_NODE, TASKS, JsNode, node_version, run_side_by_side

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "js" / "packages" / "browser" / "bench"
#: node ids (JsNode runs node-process.mjs as node 1001)
NODE_JS, BROWSER = JS_NODE, 1000


def chromium() -> str:
    path = os.environ.get("COLA_FED_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise SystemExit(f"no Chromium at {path}: install Debian's chromium (apt-get install "
                         "chromium, as `make test` does) or set COLA_FED_CHROMIUM")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="digits,text", help="comma-separated: digits, text")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the digits run")
    parser.add_argument("--text-rounds", type=int, default=4, help="rounds of the text run")
    parser.add_argument("--rows", type=int, default=800, help="rows of the nodes' CSV")
    parser.add_argument("--out", default="browser_node", help="benchmarks/results/<OUT>.json")
    args = parser.parse_args(argv)
    if not (ROOT / "js" / "packages" / "node" / "dist" / "app.js").exists():
        raise SystemExit("the JavaScript node is not built: run `make js` first")
    from benchmarks.common import write_result

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise SystemExit(f"--tasks: unknown {sorted(unknown)}; expected some of {sorted(TASKS)}")
    browser = chromium()
    results = {}
    with tempfile.TemporaryDirectory(prefix="browser-bench-page-") as page:
        subprocess.run(["node", str(BENCH / "build-bench.mjs"), page], cwd=ROOT, check=True)
        for task in tasks:
            rounds = args.text_rounds if task == "text" else args.rounds
            results[task] = measure(task, rounds, args.rows, Path(page), browser)
            print_summary(task, results[task])
    path = write_result(args.out, {
        "config": vars(args), "node": node_version(), "chromium": chromium_version(browser),
        "onnx_threads": 1, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "tasks": results})
    print(f"wrote {path}", file=sys.stderr)


class BrowserNode(JsNode):
    """The browser node (``drive-bench.mjs``): the same frames as :class:`JsNode`'s process."""

    def __init__(self, config: dict, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["node", str(BENCH / "drive-bench.mjs"), json.dumps(config)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.stats: list[dict] = []


def chromium_version(path: str) -> str:
    return subprocess.run([path, "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def measure(task: str, rounds: int, rows: int, page: Path, browser: str) -> dict:
    """One federation of the Node.js and browser nodes on ``task``; their stats and summary."""
    from cola_fed.config import RunConfig
    from cola_fed.federation.server import build_strategy

    task_config, write_csv = TASKS[task]
    with tempfile.TemporaryDirectory(prefix="browser-node-bench-") as folder:
        tmp = Path(folder)
        data = write_csv(tmp / "data.csv", rows)
        env = {**os.environ, "COLA_FED_HOME": str(tmp / "home"),
               "COLA_FED_CACHE": str(tmp / "cache")}
        config = RunConfig.from_flat({"num-server-rounds": rounds, "edge.graphs": True,
                                      "strategy.min-available-nodes": 2,
                                      "strategy.evaluate-every": rounds, **task_config})
        strategy = build_strategy(config)
        node_js = JsNode({"partition-id": 0, "num-partitions": 2, "data-path": str(data),
                          "state-dir": str(tmp / "state-js"), "graph-cache": str(tmp / "graphs-js"),
                          "known-servers": str(tmp / "known-js.json")}, env)
        web = BrowserNode({"page": str(page), "csv": str(data), "nodeId": BROWSER,
                           "partitionId": 1, "numPartitions": 2, "chromium": browser}, env)
        seconds, _ = run_side_by_side(task, strategy, {NODE_JS: ("node.js", node_js),
                                                       BROWSER: ("browser", web)}, rounds)
    return summarise(node_js.stats, web.stats) | {"rounds": rounds, "rows": rows,
                                                   "run_config": task_config,
                                                   "wall_s": seconds}


def summarise(node_js: list[dict], browser: list[dict]) -> dict:
    """Step, fit and memory of each node, and the browser node's ratios to the Node.js node's."""
    from benchmarks.common import paired_ratio

    def node(stats: list[dict]) -> dict:
        train = [s for s in stats if s["type"] == "train"]
        hello = [s for s in stats if s["type"] != "train"]
        row: dict = {"peak_rss_mb": max(s["peak_rss_mb"] for s in stats),
                     "held_rss_mb": [s["held_rss_mb"] for s in stats],
                     "heap_used_mb": [s["heap_used_mb"] for s in stats],
                     "hello_s": [s["handle_s"] for s in hello],
                     "train_message_mb": [s["message_bytes"] / 1e6 for s in train]}
        for key in ("handle_s", "message_s", "fit_s", "session_s", "save_s"):
            if key not in train[0]:
                continue  # save_s: the browser node's only
            values = [s[key] for s in train]
            row[key.removesuffix("_s") + "_median_s"] = statistics.median(values)
            row[key] = values
        without = [s["fit_s"] - s["session_s"] for s in train]
        row["fit_without_sessions_median_s"] = statistics.median(without)
        row["fit_without_sessions_s"] = without
        later = train[1:] or train  # the first TRAIN round makes the sessions of the run
        row["handle_after_first_median_s"] = statistics.median(s["handle_s"] for s in later)
        for key in ("webgpu", "cross_origin_isolated", "page_loaded"):
            if key in stats[0]:
                row[key] = stats[0][key]
        for key in ("browser_pss_mb", "renderers"):
            if key in stats[0]:
                row[key] = [s[key] for s in stats]
        return row

    js, web = node(node_js), node(browser)

    def paired(key: str) -> float:
        return paired_ratio({"browser": {"times_s": web[key]}, "node": {"times_s": js[key]}},
                            "browser", "node")

    ratios = {
        "step": web["handle_median_s"] / js["handle_median_s"],
        "step_paired": paired("handle_s"),
        "step_after_first_paired": paired_ratio(
            {"browser": {"times_s": web["handle_s"][1:]}, "node": {"times_s": js["handle_s"][1:]}},
            "browser", "node"),
        "step_with_object_codec_paired": paired("message_s"),
        "fit_paired": paired("fit_s"),
        "fit_without_sessions_paired": paired("fit_without_sessions_s"),
        "sessions": web["session_median_s"] / max(js["session_median_s"], 1e-9),
        "peak_rss": web["peak_rss_mb"] / js["peak_rss_mb"],
    }
    return {"node_js": js, "browser": web, "browser_over_node_js": ratios}


def print_summary(task: str, result: dict) -> None:
    js, web, ratio = result["node_js"], result["browser"], result["browser_over_node_js"]
    print(f"{task}: step node.js {js['handle_median_s'] * 1e3:.1f} ms, browser "
          f"{web['handle_median_s'] * 1e3:.1f} ms (paired {ratio['step_paired']:.2f}x); fit "
          f"node.js {js['fit_median_s'] * 1e3:.1f} ms, browser {web['fit_median_s'] * 1e3:.1f} "
          f"ms (paired {ratio['fit_paired']:.2f}x); peak RSS node.js {js['peak_rss_mb']:.1f} MB, "
          f"browser tab {web['peak_rss_mb']:.1f} MB (whole browser PSS "
          f"{max(web['browser_pss_mb']):.1f} MB); V8 heap node.js "
          f"{max(js['heap_used_mb']):.1f} MB, tab {max(web['heap_used_mb']):.1f} MB; WebGPU "
          f"{web.get('webgpu')}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
