"""One learner contract, two backends: the PyTorch and the ONNX Runtime learners take the same
steps, refuse the same chunks, and hand their state to each other mid-run for every optimizer
setting; convolution data arrives compact and is unfolded by the learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cola_fed import AdaptationData, AdapterSpec, GradientLearner, OptimizerSpec
from cola_fed.edge import OrtLearner, graph_keys
from cola_fed.edge.export import export_graphs
from cola_fed.errors import AdapterError, GradientError
from cola_fed.gl.layer_data import to_rows
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.gl.learner_base import Learner
from cola_fed.gl.learner_state import state_from_bytes

pytest.importorskip("onnxscript")

LAYOUT = Layout((
    LayerInfo("conv", 3 * 3 * 3, 4, "conv2d", True, (3, 3), (2, 1), (1, 0), (1, 2)),
    LayerInfo("head", 6, 5),
))
SPECS = {"lowrank": AdapterSpec(kind="lowrank", rank=2),
         "linear": AdapterSpec(kind="linear", bias=True),
         "mlp": AdapterSpec(kind="mlp", hidden=4, depth=1, activation="tanh")}
OPTIMIZERS = {
    "adamw": OptimizerSpec(name="adamw", lr=1e-2, weight_decay=0.1),
    "sgd-plain": OptimizerSpec(name="sgd", lr=5e-2),
    "sgd-momentum": OptimizerSpec(name="sgd", lr=5e-2, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov-clipped": OptimizerSpec(name="sgd", lr=5e-2, momentum=0.9, nesterov=True,
                                          max_grad_norm=0.05),
    "adamw-scheduled-clipped": OptimizerSpec(name="adamw", lr=1e-2, warmup_steps=1,
                                             total_steps=9, max_grad_norm=0.05),
}


def chunk(seed: int, *, samples: int = 3) -> AdaptationData:
    """Compact data of both layers: the conv layer's 4-D input and output gradient (rows of
    the head share nothing with it), the head's rows with a row index into shared inputs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 3, 7, 6)).astype(np.float32)
    d = rng.normal(size=(samples, 4, 4, 2)).astype(np.float32)  # 7x6 -> 4x2 for this geometry
    head_x = rng.normal(size=(4, 6)).astype(np.float32)
    head_d = rng.normal(size=(3, 5)).astype(np.float32)
    return AdaptationData({"conv": x, "head": head_x}, {"conv": d, "head": head_d},
                          {"conv": "conv", "head": "head"}, {"head": np.array([0, 2, 3])},
                          loss=1.0, num_samples=samples)


def learners(spec, optimizer, interval=1):
    graphs = export_graphs(graph_keys(LAYOUT, [spec], optimizer).values())
    torch_learner = GradientLearner(LAYOUT, spec, optimizer, seed=5, interval=interval)
    onnx_learner = OrtLearner(LAYOUT, spec, optimizer, graphs, seed=5, interval=interval)
    return torch_learner, onnx_learner


def snapshot(learner) -> dict:
    """A learner's whole state, flattened (its bytes are not canonical: safetensors writes the
    metadata in no fixed order)."""
    state = learner.state_dict()
    flat = {f"p/{n}/{p}": v for n, ps in state["params"].items() for p, v in ps.items()}
    flat.update({f"s/{n}/{p}/{k}": v for n, ps in state["slots"].items()
                 for p, slots in ps.items() for k, v in slots.items()})
    flat.update({f"b/{i}/{n}/{j}": v for i, c in enumerate(state["buffer"])
                 for n, pair in c.items() for j, v in enumerate(pair)})
    return {"step": state["step"], **{k: np.asarray(v).tolist() for k, v in flat.items()}}


def assert_same(a, b, atol=2e-6):
    sa, sb = a.adapter_state(), b.adapter_state()
    for layer, params in sa.items():
        for name, value in params.items():
            assert np.abs(np.asarray(value) - np.asarray(sb[layer][name])).max() <= atol


def test_both_backends_fulfil_the_contract():
    for learner in learners(SPECS["lowrank"], OPTIMIZERS["adamw"]):
        assert isinstance(learner, Learner)


def test_conv_rows_are_torch_unfold():
    data = chunk(0)
    x_rows, d_rows = to_rows(LAYOUT["conv"], *data.layer("conv"))
    expected = torch.nn.functional.unfold(torch.from_numpy(data.inputs["conv"]), (3, 3),
                                          dilation=(1, 2), padding=(1, 0), stride=(2, 1))
    np.testing.assert_array_equal(x_rows, expected.transpose(1, 2).reshape(-1, 27).numpy())
    np.testing.assert_array_equal(d_rows[:8], data.grads["conv"][0].reshape(4, 8).T)


@pytest.mark.parametrize("kind", list(SPECS))
def test_onnx_steps_equal_torch_steps_on_convolutions(kind):
    """The ONNX graphs of a convolution's adapters, fed the unfolded rows, are torch's step."""
    torch_learner, onnx_learner = learners(SPECS[kind], OPTIMIZERS["sgd-nesterov-clipped"])
    for seed in range(4):
        data = chunk(seed)
        a, b = torch_learner.fit(data), onnx_learner.fit(data)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["rows"] == b["rows"] == 3 * 4 * 2 + 3
    assert_same(torch_learner, onnx_learner)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("direction", ["torch-to-onnx", "onnx-to-torch"])
