"""nn.Conv2d targets: Gradient Learning on convolutions is exactly backprop.

An adapter sees a convolution as rows (one row per output position: its receptive field,
unfolded). The server captures the layer's input and output gradient 4-D; the client unfolds
them (``layer_data.to_rows``) and takes the adapter's closed-form VJP. These tests check that
against autograd through an independently written reference model, for every family, with
several clients mixed in one pass, in every server mode; and that ColA Low Rank on a
convolution trains exactly as PEFT's LoRA Conv2d and exports to it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cola_fed import AdaptationData, AdapterSpec, ServerEngine
from cola_fed.adapters.registry import build_adapter
from cola_fed.errors import AdapterError, MalformedPayloadError, TargetError
from cola_fed.gl.layer_data import to_rows
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.gl.targets import layer_info
from cola_fed.wire.codec import decode_adaptation, encode_adaptation

LOWRANK = AdapterSpec(kind="lowrank", rank=3)
LINEAR = AdapterSpec(kind="linear", bias=True)
LINEAR_NO_BIAS = AdapterSpec(kind="linear", bias=False)
MLP = AdapterSpec(kind="mlp", hidden=4, depth=2, activation="tanh")
CONVS = ["conv1", "conv2", "conv3", "conv4"]
TARGETS = [*CONVS, "head"]
CLASSES = 3


class SmallCNN(nn.Module):
    """Convolutions of every geometry the engine supports, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)  # 8x8 -> 8x8
        self.conv2 = nn.Conv2d(5, 6, 3, stride=2, padding=1)  # -> 4x4
        self.conv3 = nn.Conv2d(6, 4, 3, dilation=2, padding=2)  # -> 4x4
        self.conv4 = nn.Conv2d(4, 5, (3, 2), padding=(1, 0), bias=False)  # -> 4x3
        self.head = nn.Linear(5 * 4 * 3, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        h = torch.tanh(self.conv3(h))
        return self.head(torch.tanh(self.conv4(h)).flatten(1))


def cnn(dtype: torch.dtype = torch.float64) -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().to(dtype).eval()


def image_batch(n: int, *, seed: int, dtype: torch.dtype = torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, 8, 8, generator=g, dtype=dtype),
            "labels": torch.randint(0, CLASSES, (n,), generator=g)}


def adapter_state(layout: Layout, spec: AdapterSpec, seed: int) -> dict[str, dict]:
    """Fresh parameters of ``spec`` on every layer, perturbed so that every term matters."""
    rng = np.random.default_rng(seed)
    adapter = build_adapter(spec)
    state = {}
    for info in layout:
        params = adapter.init(info.d_in, info.d_out, rng=rng, dtype=torch.float64)
        state[info.name] = {k: v + torch.from_numpy(rng.normal(0.0, 0.1, tuple(v.shape)))
                            for k, v in params.items()}
    return state


# ------------------------------------------------------------------------------------------------
# the reference: the adapted model written out with F.conv2d, parameters as autograd leaves


def reference_adapter(spec: AdapterSpec, params: dict, info: LayerInfo,
                      x: torch.Tensor) -> torch.Tensor:
    """``g(x)`` of one layer, written independently of the engine (no unfolding for convs)."""
    if not info.is_conv2d:
        return build_adapter(spec).forward(params, x)
    geometry = {"stride": info.stride, "padding": info.padding, "dilation": info.dilation}
    kernel = (info.in_channels, *info.kernel_size)
    if spec.kind == "lowrank":  # a kxk conv to r channels, then a 1x1 conv to C_out
        u = F.conv2d(x, params["A"].reshape(-1, *kernel), **geometry)
        return F.conv2d(u, params["B"].reshape(*params["B"].shape, 1, 1))
    if spec.kind == "linear":  # a conv of the layer's own shape
        return F.conv2d(x, params["weight"].reshape(info.d_out, *kernel), params.get("bias"),
                        **geometry)
    # mlp: a per-position MLP on patches, its first layer a kxk conv, then 1x1 convs
    depth = len(params) // 2
    h = x
    for i in range(depth):
        weight = params[f"fc{i}.weight"]
        if i == 0:
            h = F.conv2d(h, weight.reshape(-1, *kernel), params["fc0.bias"], **geometry)
        else:
            h = F.conv2d(h, weight.reshape(*weight.shape, 1, 1), params[f"fc{i}.bias"])
        if i < depth - 1:
            h = torch.tanh(h)
    return h


