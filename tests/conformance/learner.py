"""Conformance vectors of the ONNX Runtime learner (``cola_fed.edge.ort_learner.OrtLearner``).

Real train-step graphs (``cola_fed.edge.export``, stripped of their doc strings and metadata so
the file stays small; the Python learner runs the very same stripped bytes) train small layouts:
digits-like Linear layers under Low Rank, Linear and MLP adapters, AdamW and SGD with momentum
and warmup, intervals 1 and 2, each of the three wire forms (rows, weight gradient, parameter
gradient), and one convolution (rows, unfolded by the learner). Each chunk is carried twice: as
``cola_fed.wire.encode_adaptation``'s payload and as its decoded arrays (``raw``, ordered lists
because the JSON file's keys are sorted). After every ``fit`` the vectors record the metrics,
the step, the adapter state (hex float32) and ``to_bytes``.

``to_bytes`` is a safetensors blob whose ``__metadata__`` entries the Rust library writes in
hash order, which varies from process to process; the recorded blobs are normalised to
``{"step": ..., "buffered": ...}`` (same length, and Python reads either order).

Hostile inputs (chunks and states) carry the Python error class they raise; Python checks here
that each leaves its learner unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cola_fed.adapters.registry import build_adapter
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layout import LayerInfo, Layout, assign_specs
from cola_fed.gl.optim_spec import OptimizerSpec
from cola_fed.gl.parameter_gradient import digest, parameter_gradient
from cola_fed.gl.weight_gradient import weight_gradient
from cola_fed.wire.codec import decode_adaptation, encode_adaptation

DIGITS = Layout((LayerInfo("fc1", 64, 64), LayerInfo("fc2", 64, 64), LayerInfo("head", 64, 10)))
SMALL = Layout((LayerInfo("fc1", 16, 12), LayerInfo("fc2", 12, 12), LayerInfo("head", 12, 5)))
CONV = Layout((LayerInfo("conv", 18, 4, module_type="conv2d", kernel_size=(3, 3),
                         stride=(2, 1), padding=(1, 1)),))


# ------------------------------------------------------------------------------------------------
# JSON forms


def _arr(value: Any) -> dict[str, Any]:
    a = np.ascontiguousarray(np.asarray(value))
    return {"dtype": str(a.dtype), "shape": list(a.shape), "hex": a.astype(a.dtype.newbyteorder(
        "<")).tobytes().hex()}


def _state(state: Any) -> dict[str, Any]:
    return {n: {p: _arr(np.asarray(v, dtype=np.float32)) for p, v in ps.items()}
            for n, ps in state.items()}


def _raw(data: AdaptationData) -> dict[str, Any]:
    """A chunk's fields with their order kept (lists of pairs)."""
    loss = float(data.loss)
    return {
        # decode_adaptation fills inputs from a set (hash order): sorted here, as order is moot
        "inputs": [[k, _arr(v)] for k, v in sorted(data.inputs.items())],
        "grads": [[k, _arr(v)] for k, v in data.grads.items()],
        "input_of": [[k, v] for k, v in data.input_of.items()],
        "rows": [[k, None if v is None else _arr(v)] for k, v in data.rows.items()],
        "loss": None if loss != loss else loss,
        "num_samples": int(data.num_samples),
        "weight_grads": [[k, [_arr(g), _arr(b)]] for k, (g, b) in data.weight_grads.items()],
        "param_grads": [[k, [[p, _arr(v)] for p, v in gs.items()]]
                        for k, gs in data.param_grads.items()],
        "param_at": [[k, v] for k, v in data.param_at.items()],
    }


def _normalised_bytes(blob: bytes) -> str:
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    meta = header["__metadata__"]
    swapped = json.dumps({"buffered": meta["buffered"], "step": meta["step"]},
                         separators=(",", ":"))
    canonical = json.dumps({"step": meta["step"], "buffered": meta["buffered"]},
                           separators=(",", ":"))
    text = blob[8:8 + size].decode()
    assert text.count(swapped) + text.count(canonical) == 1
    text = text.replace(swapped, canonical)
    out = blob[:8] + text.encode() + blob[8 + size:]
    assert len(out) == len(blob)
    return out.hex()


