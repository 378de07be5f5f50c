"""Edge learner on plain ONNX Runtime: parity with the torch learner, and its edge cases."""

import numpy as np
import pytest
import torch

from cola_fed import AdaptationData, AdapterSpec, GradientLearner, OptimizerSpec
from cola_fed.errors import AdapterError, ConfigError, GradientError
from cola_fed.gl.layout import LayerInfo, Layout

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from cola_fed.edge.export import content_hash, export_train_step  # noqa: E402
from cola_fed.edge.graphs import GraphKey  # noqa: E402
from cola_fed.edge.ort_learner import OrtLearner  # noqa: E402

LAYOUT = Layout((LayerInfo("q", 24, 16),))
SPECS = {"lowrank": AdapterSpec(kind="lowrank", rank=4),
         "linear": AdapterSpec(kind="linear", bias=True),
         "mlp": AdapterSpec(kind="mlp", hidden=12, depth=1, activation="gelu")}
OPTIMIZERS = {
    "sgd": OptimizerSpec(name="sgd", lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adamw": OptimizerSpec(name="adamw", lr=1e-3, weight_decay=1e-2, warmup_steps=5,
                           total_steps=300),
}
_graphs: dict = {}


def graphs_for(kind, optimizer):
    key = GraphKey(SPECS[kind], 24, 16, optimizer.name, optimizer.nesterov)
    if key.name not in _graphs:
        _graphs[key.name] = export_train_step(key)
    return {key.name: _graphs[key.name]}


def chunk(rng, rows, scale=1e-2):
    return AdaptationData({"q": rng.standard_normal((rows, 24)).astype(np.float32)},
                          {"q": (rng.standard_normal((rows, 16)) * scale).astype(np.float32)},
                          {"q": "q"})


def learners(kind, optimizer, *, zero_b=False):
    reference = GradientLearner(LAYOUT, SPECS[kind], optimizer=optimizer, dtype=torch.float64,
                                seed=1)
    state = reference.adapter_state()
    if not zero_b:  # start away from zero so that every parameter gets a gradient
        g = torch.Generator().manual_seed(2)
        state = {n: {p: torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.1
                     for p, v in ps.items()} for n, ps in state.items()}
        reference.load_adapter_state(state)
    torch32 = GradientLearner(LAYOUT, SPECS[kind], optimizer=optimizer, seed=1)
    torch32.load_adapter_state(state)
    numpy_state = {n: {p: v.numpy().astype(np.float32) for p, v in ps.items()}
                   for n, ps in state.items()}
    edge = OrtLearner(LAYOUT, SPECS[kind], optimizer, graphs_for(kind, optimizer),
                      initial_state=numpy_state)
    return reference, torch32, edge


def flat(state):
    return np.concatenate([np.asarray(state[n][p], dtype=np.float64).ravel()
                           for n in sorted(state) for p in sorted(state[n])])


@pytest.mark.parametrize("kind", SPECS)
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_parity_after_200_steps(kind, opt):
    reference, torch32, edge = learners(kind, OPTIMIZERS[opt])
    rng = np.random.default_rng(0)
    for step in range(200):
        data = chunk(rng, 37 if step % 2 else 19)
        for learner in (reference, torch32, edge):
            learner.fit(data)
    ours, t32 = flat(edge.adapter_state()), flat(torch32.adapter_state())
    ref = flat(reference.adapter_state())
    assert np.isfinite(ours).all()
    if opt == "sgd":
        assert np.abs(ours - t32).max() <= 1e-5
    else:  # Adam amplifies rounding: compare the error distributions against float64
        edge_err, torch_err = np.abs(ours - ref), np.abs(t32 - ref)
        assert np.quantile(edge_err, 0.99) <= 3 * np.quantile(torch_err, 0.99) + 1e-7
        assert edge_err.max() <= 1e-4