def reference_forward(model: SmallCNN, layout: Layout, spec: AdapterSpec, state: dict,
                      x: torch.Tensor) -> torch.Tensor:
    def layer(name: str, h: torch.Tensor) -> torch.Tensor:
        module = getattr(model, name)
        base = (F.linear(h, module.weight, module.bias) if name == "head" else
                F.conv2d(h, module.weight, module.bias, module.stride, module.padding,
                         module.dilation))
        return base + reference_adapter(spec, state[name], layout[name], h)

    h = torch.tanh(layer("conv1", x))
    h = torch.tanh(layer("conv2", h))
    h = torch.tanh(layer("conv3", h))
    return layer("head", torch.tanh(layer("conv4", h)).flatten(1))


def reference_grads(model, layout, spec, state, batch) -> tuple[float, dict]:
    leaves = {layer: {k: v.clone().requires_grad_(True) for k, v in params.items()}
              for layer, params in state.items()}
    logits = reference_forward(model, layout, spec, leaves, batch["x"])
    loss = F.cross_entropy(logits, batch["labels"], ignore_index=-100)
    flat = [(layer, k, v) for layer, params in leaves.items() for k, v in params.items()]
    grads = torch.autograd.grad(loss, [v for _, _, v in flat])
    out: dict[str, dict] = {}
    for (layer, k, _), g in zip(flat, grads):
        out.setdefault(layer, {})[k] = g
    return float(loss.detach()), out


def gl_grads(layout: Layout, spec: AdapterSpec, state: dict, data: AdaptationData) -> dict:
    """What a client computes: unfold the compact data, then the adapter's closed-form VJP."""
    adapter, grads = build_adapter(spec), {}
    for name in data.layer_names:
        x, d = data.layer(name)
        rows_x, rows_d = to_rows(layout[name], x, d)
        grads[name] = adapter.vjp(state[name], torch.from_numpy(np.ascontiguousarray(rows_x)),
                                  torch.from_numpy(np.ascontiguousarray(rows_d)))
    return grads


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    diffs = []
    for layer in a:
        assert a[layer].keys() == b[layer].keys()
        diffs += [(a[layer][k] - b[layer][k]).abs().max().item() for k in a[layer]]
    return max(diffs)


# ------------------------------------------------------------------------------------------------
# (a) Gradient Learning == autograd, every family, clients mixed in one pass


def test_gradient_learning_on_convolutions_is_exactly_backprop():
    model = cnn()
    engine = ServerEngine(copy.deepcopy(model), targets=TARGETS)
    layout = engine.layout
    assert [info.module_type for info in layout] == ["conv2d"] * 4 + ["linear"]
    specs = {"a": LOWRANK, "b": LINEAR, "c": LINEAR_NO_BIAS, "d": MLP}
    states = {c: adapter_state(layout, spec, seed=i) for i, (c, spec) in enumerate(specs.items())}
    batches = {c: image_batch(2 + i, seed=10 + i) for i, c in enumerate(specs)}
    batches["b"]["labels"][1] = -100  # a sample the loss never sees: dropped whole

    data = engine.compute(batches, states, specs=specs)

    assert data["b"].inputs["conv1"].shape[0] == data["b"].grads["conv4"].shape[0] == 2
    assert data["a"].inputs["conv2"].shape == (2, 5, 8, 8)
    assert data["a"].grads["conv2"].shape == (2, 6, 4, 4)
    for client, spec in specs.items():
        loss, expected = reference_grads(model, layout, spec, states[client], batches[client])
        assert data[client].loss == pytest.approx(loss, rel=1e-13)
        assert max(abs(g).max().item() for g in expected["conv1"].values()) > 1e-4
        diff = max_diff(gl_grads(layout, spec, states[client], data[client]), expected)
        print(f"{spec.kind} (bias={spec.bias}): max |GL - autograd| = {diff:.2e}")
        assert diff <= 1e-12, client


