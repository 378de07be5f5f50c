"""The parameter-gradient form: the server applies the family's VJP at the adapters it holds and
sends the node its parameters' gradient, marked with their digest. Exact for every family
(convolutions included), summed over an interval, taken alike by both learners, refused unless
computed at the learner's own parameters, and carried checked on the wire."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import vector_batch
from federation_runs import run
from test_conv2d import CONVS, cnn, image_batch

from cola_fed import AdapterSpec, GradientLearner, OptimizerSpec, ServerEngine
from cola_fed.errors import AdapterError, GradientError, MalformedPayloadError
from cola_fed.gl.forms import PARAMETER, choose, to_form, to_forms
from cola_fed.gl.layout import assign_specs
from cola_fed.gl.parameter_gradient import digest
from cola_fed.wire.codec import decode_adaptation, encode_adaptation

SPECS = {"fc1": AdapterSpec(kind="lowrank", rank=4), "fc2": AdapterSpec(kind="mlp", hidden=6),
         "head": AdapterSpec(kind="linear", bias=True)}
OPTIMIZER = OptimizerSpec(name="adamw", lr=1e-2, weight_decay=0.01, max_grad_norm=0.5)


def engine_for(net64, dtype=torch.float64) -> ServerEngine:
    return ServerEngine(copy.deepcopy(net64).to(dtype), targets=["fc1", "fc2", "head"])


def batch(seed: int, n: int = 6, dtype=torch.float64) -> dict:
    b = vector_batch(n, seed=seed)
    b["x"] = b["x"].to(dtype)
    return b


def interval(engine, learner, seeds, dtype, form="parameter-gradient"):
    """The chunks of one interval, computed at ``learner``'s adapters, in ``form``."""
    state = learner.adapter_state()
    chunks = [engine.compute({"c": batch(s, dtype=dtype)}, {"c": state}, specs={"c": SPECS})["c"]
              for s in seeds]
    return to_forms(chunks, engine.layout, assign_specs(engine.layout, SPECS), form,
                    adapters=state)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_every_family_trains_alike_from_rows_and_from_its_parameter_gradient(
        net64, dtype, tolerance):
    """20 AdamW steps with an interval of 2, clipped: Low Rank, MLP and Linear+bias learners fed
    the server's parameter gradient (summed over the interval into one chunk) hold the same
    adapters as learners fed rows."""
    engine = engine_for(net64, dtype)
    rows, grads = (GradientLearner(engine.layout, SPECS, OPTIMIZER, seed=1, interval=2,
                                   dtype=dtype) for _ in range(2))
    for step in range(20):
        seeds = (2 * step, 2 * step + 1)
        for chunk in interval(engine, rows, seeds, dtype, form="rows"):
            rows.fit(chunk)
        chunks = interval(engine, grads, seeds, dtype)
        assert set(chunks[0].param_grads) == set(SPECS) and not chunks[1].layer_names
        for chunk in chunks:
            grads.fit(chunk)
    assert rows.step == grads.step == 20
    for layer, params in rows.adapter_state().items():
        for name, value in params.items():
            assert (grads.adapter_state()[layer][name] - value).abs().max() <= tolerance


@pytest.mark.parametrize("spec", [AdapterSpec(kind="lowrank", rank=3),
                                  AdapterSpec(kind="linear", bias=True),
                                  AdapterSpec(kind="mlp", hidden=4, depth=2, activation="tanh")])
def test_a_convolution_s_parameter_gradient_is_the_learner_s_own(spec):
    """The server unfolds a convolution in torch; the learner in numpy: one gradient."""
    engine = ServerEngine(cnn(), targets=CONVS if spec.kind != "linear" else CONVS[:3])
    learner = GradientLearner(engine.layout, spec, dtype=torch.float64, seed=3)
    state = learner.adapter_state()
    for params in state.values():
        for value in params.values():
            value.add_(torch.randn(value.shape, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(0)) * 0.1)
    learner.load_adapter_state(state)
    data = engine.compute({"c": image_batch(3, seed=1)}, {"c": state}, specs={"c": spec})["c"]
    specs = assign_specs(engine.layout, spec)
    sent = to_form(data, engine.layout, specs, "parameter-gradient", adapters=state)
    expected = learner.gradient(data)
    assert set(sent.param_grads) == set(expected)
    for layer, grads in expected.items():
        for name, value in grads.items():
            assert (sent.param_grads[layer][name] - value).abs().max() <= 1e-12, (layer, name)