def test_state_moves_between_backends_mid_interval(optimizer, direction):
    """Two steps on one backend, a chunk buffered, then the other backend resumes from the
    saved bytes and ends where a learner that never moved ends."""
    spec, opt = SPECS["mlp"], OPTIMIZERS[optimizer]
    (stay, _), (first_torch, first_onnx) = learners(spec, opt, 2), learners(spec, opt, 2)
    first = first_torch if direction == "torch-to-onnx" else first_onnx
    for seed in range(5):
        stay.fit(chunk(seed))
        first.fit(chunk(seed))
    blob = first.to_bytes()
    second = learners(spec, opt, 2)[1 if direction == "torch-to-onnx" else 0]
    second.load_bytes(blob)
    assert second.step == 2 and len(second.state_dict()["buffer"]) == 1
    for seed in range(5, 9):
        stay.fit(chunk(seed))
        second.fit(chunk(seed))
    assert second.step == stay.step == 4
    assert_same(stay, second, atol=5e-6)


@pytest.mark.parametrize("backend", [0, 1], ids=["torch", "onnx"])
def test_a_rewound_state_steps_as_a_fresh_learner_would(backend):
    """Load an earlier state, then step: nothing of the abandoned step may leak into it."""
    spec, opt = SPECS["lowrank"], OPTIMIZERS["sgd-nesterov-clipped"]
    learner, fresh = learners(spec, opt)[backend], learners(spec, opt)[backend]
    start = learner.state_dict()
    learner.fit(chunk(0))
    learner.load_state_dict(start)
    assert learner.fit(chunk(1))["grad_norm"] == fresh.fit(chunk(1))["grad_norm"]
    assert_same(learner, fresh, atol=0)


def test_a_plain_sgd_state_without_momentum_buffers_still_loads():
    learner, _ = learners(SPECS["linear"], OPTIMIZERS["sgd-plain"])
    learner.fit(chunk(0))
    state = learner.state_dict()
    state["slots"] = {n: {p: {} for p in ps} for n, ps in state["slots"].items()}
    fresh, _ = learners(SPECS["linear"], OPTIMIZERS["sgd-plain"])
    fresh.load_state_dict(state)
    assert_same(learner, fresh, atol=0)


@pytest.mark.parametrize("backend", [0, 1], ids=["torch", "onnx"])
def test_bad_chunks_and_states_are_refused_and_change_nothing(backend):
    learner = learners(SPECS["lowrank"], OPTIMIZERS["adamw"], interval=2)[backend]
    learner.fit(chunk(0))
    before = snapshot(learner)
    good = chunk(1)
    bad_chunks = {
        "spatial size": (dict(good.grads, conv=good.grads["conv"][:, :, :3]), GradientError),
        "channels": (dict(good.grads, conv=np.zeros((3, 5, 4, 2), np.float32)), GradientError),
        "flattened": (dict(good.grads, conv=good.grads["conv"].reshape(3, -1)), GradientError),
        "nan": (dict(good.grads, head=np.full((3, 5), np.nan, np.float32)), GradientError),
        "unknown layer": ({**good.grads, "other": good.grads["head"]}, AdapterError),
    }
    for label, (grads, error) in bad_chunks.items():
        data = AdaptationData(good.inputs, grads, {**good.input_of, "other": "head"}, good.rows)
        with pytest.raises(error):
            learner.fit(data)
        assert snapshot(learner) == before, label
    bad_rows = AdaptationData(good.inputs, good.grads, good.input_of, {"head": np.array([0, 1, 4])})
    with pytest.raises(GradientError, match="row indices"):
        learner.fit(bad_rows)
    state = learner.state_dict()
    state["params"]["conv"]["A"] = state["params"]["conv"]["A"][:, :5]
    with pytest.raises(AdapterError, match="parameters"):
        learner.load_state_dict(state)
    state = learner.state_dict()
    state["slots"]["head"]["B"].pop("exp_avg")
    with pytest.raises(AdapterError, match="slots"):
        learner.load_state_dict(state)
    for step in (-1, 2**53, 10**400):
        state = learner.state_dict()
        state["step"] = step
        with pytest.raises(AdapterError, match="step"):
            learner.load_state_dict(state)
    state = learner.state_dict()
    state["params"]["head"]["A"][0, 0] = np.inf
    with pytest.raises(AdapterError, match="not finite"):
        learner.load_state_dict(state)
    state = learner.state_dict()
    state["slots"]["head"]["A"]["exp_avg_sq"][0, 0] = -1.0
    with pytest.raises(AdapterError, match="negative"):
        learner.load_state_dict(state)
    assert snapshot(learner) == before


def test_malformed_state_files_are_refused_clearly():
    from safetensors.numpy import save

    value = np.zeros((2, 2), np.float32)
    for meta, key in [({"step": "0", "buffered": "1"}, "b/x/x/head"),
                      ({"step": "0", "buffered": "1"}, "b/-1/x/head"),
                      ({"step": "0", "buffered": "1"}, "b/1/x/head"),
                      ({"step": "0", "buffered": str(10**6)}, "p/head/A")]:
        with pytest.raises(AdapterError):
            state_from_bytes(save({key: value}, metadata=meta))