def test_lowrank_with_zero_b_and_adamw_stays_finite():
    _, torch32, edge = learners("lowrank", OPTIMIZERS["adamw"], zero_b=True)
    rng = np.random.default_rng(1)
    a_before = edge.adapter_state()["q"]["A"]
    for _ in range(6):  # the first steps run at lr 0 (warmup) and with grad A == 0
        data = chunk(rng, 5)
        edge.fit(data)
        torch32.fit(data)
    after = edge.adapter_state()["q"]
    assert all(np.isfinite(v).all() for v in after.values())
    assert np.abs(after["B"]).max() > 0
    assert np.abs(after["A"] - a_before).max() > 0
    np.testing.assert_allclose(after["A"], torch32.adapter_state()["q"]["A"].numpy(), atol=1e-6)


def test_zero_gradient_and_one_row():
    _, torch32, edge = learners("mlp", OPTIMIZERS["adamw"])
    zero = AdaptationData({"q": np.ones((1, 24), np.float32)}, {"q": np.zeros((1, 16), np.float32)},
                          {"q": "q"})
    for _ in range(3):
        edge.fit(zero)
        torch32.fit(zero)
    for p, v in edge.adapter_state()["q"].items():
        assert np.isfinite(v).all()
        np.testing.assert_allclose(v, torch32.adapter_state()["q"][p].numpy(), atol=1e-7)


def test_bad_chunks_are_refused_and_change_nothing():
    _, _, edge = learners("linear", OPTIMIZERS["sgd"])
    before = edge.state_dict()
    bad = chunk(np.random.default_rng(0), 4)
    bad.grads["q"][1, 2] = np.inf
    with pytest.raises(GradientError, match="non-finite values in d"):
        edge.fit(bad)
    wrong = AdaptationData({"q": np.zeros((2, 23), np.float32)},
                           {"q": np.zeros((2, 16), np.float32)}, {"q": "q"})
    with pytest.raises(GradientError, match=r"expected x \[n, 24\]"):
        edge.fit(wrong)
    after = edge.state_dict()
    assert after["step"] == before["step"] and after["buffer"] == []
    for p, v in after["params"]["q"].items():
        np.testing.assert_array_equal(v, before["params"]["q"][p])
    with pytest.raises(ConfigError, match="no train-step graph"):
        OrtLearner(LAYOUT, SPECS["linear"], OptimizerSpec(), {})


@pytest.mark.parametrize("kind", SPECS)
def test_same_seed_same_initial_adapters_on_both_backends(kind):
    optimizer = OPTIMIZERS["adamw"]
    torch32 = GradientLearner(LAYOUT, SPECS[kind], optimizer=optimizer, seed=7)
    edge = OrtLearner(LAYOUT, SPECS[kind], optimizer, graphs_for(kind, optimizer), seed=7)
    other = OrtLearner(LAYOUT, SPECS[kind], optimizer, graphs_for(kind, optimizer), seed=8)
    ours, theirs = edge.adapter_state()["q"], torch32.adapter_state()["q"]
    for p, v in ours.items():
        np.testing.assert_array_equal(v, theirs[p].numpy())
    if kind != "linear":  # zero-initialised: every seed gives the same
        assert any(not np.array_equal(v, other.adapter_state()["q"][p]) for p, v in ours.items())


@pytest.mark.parametrize("kind", ["lowrank", "mlp"])
def test_clipping_matches_the_torch_learner(kind):
    optimizer = OptimizerSpec(name="sgd", lr=1e-2, momentum=0.9, max_grad_norm=1.0)
    reference = GradientLearner(LAYOUT, SPECS[kind], optimizer=optimizer, seed=3)
    edge = OrtLearner(LAYOUT, SPECS[kind], optimizer, graphs_for(kind, optimizer), seed=3)
    rng = np.random.default_rng(4)
    clipped = 0
    for step in range(50):
        data = chunk(rng, 9, scale=1e-2 if step % 3 else 1.0)  # every third step clips
        metrics = edge.fit(data)
        reference.fit(data)
        clipped += metrics["grad_norm"] > optimizer.max_grad_norm
    assert 10 <= clipped < 50
    ours, theirs = flat(edge.adapter_state()), flat(reference.adapter_state())
    assert np.abs(ours - theirs).max() <= 1e-5