def test_a_parameter_gradient_computed_at_other_adapters_is_refused(net64):
    """Stale (a step since), replayed, or claimed at adapters the learner does not hold: the
    chunk is refused and the learner is unchanged."""
    engine = engine_for(net64)
    learner = GradientLearner(engine.layout, SPECS, OPTIMIZER, dtype=torch.float64)
    stale = interval(engine, learner, [0], torch.float64)[0]
    learner.fit(interval(engine, learner, [1], torch.float64)[0])
    before = learner.state_dict()
    with pytest.raises(GradientError, match="other adapters"):
        learner.fit(stale)
    forged = interval(engine, learner, [2], torch.float64)[0]
    forged.param_at["fc1"] = digest({"A": np.zeros(1)})
    with pytest.raises(GradientError, match="other adapters"):
        learner.fit(forged)
    del forged.param_at["fc1"]
    with pytest.raises(GradientError, match="other adapters"):
        learner.fit(forged)
    after = learner.state_dict()
    assert after["step"] == before["step"] == 1 and after["buffer"] == []
    for layer, params in before["params"].items():
        for name, value in params.items():
            assert torch.equal(after["params"][layer][name], value)


def test_shapes_forms_and_values_are_checked(net64):
    engine = engine_for(net64)
    learner = GradientLearner(engine.layout, SPECS, OPTIMIZER, dtype=torch.float64, interval=2)
    good = interval(engine, learner, [0], torch.float64)[0]
    wrong_param = copy.deepcopy(good)
    wrong_param.param_grads["fc1"]["C"] = wrong_param.param_grads["fc1"].pop("A")
    wrong_shape = copy.deepcopy(good)
    wrong_shape.param_grads["head"]["bias"] = torch.zeros(7, dtype=torch.float64)
    not_finite = copy.deepcopy(good)
    not_finite.param_grads["fc2"]["fc0.weight"] *= np.nan
    for bad, match in ((wrong_param, "expected the gradient"),
                       (wrong_shape, "expected the gradient"),
                       (not_finite, "non-finite")):
        with pytest.raises(GradientError, match=match):
            learner.fit(bad)
    assert learner.state_dict()["buffer"] == []
    learner.fit(good)  # then rows for a layer that came as its parameter gradient: refused
    rows = interval(engine, learner, [1], torch.float64, form="rows")[0]
    with pytest.raises(GradientError, match="another form"):
        learner.fit(rows)
    assert len(learner.state_dict()["buffer"]) == 1 and learner.step == 0


def test_a_buffered_parameter_gradient_survives_a_restart_and_a_change_of_backend(net64):
    pytest.importorskip("onnxscript")
    from cola_fed.edge import OrtLearner, graph_keys
    from cola_fed.edge.export import export_graphs

    engine = engine_for(net64, torch.float32)
    keys = graph_keys(engine.layout, [SPECS], OPTIMIZER, form="all")
    assert sum(name.endswith("-p") for name in keys) == 3
    graphs = export_graphs(keys.values())
    stay = GradientLearner(engine.layout, SPECS, OPTIMIZER, seed=1, interval=2)
    chunks = [interval(engine, stay, [s], torch.float32)[0] for s in range(2)]
    stay.fit(chunks[0])
    moved = OrtLearner(engine.layout, SPECS, OPTIMIZER, graphs, seed=1, interval=2)
    moved.load_bytes(stay.to_bytes())
    buffered = moved.state_dict()["buffer"][0]
    assert {n: set(parts) for n, parts in buffered.items()} == {
        n: {"at", *(f"pg.{p}" for p in params)} for n, params in stay.adapter_state().items()}
    with pytest.raises(GradientError, match="other adapters"):  # the buffer pins the adapters
        moved.load_adapter_state(GradientLearner(engine.layout, SPECS, seed=9).adapter_state())
    moved.fit(chunks[1])
    stay.fit(chunks[1])
    assert moved.step == stay.step == 1
    for layer, params in stay.adapter_state().items():
        for name, value in params.items():
            assert np.abs(moved.adapter_state()[layer][name] - value.numpy()).max() <= 1e-6
    rows_only = OrtLearner(engine.layout, SPECS, OPTIMIZER,
                           {n: g for n, g in graphs.items() if not n.endswith("-p")}, seed=1)
    with pytest.raises(GradientError, match="no graph"):
        rows_only.fit(interval(engine, rows_only, [3], torch.float32)[0])
    assert rows_only.step == 0