class TwoHeads(nn.Module):
    """Two convolutions read one input; the second only sees the last sample's loss."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(2, 3, 3, padding=1)
        self.right = nn.Conv2d(2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros(x.shape[0], 1, 1, 1, dtype=x.dtype)
        keep[-1] = 1.0
        return (self.left(x) + keep * self.right(x)).mean((2, 3))


def test_convolutions_reading_one_input_share_it_and_drop_samples_per_layer():
    torch.manual_seed(0)
    model = TwoHeads().double()
    engine = ServerEngine(copy.deepcopy(model), targets=["left", "right"])
    state = adapter_state(engine.layout, LOWRANK, seed=3)
    g = torch.Generator().manual_seed(4)
    batch = {"x": torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64),
             "labels": torch.tensor([0, 1, 2])}
    data = engine.compute({"a": batch}, {"a": state})["a"]
    assert data.input_of == {"left": "left", "right": "left"} and list(data.inputs) == ["left"]
    assert data.rows["left"] is None and data.rows["right"].tolist() == [2]
    leaves = {n: {k: v.clone().requires_grad_(True) for k, v in p.items()}
              for n, p in state.items()}
    x, infos = batch["x"], engine.layout
    left = model.left(x) + reference_adapter(LOWRANK, leaves["left"], infos["left"], x)
    right = model.right(x) + reference_adapter(LOWRANK, leaves["right"], infos["right"], x)
    keep = torch.tensor([0.0, 0.0, 1.0], dtype=x.dtype).reshape(3, 1, 1, 1)
    loss = F.cross_entropy((left + keep * right).mean((2, 3)), batch["labels"])
    flat = [(n, k, v) for n, p in leaves.items() for k, v in p.items()]
    expected: dict[str, dict] = {}
    for (n, k, _), grad in zip(flat, torch.autograd.grad(loss, [v for *_, v in flat])):
        expected.setdefault(n, {})[k] = grad
    assert max_diff(gl_grads(engine.layout, LOWRANK, state, data), expected) <= 1e-12


# ------------------------------------------------------------------------------------------------
# (c) merged and col modes give the same adaptation data as unmerged


def assert_same_data(a: AdaptationData, b: AdaptationData) -> None:
    assert a.layer_names == b.layer_names
    assert a.loss == pytest.approx(b.loss, rel=1e-13)
    for name in a.layer_names:
        for got, want in zip(a.layer(name), b.layer(name)):
            assert got.shape == want.shape, name
            assert (got - want).abs().max() <= 1e-12 * max(1.0, want.abs().max()), name


@pytest.mark.parametrize("spec", [LOWRANK, LINEAR, LINEAR_NO_BIAS], ids=lambda s: str(s.bias)
                         if s.kind == "linear" else s.kind)
def test_merged_mode_matches_unmerged_on_convolutions(spec):
    # a bias merges only into a layer that has one (conv4 has none)
    engine = ServerEngine(cnn(), targets=CONVS[:3] if spec.bias else CONVS)
    states = {c: adapter_state(engine.layout, spec, seed=i) for i, c in enumerate("ab")}
    batches = {c: image_batch(3, seed=20 + i) for i, c in enumerate("ab")}
    unmerged = engine.compute(batches, states)
    merged = engine.compute(batches, states, mode="merged")
    for client in batches:
        assert_same_data(merged[client], unmerged[client])


def test_col_mode_runs_every_client_against_the_mean_delta_on_convolutions():
    engine = ServerEngine(cnn(), targets=CONVS[:3])
    states = {"a": adapter_state(engine.layout, LOWRANK, seed=1),
              "b": adapter_state(engine.layout, LINEAR, seed=2)}
    batches = {c: image_batch(3, seed=30 + i) for i, c in enumerate(states)}
    # the mean of B A and W (and of b with no bias) is one Linear adapter, run unmerged
    mean = {name: {"weight": (states["a"][name]["B"] @ states["a"][name]["A"]
                              + states["b"][name]["weight"]) / 2,
                   "bias": states["b"][name]["bias"] / 2} for name in engine.layout.names}
    col = engine.compute(batches, states, mode="col")
    unmerged = engine.compute(batches, {c: mean for c in batches})
    for client in batches:
        assert_same_data(col[client], unmerged[client])


# ------------------------------------------------------------------------------------------------
# (d) what cannot be adapted


@pytest.mark.parametrize("module, message", [
    (nn.Conv2d(4, 4, 3, groups=2), "groups=2"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
    (nn.Conv2d(4, 4, 2, padding="same"), "asymmetrically"),
    (nn.Conv2d(4, 4, (3, 4), padding="same"), "asymmetrically"),
])
def test_convolutions_that_are_not_a_plain_matrix_product_are_refused(module, message):
    with pytest.raises(TargetError, match=message):
        layer_info("conv", module)


def test_convolution_geometry_is_described():
    info = layer_info("conv", nn.Conv2d(3, 5, (3, 5), stride=(2, 1), padding=(1, 2),
                                        bias=False))
    assert (info.d_in, info.d_out, info.in_channels, info.has_bias) == (45, 5, 3, False)
    assert (info.kernel_size, info.stride, info.padding) == ((3, 5), (2, 1), (1, 2))
    same = layer_info("conv", nn.Conv2d(3, 5, (3, 5), padding="same", dilation=2))
    assert (same.padding, same.dilation) == ((2, 4), (2, 2))
    assert layer_info("conv", nn.Conv2d(3, 5, 3, padding="valid")).padding == (0, 0)


# ------------------------------------------------------------------------------------------------
# (e) the wire carries convolution data compact, and checks its spatial size


def test_convolution_data_round_trips_the_codec_compact():
    engine = ServerEngine(cnn(), targets=TARGETS)
    states = {"a": adapter_state(engine.layout, LOWRANK, seed=0)}
    batch = image_batch(3, seed=1)
    batch["labels"][0] = -100
    data = engine.compute({"a": batch}, states)["a"]
    back = decode_adaptation(encode_adaptation(data), layout=engine.layout)
    assert back.input_of == data.input_of and back.num_values() == data.num_values()
    assert data.num_values() == sum(t.numel() for t in [*data.inputs.values(),
                                                          *data.grads.values()])
    for name in data.layer_names:
        for got, sent in zip(back.layer(name), data.layer(name)):
            assert got.shape == tuple(sent.shape) and got.ndim == (4 if name != "head" else 2)
            np.testing.assert_array_equal(got, sent.numpy().astype(np.float32))


def test_codec_refuses_convolution_data_of_the_wrong_size():
    engine = ServerEngine(cnn(), targets=["conv2"])
    data = engine.compute({"a": image_batch(2, seed=1)}, {"a": {}})["a"]
    assert decode_adaptation(encode_adaptation(data)).grads["conv2"].shape == (2, 6, 4, 4)
    bad = copy.copy(data)
    bad.grads = {"conv2": data.grads["conv2"][:, :, :, :3]}  # 4x3, the layer gives 4x4
    blob = encode_adaptation(bad)
    decode_adaptation(blob)  # without a layout only the shapes' consistency is checked
    with pytest.raises(MalformedPayloadError, match=r"expected x \[B, 5, H, W\]"):
        decode_adaptation(blob, layout=engine.layout)
    bad.grads = {"conv2": data.grads["conv2"].flatten(1)}
    with pytest.raises(MalformedPayloadError, match="both 2-D or both 4-D"):
        decode_adaptation(encode_adaptation(bad))


# ------------------------------------------------------------------------------------------------
# (b) ColA Low Rank == PEFT LoRA Conv2d; (f) export to PEFT

PEFT_TARGETS = ["conv1", "conv2", "conv4"]  # PEFT's LoRA Conv2d ignores dilation (conv3)


def lora_rows(peft_model) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT's LoRA Conv2d weights as a cola-fed adapter state (rows form)."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            layer, rest = name.removeprefix("base_model.model.").split(".lora_")
            state.setdefault(layer, {})[rest[0]] = param.detach().clone().flatten(1)
    return state


def test_cola_lowrank_on_convolutions_trains_as_peft_lora_conv2d():
    from cola_fed import GradientLearner

    peft = pytest.importorskip("peft")
    steps, lr, wd = 20, 1e-2, 0.01
    base = cnn(torch.float32)
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=PEFT_TARGETS)).eval()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad],
                                  lr=lr, weight_decay=wd)
    engine = ServerEngine(base, targets=PEFT_TARGETS)
    learner = GradientLearner(engine.layout, AdapterSpec(kind="lowrank", rank=4), "adamw",
                              lr=lr, weight_decay=wd, seed=0)
    learner.load_adapter_state(lora_rows(peft_model))
    for step in range(steps):
        batch = image_batch(6, seed=100 + step, dtype=torch.float32)
        optimizer.zero_grad()
        F.cross_entropy(peft_model(batch["x"]), batch["labels"]).backward()
        optimizer.step()
        learner.fit(engine.compute({"c": batch}, {"c": learner.adapter_state()})["c"])

    expected, got = lora_rows(peft_model), learner.adapter_state()
    assert max(p["B"].abs().max().item() for p in expected.values()) > 1e-3  # it did train
    diff = max_diff({k: {p: torch.as_tensor(v) for p, v in params.items()}
                     for k, params in got.items()}, expected)
    print(f"max |ColA - PEFT LoRA Conv2d| after {steps} AdamW steps, float32: {diff:.3e}")
    assert diff <= 1e-5


def test_exported_convolution_adapters_reproduce_cola_outputs_in_peft(tmp_path):
    from cola_fed.export import export_peft

    peft = pytest.importorskip("peft")
    base = cnn(torch.float32)
    engine = ServerEngine(copy.deepcopy(base), targets=[*PEFT_TARGETS, "head"])
    # conv4 and head are exported as modules_to_save: base weights plus a Linear adapter
    specs = {"conv*": AdapterSpec(kind="lowrank", rank=4), "conv4": LINEAR_NO_BIAS,
             "head": LINEAR}

    def layers(*names: str) -> Layout:
        return Layout(tuple(engine.layout[name] for name in names))

    state = {**adapter_state(layers("conv1", "conv2"), specs["conv*"], seed=5),
             **adapter_state(layers("conv4"), LINEAR_NO_BIAS, seed=6),
             **adapter_state(layers("head"), LINEAR, seed=7)}
    state = {name: {k: v.float() for k, v in params.items()} for name, params in state.items()}
    batch = image_batch(4, seed=7, dtype=torch.float32)
    expected = engine.predict(batch, state, spec=specs)

    folder = export_peft(base, state, tmp_path / "lora")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    with torch.no_grad():
        got = loaded(batch["x"])
    assert (got - base(batch["x"])).abs().max() > 1e-2  # the adapters do change the outputs
    assert (got - expected).abs().max() <= 1e-5


def test_dilated_convolution_adapters_do_not_export(tmp_path):
    from cola_fed.export import export_peft

    pytest.importorskip("peft")
    base = cnn(torch.float32)
    engine = ServerEngine(copy.deepcopy(base), targets=["conv3"])
    state = adapter_state(engine.layout, AdapterSpec(kind="lowrank", rank=4), seed=0)
    with pytest.raises(AdapterError, match="ignores dilation"):
        export_peft(base, state, tmp_path / "lora")


@pytest.mark.parametrize("geometry", [
    dict(kernel_size=(1, 1), padding=(40, 40)),  # a 1x1 input padded into thousands of rows
    dict(kernel_size=(16, 16), padding=(0, 0)),  # every pixel repeated 256 times
])
def test_convolution_data_whose_unfolding_outgrows_the_cap_is_refused(geometry):
    """The compact data is small; what the learner would unfold from it is bounded first."""
    from cola_fed.gl.layer_data import output_size, unfolded_values
    from cola_fed.wire.codec import Limits

    kh, kw = geometry["kernel_size"]
    channels, side = (64, 1) if kh == 1 else (4, 60)
    info = LayerInfo("conv", channels * kh * kw, 1, "conv2d", True, **geometry)
    x = np.ones((2, channels, side, side), np.float32)
    d = np.ones((2, 1, *output_size(info, side, side)), np.float32)
    blob = encode_adaptation(AdaptationData({"conv": x}, {"conv": d}, {"conv": "conv"}))
    needed = 4 * (unfolded_values(info, x.shape) + x.size + d.size)
    assert needed > 50 * len(blob)
    layout = Layout((info,))
    assert decode_adaptation(blob, layout=layout, limits=Limits(max_bytes=needed)).grads
    with pytest.raises(MalformedPayloadError, match="decoded and unfolded"):
        decode_adaptation(blob, layout=layout, limits=Limits(max_bytes=needed - 1))