def test_state_bytes_are_shared_by_both_backends():
    optimizer = OPTIMIZERS["adamw"]
    torch32 = GradientLearner(LAYOUT, SPECS["mlp"], optimizer=optimizer, seed=5, interval=2)
    edge = OrtLearner(LAYOUT, SPECS["mlp"], optimizer, graphs_for("mlp", optimizer), seed=5,
                      interval=2)
    rng = np.random.default_rng(6)
    for _ in range(5):  # two steps taken and one chunk buffered
        data = chunk(rng, 8)
        torch32.fit(data)
        edge.fit(data)
    resumed = OrtLearner(LAYOUT, SPECS["mlp"], optimizer, graphs_for("mlp", optimizer),
                         interval=2)
    resumed.load_bytes(torch32.to_bytes())  # a torch node's saved state, resumed on ONNX
    assert resumed.step == 2 and len(resumed.state_dict()["buffer"]) == 1
    last = chunk(rng, 8)
    for learner in (torch32, edge, resumed):
        learner.fit(last)
    reference = flat(torch32.adapter_state())
    for learner in (edge, resumed):
        assert np.abs(flat(learner.adapter_state()) - reference).max() <= 1e-6
    back = GradientLearner(LAYOUT, SPECS["mlp"], optimizer=optimizer, interval=2)
    back.load_bytes(edge.to_bytes())
    np.testing.assert_array_equal(flat(back.adapter_state()), flat(edge.adapter_state()))
    before = flat(resumed.adapter_state())
    state = resumed.state_dict()
    with pytest.raises(AdapterError, match="missing 'slots'"):
        resumed.load_state_dict({"params": state["params"], "step": 1})
    state["slots"]["q"]["fc0.weight"].pop("exp_avg")
    with pytest.raises(AdapterError, match=r"optimizer slots of 'q'/'fc0\.weight'"):
        resumed.load_state_dict(state)
    with pytest.raises(AdapterError, match="unreadable learner state"):
        resumed.load_bytes(b"not a safetensors blob")
    np.testing.assert_array_equal(flat(resumed.adapter_state()), before)


def test_export_is_deterministic():
    key = GraphKey(SPECS["lowrank"], 24, 16, "sgd")
    fresh = export_train_step.__wrapped__  # the export itself, not the per-process cache
    assert content_hash(fresh(key)) == content_hash(fresh(key))


def test_cli_exports_the_graphs_a_run_needs(tmp_path):
    import json

    from cola_fed.cli import main
    from cola_fed.federation.simulate import SIMULATIONS

    assert main(["export-edge", "--run-config", str(SIMULATIONS / "digits.toml"),
                 "--out", str(tmp_path), "--ort"]) == 0
    for manifest_name, suffix in (("manifest.json", "onnx"), ("manifest-ort.json", "ort")):
        manifest = json.loads((tmp_path / manifest_name).read_text())
        # rows, and the parameter gradient that wire.form = "auto" sends
        assert set(manifest) == {"lowrank-r8-64x64-adamw", "linear-bias-64x10-adamw",
                                 "lowrank-r8-64x64-adamw-p", "linear-bias-64x10-adamw-p"}
        for name, digest in manifest.items():
            assert content_hash((tmp_path / f"{name}.{suffix}").read_bytes()) == digest


@pytest.mark.parametrize("kind", ["lowrank", "mlp"])
def test_ort_format_graphs_train_like_the_onnx_graphs(kind):
    from cola_fed.edge.mobile import to_ort_format

    optimizer = OPTIMIZERS["adamw"]
    graphs = graphs_for(kind, optimizer)
    ort_graphs = {name: to_ort_format(model) for name, model in graphs.items()}
    assert all(model[4:8] == b"ORTM" for model in ort_graphs.values())
    onnx_learner = OrtLearner(LAYOUT, SPECS[kind], optimizer, graphs, seed=2)
    mobile_learner = OrtLearner(LAYOUT, SPECS[kind], optimizer, ort_graphs, seed=2,
                                graph_format="ort")
    rng = np.random.default_rng(3)
    for _ in range(20):
        data = chunk(rng, 11)
        onnx_learner.fit(data)
        mobile_learner.fit(data)
    ours, theirs = flat(mobile_learner.adapter_state()), flat(onnx_learner.adapter_state())
    assert np.abs(ours - theirs).max() <= 1e-6