def _spec_json(spec: AdapterSpec) -> dict[str, Any]:
    values = spec.to_dict()
    return values


def _layout_json(layout: Layout) -> list[dict[str, Any]]:
    return [{**d, **{k: list(d[k]) for k in ("kernel_size", "stride", "padding", "dilation")}}
            for d in layout.to_dict()]


# ------------------------------------------------------------------------------------------------
# graphs


def _strip(model_bytes: bytes) -> bytes:
    import onnx

    model = onnx.load_from_string(model_bytes)

    def strip_graph(graph: Any) -> None:
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    strip_graph(attribute.g)
        for value in [*graph.value_info, *graph.input, *graph.output]:
            value.doc_string = ""
            del value.metadata_props[:]
        del graph.metadata_props[:]

    strip_graph(model.graph)
    del model.metadata_props[:]
    model.doc_string = ""
    return model.SerializeToString()


_GRAPHS: dict[str, bytes] = {}


def _graphs(layout: Layout, specs: Any, optimizer: OptimizerSpec,
            forms: dict[str, tuple[str, ...]]) -> dict[str, bytes]:
    """Stripped graphs of every layer: rows, plus the forms ``forms[layer]`` names."""
    from cola_fed.edge.export import export_train_step
    from cola_fed.edge.graphs import GraphKey

    out = {}
    for name, spec in assign_specs(layout, specs).items():
        info = layout[name]
        for form in ("rows", *forms.get(name, ())):
            key = GraphKey(spec, info.d_in, info.d_out, optimizer.name, optimizer.nesterov, form)
            if key.name not in _GRAPHS:
                _GRAPHS[key.name] = _strip(export_train_step(key))
            out[key.name] = _GRAPHS[key.name]
    return out


# ------------------------------------------------------------------------------------------------
# chunks


def _rows_chunk(rng: np.random.Generator, layout: Layout, layers: list[str], n: int,
                *, shared: dict[str, str] | None = None, scale: float = 0.05,
                loss: float = 1.0) -> AdaptationData:
    """Rows for ``layers``; ``shared[layer] = other`` reads a random subset of other's rows."""
    shared = shared or {}
    data = AdaptationData({}, {}, {}, loss=loss, num_samples=n)
    for name in layers:
        info = layout[name]
        if name in shared:
            source = shared[name]
            count = n // 2 + 1
            data.input_of[name] = source
            data.rows[name] = np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
            data.grads[name] = (rng.standard_normal((count, info.d_out)) * scale).astype(
                np.float32)
            continue
        if info.is_conv2d:
            from cola_fed.gl.layer_data import output_size

            b, h, w = 2, 6, 5
            ho, wo = output_size(info, h, w)
            data.inputs[name] = rng.standard_normal((b, info.in_channels, h, w)).astype(
                np.float32)
            data.grads[name] = (rng.standard_normal((b, info.d_out, ho, wo)) * scale).astype(
                np.float32)
        else:
            data.inputs[name] = rng.standard_normal((n, info.d_in)).astype(np.float32)
            data.grads[name] = (rng.standard_normal((n, info.d_out)) * scale).astype(np.float32)
        data.input_of[name] = name
        data.rows[name] = None
    return data


def _as_weight_gradient(data: AdaptationData, layout: Layout, layers: list[str]) -> None:
    """Move ``layers`` of ``data`` from rows to ``(G, g_bias)`` in float32, as a server does."""
    for name in layers:
        x, d = data.layer(name)
        g, gb = weight_gradient(layout[name], np.asarray(x, np.float32), np.asarray(d, np.float32))
        data.weight_grads[name] = (np.asarray(g, np.float32), np.asarray(gb, np.float32))
        _drop_rows(data, name)


