"""The weight-space form of adaptation data: G = d^T x and the sum of d, exact and often
smaller than the rows. Both learners take the same steps from either form, an interval sums
G as concatenating rows would, the server picks the smaller form, and the wire carries it
checked."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import text_batch, vector_batch
from federation_runs import run

from cola_fed import AdapterSpec, GradientLearner, OptimizerSpec, ServerEngine
from cola_fed.errors import GradientError, MalformedPayloadError
from cola_fed.gl.forms import choose, to_form
from cola_fed.gl.layout import LayerInfo, Layout, assign_specs
from cola_fed.gl.weight_gradient import weight_gradient
from cola_fed.wire.codec import decode_adaptation, encode_adaptation

SPECS = {"*": AdapterSpec(kind="lowrank", rank=4), "head": AdapterSpec(kind="linear", bias=True)}
OPTIMIZER = OptimizerSpec(name="adamw", lr=1e-2, weight_decay=0.01, max_grad_norm=0.5)


def engine_and_chunks(net64, dtype=torch.float64):
    engine = ServerEngine(copy.deepcopy(net64).to(dtype), targets=["fc1", "fc2", "head"])
    return engine


def batch(seed: int, n: int = 6, dtype=torch.float64) -> dict:
    b = vector_batch(n, seed=seed)
    b["x"] = b["x"].to(dtype)
    return b


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_both_forms_train_alike_over_20_adamw_steps_with_an_interval(net64, dtype, tolerance):
    """One learner fed rows, one fed G (the server converts), an interval of 2 mixing the forms
    for the third: after 20 steps all three hold the same adapters."""
    engine = engine_and_chunks(net64, dtype=dtype)
    specs = assign_specs(engine.layout, SPECS)
    learners = {form: GradientLearner(engine.layout, SPECS, OPTIMIZER, seed=1, interval=2,
                                      dtype=dtype) for form in ("rows", "g", "mixed")}
    for step in range(40):
        for form, learner in learners.items():
            data = engine.compute({"c": batch(step, dtype=dtype)},
                                  {"c": learner.adapter_state()}, specs={"c": SPECS})["c"]
            if form == "g" or (form == "mixed" and step % 2):
                data = to_form(data, engine.layout, specs, "weight-gradient")
                assert not data.row_layers and set(data.weight_grads) == set(specs)
            learner.fit(data)
    assert learners["rows"].step == 20
    reference = learners["rows"].adapter_state()
    for form in ("g", "mixed"):
        for layer, params in learners[form].adapter_state().items():
            for name, value in params.items():
                assert (value - reference[layer][name]).abs().max() <= tolerance, (form, layer)


def test_the_onnx_learner_takes_the_weight_space_form_as_the_torch_learner(net64):
    pytest.importorskip("onnxscript")
    from cola_fed.edge import OrtLearner, graph_keys
    from cola_fed.edge.export import export_graphs

    engine = engine_and_chunks(net64, dtype=torch.float32)
    specs = assign_specs(engine.layout, SPECS)
    keys = graph_keys(engine.layout, [SPECS], OPTIMIZER, form="all")
    assert sum(name.endswith("-g") for name in keys) == 3
    edge = OrtLearner(engine.layout, SPECS, OPTIMIZER, export_graphs(keys.values()), seed=1)
    rows_only = OrtLearner(engine.layout, SPECS, OPTIMIZER,
                           export_graphs(k for n, k in keys.items() if not n.endswith("-g")),
                           seed=1)
    reference = GradientLearner(engine.layout, SPECS, OPTIMIZER, seed=1)
    for step in range(10):
        data = engine.compute({"c": batch(step, dtype=torch.float32)},
                              {"c": reference.adapter_state()}, specs={"c": SPECS})["c"]
        reference.fit(data)
        weight = to_form(data, engine.layout, specs, "weight-gradient")
        edge.fit(weight)
        with pytest.raises(GradientError, match="weight-space"):  # no graph: refused, unchanged
            rows_only.fit(weight)
    assert rows_only.step == 0
    for layer, params in reference.adapter_state().items():
        for name, value in params.items():
            assert np.abs(edge.adapter_state()[layer][name] - value.numpy()).max() <= 1e-5


def test_auto_picks_the_smaller_form_and_never_g_for_an_mlp(bert64):
    """Without the node's adapters (no parameter form), auto picks between rows and G."""
    engine = ServerEngine(bert64, targets=["query", "value", "classifier"])
    specs = assign_specs(engine.layout, {"*": AdapterSpec(kind="lowrank"),
                                         "classifier": AdapterSpec(kind="linear", bias=True),
                                         "encoder.layer.1.attention.self.value":
                                             AdapterSpec(kind="mlp", hidden=4, depth=1)})
    learner = GradientLearner(engine.layout, {n: s for n, s in specs.items()})
    short = text_batch(2, 4, 60, labels="3", seed=0)  # 8 token rows: rows are smaller
    long = text_batch(16, 30, 60, labels="3", seed=1)  # 480 rows: G is smaller
    for chunk, expect_g in ((short, False), (long, True)):
        data = engine.compute({"c": chunk}, {"c": learner.adapter_state()},
                              specs={"c": specs})["c"]
        chosen = choose([data], engine.layout, specs, "auto", parameter_form=False)
        assert "encoder.layer.1.attention.self.value" not in chosen  # an MLP needs rows
        assert bool(set(chosen) - {"classifier"}) == expect_g
        auto = to_form(data, engine.layout, specs, "auto")
        rows = to_form(data, engine.layout, specs, "rows")
        assert rows is data
        assert auto.num_values() <= data.num_values()
        assert list(choose([data], engine.layout, specs, "weight-gradient")) == [
            n for n in data.row_layers if specs[n].kind != "mlp"]


