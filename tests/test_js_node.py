"""The JavaScript node (js/, `cola-fed-node`) in a real Flower federation on loopback.

A real `flower-superlink`, a Python SuperNode and the JavaScript node, each with its own CSV,
run the digits task for several rounds with `flwr run`. The JavaScript node must train in every
round, and its adapters must equal, bit for bit, those of a Python ONNX node given the same CSV,
partition id and seeds in a second federation: both draw the same batches (numpy's PCG64,
ported), start from the same adapters, and run the same train-step graphs on the CPU build of
ONNX Runtime, whose kernels give the same floats from Python and from Node.js.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flower_processes import JS_NODE_BIN, ROOT, FlowerProcesses

from cola_fed.tasks.digits import load_digits
from cola_fed.wire import decode_adapter_state

pytestmark = pytest.mark.slow

ROUNDS = 4


def write_digits_csv(path: Path, rows: np.ndarray) -> Path:
    """A node's own digits CSV: 64 pixel columns in [0, 1], then `label`."""
    features, labels = load_digits()
    lines = [",".join([*(f"p{i}" for i in range(64)), "label"])]
    for row in rows:
        lines.append(",".join([*(repr(float(v)) for v in features[row]), str(int(labels[row]))]))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_config(out: Path) -> dict[str, object]:
    return {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 1,
            "num-server-rounds": ROUNDS, "edge.graphs": True, "strategy.evaluate-every": 1,
            "strategy.min-available-nodes": 2, "strategy.timeout": 120.0,
            "output-dir": str(out)}


def federation(tmp: Path, js_node: bool) -> tuple[dict, dict[str, np.ndarray]]:
    """Partition 0: a Python SuperNode (PyTorch); partition 1: the JavaScript node, or a Python
    SuperNode on ONNX Runtime; each on its own CSV. The metrics and partition 1's adapters."""
    tmp.mkdir()
    csv = [write_digits_csv(tmp / f"node{i}.csv", np.arange(i, 600, 2)) for i in range(2)]
    config = [f'partition-id={i} num-partitions=2 data-path="{csv[i]}" '
              f'state-dir="{tmp / f"state{i}"}" graph-cache="{tmp / f"cache{i}"}" '
              f'known-servers="{tmp / f"known{i}.json"}"' for i in range(2)]
    with FlowerProcesses(tmp) as procs:
        procs.env["COLA_FED_HOME"] = str(tmp / "home")
        procs.start_superlink()
        procs.start_supernode("node0", node_config=config[0])
        if js_node:
            procs.start_js_node("node1", node_config=config[1])
        else:
            procs.start_supernode("node1", node_config=config[1] + ' backend="onnx"')
        try:
            procs.flwr_run(ROOT, run_config(tmp / "out"), timeout=600)
        except AssertionError:
            print(procs.log("node1")[-4000:])
            raise
        log = procs.log("node1")
    metrics = json.loads((tmp / "out" / "metrics.json").read_text())
    state = decode_adapter_state((tmp / "out" / "adapters" / "partition-1.safetensors")
                                 .read_bytes())
    return {"metrics": metrics, "log": log}, {f"{layer}.{p}": v for layer, params in state.items()
                                              for p, v in params.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not JS_NODE_BIN.exists():
        pytest.fail("js/node_modules/.bin/cola-fed-node is missing: run `make js` first")
    tmp = tmp_path_factory.mktemp("js-node")
    return federation(tmp / "js", js_node=True), federation(tmp / "python", js_node=False)


def test_the_javascript_node_trains_every_round(runs):
    (js, _), _ = runs
    nodes = js["metrics"]["nodes"]
    assert nodes["1"]["backend"] == "onnx", js["log"][-3000:]
    assert nodes["1"]["rounds-trained"] == ROUNDS, js["log"][-3000:]
    assert nodes["1"]["last-error"] == ""
    assert "hello: partition 1 joins on the onnx backend" in js["log"]


def test_its_adapters_equal_a_python_onnx_node_s_bit_for_bit(runs):
    (_, js_adapters), (python, python_adapters) = runs
    assert python["metrics"]["nodes"]["1"]["rounds-trained"] == ROUNDS
    assert sorted(js_adapters) == sorted(python_adapters)
    for name, value in python_adapters.items():
        np.testing.assert_array_equal(js_adapters[name], value, err_msg=name)
    # the adapters moved (Low Rank's B starts at zero)
    assert any(np.abs(v).max() > 0 for k, v in python_adapters.items() if k.endswith(".B"))