def _as_parameter_gradient(data: AdaptationData, layout: Layout, specs: dict[str, AdapterSpec],
                           state: Any, layers: list[str]) -> None:
    """Move ``layers`` of ``data`` to their parameter gradient at ``state``, as a server does."""
    for name in layers:
        x, d = data.layer(name)
        params = {p: np.asarray(v, np.float32) for p, v in state[name].items()}
        grads = parameter_gradient(layout[name], build_adapter(specs[name]), params, x, d)
        data.param_grads[name] = {p: g.detach().numpy().astype(np.float32)
                                  for p, g in grads.items()}
        data.param_at[name] = digest(params)
        _drop_rows(data, name)


def _drop_rows(data: AdaptationData, name: str) -> None:
    del data.grads[name]
    source = data.input_of.pop(name)
    data.rows.pop(name, None)
    if source not in data.input_of.values():
        del data.inputs[source]


def _wire(data: AdaptationData, layout: Layout) -> tuple[AdaptationData, dict[str, Any]]:
    """The chunk as it reaches a node: encoded, decoded; and its JSON form."""
    blob = encode_adaptation(data)
    decoded = decode_adaptation(blob, layout=layout)
    return decoded, {"blob": blob.hex(), "raw": _raw(decoded)}


# ------------------------------------------------------------------------------------------------
# cases


def _case(name: str, layout: Layout, specs: Any, optimizer: OptimizerSpec, *, seed: int,
          interval: int, forms: dict[str, tuple[str, ...]], plan: list[dict[str, Any]],
          data_seed: int) -> tuple[dict[str, Any], Any]:
    """Run one learner over chunks made by ``plan`` (per fit: rows of which layers, which go as
    G, which as parameter gradient, how many rows), recording everything after every fit."""
    from cola_fed.edge.ort_learner import OrtLearner

    graphs = _graphs(layout, specs, optimizer, forms)
    learner = OrtLearner(layout, specs, optimizer, graphs, seed=seed, interval=interval)
    assigned = assign_specs(layout, specs)
    rng = np.random.default_rng(data_seed)
    record: dict[str, Any] = {
        "name": name, "layout": _layout_json(layout),
        "specs": [[k, _spec_json(v)] for k, v in
                  (specs.items() if isinstance(specs, dict) else [("*", specs)])],
        "optimizer": optimizer.to_dict(), "seed": seed, "interval": interval,
        "graphs": sorted(graphs), "initial": _state(learner.adapter_state()),
        "initial_bytes": _normalised_bytes(learner.to_bytes()), "fits": []}
    for i, step in enumerate(plan):
        data = _rows_chunk(rng, layout, step["layers"], step.get("n", 8),
                           shared=step.get("shared"), loss=0.5 + i)
        _as_weight_gradient(data, layout, step.get("g", []))
        # parameter gradients at the parameters this interval steps from
        _as_parameter_gradient(data, layout, assigned, learner.adapter_state(), step.get("p", []))
        decoded, chunk = _wire(data, layout)
        metrics = learner.fit(decoded)
        record["fits"].append({
            "chunk": chunk, "metrics": metrics, "step": learner.step,
            "state": _state(learner.adapter_state()),
            "bytes": _normalised_bytes(learner.to_bytes())})
    return record, learner