def test_the_server_and_the_node_compute_one_g_for_a_convolution():
    info = LayerInfo("conv", 3 * 3 * 2, 4, "conv2d", True, (3, 3), (2, 1), (1, 1), (1, 1))
    rng = np.random.default_rng(0)
    x, d = rng.normal(size=(3, 2, 7, 6)), rng.normal(size=(3, 4, 4, 6))
    numpy_g = weight_gradient(info, x, d)
    torch_g = weight_gradient(info, torch.from_numpy(x), torch.from_numpy(d))
    for a, b in zip(numpy_g, torch_g):
        assert np.abs(a - b.numpy()).max() <= 1e-12


def test_the_wire_carries_the_weight_space_form_checked(net64):
    engine = engine_and_chunks(net64, dtype=torch.float32)
    specs = assign_specs(engine.layout, SPECS)
    learner = GradientLearner(engine.layout, SPECS)
    data = engine.compute({"c": batch(0, n=40, dtype=torch.float32)},
                          {"c": learner.adapter_state()}, specs={"c": SPECS})["c"]
    data = to_form(data, engine.layout, specs, "auto")
    assert data.weight_grads
    back = decode_adaptation(encode_adaptation(data), layout=engine.layout)
    assert set(back.weight_grads) == set(data.weight_grads)
    for name, (g, gb) in data.weight_grads.items():
        np.testing.assert_array_equal(back.weight_grads[name][0], g.numpy())
        np.testing.assert_array_equal(back.weight_grads[name][1], gb.numpy())
    wrong = Layout(tuple(LayerInfo(i.name, i.d_in + 1, i.d_out) for i in engine.layout))
    with pytest.raises(MalformedPayloadError, match="expected G"):
        decode_adaptation(encode_adaptation(data), layout=wrong)
    name = next(iter(data.weight_grads))
    data.weight_grads[name] = (data.weight_grads[name][0] * np.nan, data.weight_grads[name][1])
    with pytest.raises(MalformedPayloadError, match=r"finite|NaN"):
        decode_adaptation(encode_adaptation(data), layout=engine.layout)


def test_a_learner_refuses_g_for_a_family_that_needs_rows(net64):
    engine = engine_and_chunks(net64)
    mlp = AdapterSpec(kind="mlp", hidden=4, depth=1)
    learner = GradientLearner(engine.layout, mlp, dtype=torch.float64)
    data = engine.compute({"c": batch(0)}, {"c": learner.adapter_state()})["c"]
    name = data.row_layers[0]
    forged = to_form(data, engine.layout, {n: AdapterSpec(kind="lowrank") for n in
                                           data.row_layers}, "weight-gradient")
    with pytest.raises(GradientError, match="needs rows"):
        learner.fit(forged)
    assert learner.step == 0 and name in data.grads


def test_a_federation_in_auto_form_ends_where_one_in_rows_does():
    """Five rounds, half the nodes on ONNX Runtime: the adapters agree to float32 tolerance,
    and the auto form sent fewer bytes."""
    pytest.importorskip("onnxscript")
    common = {"edge.backends": "onnx,torch", "task.batch-size": 64}
    auto, _ = run({**common, "wire.form": "auto"}, nodes=2, rounds=5)
    rows, _ = run({**common, "wire.form": "rows"}, nodes=2, rounds=5)
    ours = {s.partition_id: s for s in auto.sessions.values()}
    theirs = {s.partition_id: s for s in rows.sessions.values()}
    for p, session in theirs.items():
        assert ours[p].rounds_trained == session.rounds_trained == 5
        for layer, params in session.adapters.items():
            for name, value in params.items():
                assert np.abs(ours[p].adapters[layer][name] - value).max() <= 1e-5, (p, layer)
    down = {name: sum(r.get("bytes-down", 0) for r in s.rounds) for name, s in
            (("auto", auto), ("rows", rows))}
    assert down["auto"] < down["rows"]


def test_a_buffered_weight_space_chunk_moves_between_backends(net64):
    pytest.importorskip("onnxscript")
    from cola_fed.edge import OrtLearner, graph_keys
    from cola_fed.edge.export import export_graphs

    engine = engine_and_chunks(net64, dtype=torch.float32)
    specs = assign_specs(engine.layout, SPECS)
    graphs = export_graphs(graph_keys(engine.layout, [SPECS], OPTIMIZER,
                                      form="all").values())
    torch_learner = GradientLearner(engine.layout, SPECS, OPTIMIZER, seed=1, interval=2)
    stay = GradientLearner(engine.layout, SPECS, OPTIMIZER, seed=1, interval=2)
    chunks = [to_form(engine.compute({"c": batch(s, dtype=torch.float32)},
                                     {"c": stay.adapter_state()}, specs={"c": SPECS})["c"],
                      engine.layout, specs, "weight-gradient") for s in range(2)]
    torch_learner.fit(chunks[0])
    stay.fit(chunks[0])
    moved = OrtLearner(engine.layout, SPECS, OPTIMIZER, graphs, seed=1, interval=2)
    moved.load_bytes(torch_learner.to_bytes())
    assert len(moved.state_dict()["buffer"]) == 1
    moved.fit(chunks[1])
    stay.fit(chunks[1])
    assert moved.step == stay.step == 1
    for layer, params in stay.adapter_state().items():
        for name, value in params.items():
            assert np.abs(moved.adapter_state()[layer][name] - value.numpy()).max() <= 1e-6