def test_a_learner_state_with_a_malformed_buffered_parameter_gradient_is_refused(net64):
    from safetensors.numpy import load, save

    engine = engine_for(net64, torch.float32)
    learner = GradientLearner(engine.layout, SPECS, OPTIMIZER, interval=2)
    learner.fit(interval(engine, learner, [0], torch.float32)[0])
    tensors = load(learner.to_bytes())
    at = next(k for k in tensors if k.startswith("b/0/at/"))
    for change in ({at: tensors[at][:16]}, {at.replace("/at/", "/pg./"): tensors[at]}):
        blob = save({**tensors, **change}, metadata={"step": "0", "buffered": "1"})
        with pytest.raises(AdapterError, match="malformed buffered chunk"):
            GradientLearner(engine.layout, SPECS, OPTIMIZER, interval=2).load_bytes(blob)


def test_the_wire_carries_parameter_gradients_checked(net64):
    engine = engine_for(net64, torch.float32)
    learner = GradientLearner(engine.layout, SPECS)
    data = interval(engine, learner, [0], torch.float32)[0]
    back = decode_adaptation(encode_adaptation(data), layout=engine.layout)
    assert back.param_at == data.param_at and not back.row_layers
    for layer, grads in data.param_grads.items():
        for name, value in grads.items():
            np.testing.assert_array_equal(back.param_grads[layer][name], value.numpy())
    learner.fit(back)
    assert learner.step == 1

    def refused(change, match):
        forged = copy.deepcopy(data)
        change(forged)
        with pytest.raises(MalformedPayloadError, match=match):
            decode_adaptation(encode_adaptation(forged), layout=engine.layout)

    refused(lambda d: d.param_at.update(fc1="0" * 63), "SHA-256")
    refused(lambda d: d.param_at.update(fc1="A" * 64), "SHA-256")
    refused(lambda d: d.param_at.update(stray="0" * 64), "carry no gradient")
    refused(lambda d: d.param_grads.update(stray={"A": torch.zeros(2)}), "do not match")
    refused(lambda d: d.param_grads["fc1"].update(A=d.param_grads["fc1"]["A"] * np.inf),
            "NaN or Inf")
    with pytest.raises(MalformedPayloadError, match="not an adapted layer"):
        forged = copy.deepcopy(data)
        forged.param_grads["elsewhere"] = forged.param_grads.pop("fc1")
        forged.param_at["elsewhere"] = forged.param_at.pop("fc1")
        decode_adaptation(encode_adaptation(forged), layout=engine.layout)


def test_auto_sends_each_layer_in_its_smallest_exact_form(net64):
    """Few rows: rows; many rows: the parameter gradient (Low Rank: far below G); G only when
    the server does not hold the node's adapters."""
    engine = engine_for(net64, torch.float32)
    layout, specs = engine.layout, assign_specs(engine.layout, SPECS)
    state = GradientLearner(layout, SPECS).adapter_state()
    few = engine.compute({"c": batch(0, n=1, dtype=torch.float32)}, {"c": state},
                         specs={"c": SPECS})["c"]
    many = engine.compute({"c": batch(1, n=400, dtype=torch.float32)}, {"c": state},
                          specs={"c": SPECS})["c"]
    assert choose([few], layout, specs, "auto") == {}
    assert choose([many], layout, specs, "auto") == dict.fromkeys(SPECS, PARAMETER)
    assert choose([many], layout, specs, "auto", parameter_form=False) == {
        "fc1": "weight-gradient", "head": "weight-gradient"}
    sizes = [to_forms([many] * 3, layout, specs, "auto", adapters=state)[i].num_values()
             for i in range(3)]
    assert sizes[1:] == [0, 0] and sizes[0] < many.num_values() / 10


def test_a_federation_in_parameter_form_ends_where_one_in_rows_does():
    """Four rounds, half the nodes on ONNX Runtime, an interval of 2: the adapters agree to
    float32 tolerance, and the parameter form sent a fraction of the bytes."""
    pytest.importorskip("onnxscript")
    common = {"edge.backends": "onnx,torch", "task.batch-size": 16, "data.interval": 2}
    ours, _ = run({**common, "wire.form": "parameter-gradient"}, nodes=2, rounds=4)
    theirs, _ = run({**common, "wire.form": "rows"}, nodes=2, rounds=4)
    mine = {s.partition_id: s for s in ours.sessions.values()}
    for session in theirs.sessions.values():
        other = mine[session.partition_id]
        assert other.rounds_trained == session.rounds_trained == 4
        for layer, params in session.adapters.items():
            for name, value in params.items():
                assert np.abs(other.adapters[layer][name] - value).max() <= 1e-5, layer
    down = [sum(r.get("bytes-down", 0) for r in s.rounds) for s in (ours, theirs)]
    assert down[0] < down[1] / 2