def _cases() -> list[tuple[dict[str, Any], Any]]:
    adamw = OptimizerSpec(name="adamw", lr=1e-2, weight_decay=1e-2, warmup_steps=2,
                          total_steps=7)
    sgd = OptimizerSpec(name="sgd", lr=5e-2, momentum=0.9, weight_decay=1e-3, warmup_steps=1,
                        total_steps=9, max_grad_norm=0.05)
    nesterov = OptimizerSpec(name="sgd", lr=3e-2, momentum=0.8, nesterov=True, warmup_steps=1)
    digits_rows = [{"layers": ["fc1", "fc2", "head"], "n": 32, "shared": {"fc2": "fc1"}}
                   for _ in range(4)]
    cases = [
        _case("digits-lowrank-adamw-i1-rows", DIGITS, AdapterSpec(kind="lowrank", rank=4),
              adamw, seed=11, interval=1, forms={}, plan=digits_rows, data_seed=1),
        _case("small-linear-sgd-i2-weight-gradient", SMALL, AdapterSpec(kind="linear",
                                                                       bias=True),
              sgd, seed=12, interval=2, forms={"fc1": ("weight-gradient",),
                                               "fc2": ("weight-gradient",)},
              plan=[{"layers": ["fc1", "fc2", "head"], "g": ["fc2"]},
                    {"layers": ["fc1", "fc2", "head"], "g": ["fc1", "fc2"], "n": 5},
                    {"layers": ["fc1", "fc2"], "g": ["fc1"]},
                    {"layers": ["fc1", "head"], "n": 3},
                    {"layers": ["fc2", "head"], "g": ["fc2"]}],
              data_seed=2),
        _case("small-mlp-adamw-i2-parameter-gradient", SMALL,
              {"fc*": AdapterSpec(kind="mlp", hidden=4, depth=2, growth=2, activation="gelu"),
               "head": AdapterSpec(kind="lowrank", rank=2)},
              adamw, seed=13, interval=2,
              forms={"fc1": ("parameter-gradient",), "head": ("parameter-gradient",)},
              plan=[{"layers": ["fc1", "fc2", "head"], "p": ["fc1", "head"]},
                    {"layers": ["fc1", "fc2"], "p": ["fc1"]},
                    {"layers": ["fc1", "fc2", "head"], "p": ["fc1", "head"], "n": 4},
                    {"layers": ["fc1", "head"], "p": ["fc1", "head"]},
                    {"layers": ["fc2", "head"], "p": ["head"]}],
              data_seed=3),
        _case("small-partial-sgd-nesterov-i1", SMALL,
              {"fc1": AdapterSpec(kind="lowrank", rank=3),
               "head": AdapterSpec(kind="linear", bias=False)},
              nesterov, seed=14, interval=1, forms={},
              plan=[{"layers": ["fc1", "head"]}, {"layers": ["head"], "n": 1},
                    {"layers": ["fc1", "head"]}], data_seed=4),
        _case("conv-lowrank-sgd-i1-rows", CONV, AdapterSpec(kind="lowrank", rank=2), sgd,
              seed=15, interval=1, forms={}, plan=[{"layers": ["conv"]} for _ in range(3)],
              data_seed=5),
    ]
    return cases


# ------------------------------------------------------------------------------------------------
# hostile inputs


def _refused(learner: Any, action: Any) -> str:
    before = learner.to_bytes()
    state_before = learner.state_dict()
    try:
        action()
    except Exception as err:  # the class name is the vector
        after = learner.state_dict()
        assert after["step"] == state_before["step"]
        assert len(after["buffer"]) == len(state_before["buffer"])
        for n, ps in state_before["params"].items():
            for p, v in ps.items():
                assert np.array_equal(after["params"][n][p], v)
        assert len(learner.to_bytes()) == len(before)
        return type(err).__name__
    raise AssertionError("a hostile input was accepted")


def _hostile(cases: list[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
    """Chunks each case's final learner refuses (by the class of error Python raises)."""
    by_name = {record["name"]: (record, learner) for record, learner in cases}
    out = []

    def add(case: str, label: str, data: AdaptationData) -> None:
        _, learner = by_name[case]
        error = _refused(learner, lambda: learner.fit(data))
        out.append({"case": case, "label": label, "chunk": _raw(data), "error": error})

    rng = np.random.default_rng(99)
    # the digits case: interval 1, rows only (no -g / -p graphs)
    rows = lambda: _rows_chunk(rng, DIGITS, ["fc1", "fc2", "head"], 6)  # noqa: E731
    data = rows()
    data.grads["nope"], data.input_of["nope"] = data.grads["head"], "head"
    add("digits-lowrank-adamw-i1-rows", "unknown layer", data)
    data = rows()
    data.inputs["fc1"] = data.inputs["fc1"][:, :63].copy()
    add("digits-lowrank-adamw-i1-rows", "x of the wrong width", data)
    data = rows()
    data.grads["head"] = data.grads["head"][:5].copy()
    add("digits-lowrank-adamw-i1-rows", "d rows do not match x rows", data)
    data = rows()
    data.grads["fc2"][3, 1] = np.nan
    add("digits-lowrank-adamw-i1-rows", "NaN in d", data)
    data = rows()
    data.inputs["fc1"][0, 0] = np.inf
    add("digits-lowrank-adamw-i1-rows", "inf in x", data)
    data = _rows_chunk(rng, DIGITS, ["fc1", "fc2"], 6, shared={"fc2": "fc1"})
    data.rows["fc2"] = data.rows["fc2"].copy()
    data.rows["fc2"][-1] = 6
    add("digits-lowrank-adamw-i1-rows", "row index out of range", data)
    data = _rows_chunk(rng, DIGITS, ["fc1", "fc2"], 6, shared={"fc2": "fc1"})
    data.rows["fc2"] = data.rows["fc2"].astype(np.float32)
    add("digits-lowrank-adamw-i1-rows", "row indices not integers", data)
    data = _rows_chunk(rng, DIGITS, ["fc1", "fc2"], 6)
    data.input_of["fc2"] = "missing"
    add("digits-lowrank-adamw-i1-rows", "input rows missing", data)
    data = rows()
    _as_weight_gradient(data, DIGITS, ["fc1"])
    add("digits-lowrank-adamw-i1-rows", "weight gradient without its graph", data)
    data = rows()
    _record, learner = by_name["digits-lowrank-adamw-i1-rows"]
    _as_parameter_gradient(data, DIGITS, assign_specs(DIGITS, AdapterSpec(kind="lowrank",
                                                                          rank=4)),
                           learner.adapter_state(), ["fc1"])
    add("digits-lowrank-adamw-i1-rows", "parameter gradient without its graph", data)
    data = rows()
    data.weight_grads["head"] = (np.zeros((10, 64), np.float32), np.zeros(10, np.float32))
    add("digits-lowrank-adamw-i1-rows", "a layer in two forms", data)

    # the linear case: G graphs for fc1 and fc2
    small = lambda: _rows_chunk(rng, SMALL, ["fc1", "fc2", "head"], 4)  # noqa: E731
    data = small()
    _as_weight_gradient(data, SMALL, ["fc1"])
    data.weight_grads["fc1"] = (data.weight_grads["fc1"][0][:, :15].copy(),
                                data.weight_grads["fc1"][1])
    add("small-linear-sgd-i2-weight-gradient", "G of the wrong shape", data)
    data = small()
    _as_weight_gradient(data, SMALL, ["fc2"])
    data.weight_grads["fc2"][1][2] = np.nan
    add("small-linear-sgd-i2-weight-gradient", "NaN in g_bias", data)

    # the MLP case: parameter-gradient graphs for fc1 and head; its learner holds one chunk
    case = "small-mlp-adamw-i2-parameter-gradient"
    _record, learner = by_name[case]
    assigned = assign_specs(SMALL, {"fc*": AdapterSpec(kind="mlp", hidden=4, depth=2, growth=2,
                                                       activation="gelu"),
                                    "head": AdapterSpec(kind="lowrank", rank=2)})
    assert len(learner.state_dict()["buffer"]) == 1  # five fits, interval 2
    data = small()
    _as_parameter_gradient(data, SMALL, assigned, learner.adapter_state(), ["fc1"])
    data.param_at["fc1"] = "0" * 64
    add(case, "stale parameter-gradient digest", data)
    data = small()
    stale = {n: {p: np.asarray(v) + 0.01 for p, v in ps.items()}
             for n, ps in learner.adapter_state().items()}
    _as_parameter_gradient(data, SMALL, assigned, stale, ["head"])
    add(case, "parameter gradient at other adapters", data)
    data = small()
    _as_parameter_gradient(data, SMALL, assigned, learner.adapter_state(), ["fc1"])
    data.param_grads["fc1"]["fc0.weight"] = data.param_grads["fc1"]["fc0.weight"][:3].copy()
    add(case, "parameter gradient of the wrong shape", data)
    data = small()
    _as_parameter_gradient(data, SMALL, assigned, learner.adapter_state(), ["fc1"])
    del data.param_grads["fc1"]["fc2.bias"]
    add(case, "parameter gradient missing a parameter", data)
    data = small()
    _as_parameter_gradient(data, SMALL, assigned, learner.adapter_state(), ["fc1"])
    data.param_grads["fc1"]["fc1.bias"][0] = np.inf
    add(case, "inf in a parameter gradient", data)
    data = small()
    _as_parameter_gradient(data, SMALL, assigned, learner.adapter_state(), ["fc2"])
    add(case, "parameter gradient without its graph", data)
    data = small()  # the buffered chunk carries head as a parameter gradient: rows now mix
    add(case, "parameter gradient and rows in one interval", data)
    return out


def _hostile_states(cases: list[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
    """Learner states ``load_bytes`` refuses."""
    from safetensors.numpy import load
    from safetensors.numpy import save as unordered_save

    def save(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
        return bytes.fromhex(_normalised_bytes(unordered_save(tensors, metadata=metadata)))

    by_name = {record["name"]: (record, learner) for record, learner in cases}
    out = []

    def add(case: str, label: str, blob: bytes) -> None:
        _, learner = by_name[case]
        error = _refused(learner, lambda: learner.load_bytes(blob))
        out.append({"case": case, "label": label, "blob": blob.hex(), "error": error})

    case = "small-linear-sgd-i2-weight-gradient"
    good = bytes.fromhex(_normalised_bytes(by_name[case][1].to_bytes()))
    tensors = load(good)
    meta = {"step": "5", "buffered": "1"}
    add(case, "truncated", good[:-3])
    add(case, "not safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    wrong = dict(tensors)
    wrong["p/fc1/weight"] = np.zeros((12, 15), np.float32)
    add(case, "parameter of the wrong shape", save(wrong, metadata=meta))
    wrong = dict(tensors)
    del wrong["s/head/bias/momentum_buffer"]
    add(case, "a slot missing", save(wrong, metadata=meta))
    wrong = dict(tensors)
    wrong["p/head/weight"] = tensors["p/head/weight"].copy()
    wrong["p/head/weight"][0, 0] = np.nan
    add(case, "NaN parameter", save(wrong, metadata=meta))
    add(case, "negative step", save(tensors, metadata={"step": "-1", "buffered": "1"}))
    add(case, "too many buffered chunks", save(tensors, metadata={"step": "5",
                                                                  "buffered": "2"}))
    wrong = {k: v for k, v in tensors.items() if not k.startswith("p/fc2/")}
    add(case, "a layer missing", save(wrong, metadata=meta))
    case = "small-mlp-adamw-i2-parameter-gradient"
    good = by_name[case][1].to_bytes()
    tensors = load(good)
    at = next(k for k in tensors if k.startswith("b/0/at/"))
    wrong = dict(tensors)
    wrong[at] = np.zeros(32, np.uint8)
    add(case, "buffered gradient at other adapters", save(wrong, metadata={"step": "2",
                                                                          "buffered": "1"}))
    return out


def vectors() -> dict[str, Any]:
    cases = _cases()
    graphs = dict(sorted(_GRAPHS.items()))
    return {
        "graphs": {name: blob.hex() for name, blob in graphs.items()},
        "cases": [record for record, _ in cases],
        "hostile_chunks": _hostile(cases),
        "hostile_states": _hostile_states(cases),
    }
