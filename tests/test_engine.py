"""ServerEngine: per-sample routing, merged and col modes, compaction, exact restore, errors."""

import copy

import pytest
import torch
from conftest import TinyNet, randomize, text_batch, vector_batch

from cola_fed import AdaptationData, AdapterSpec, GradientLearner, ServerEngine
from cola_fed.errors import AdapterError, ColaError, ConfigError, GradientError, TargetError

LOWRANK = AdapterSpec(kind="lowrank", rank=4)
LINEAR = AdapterSpec(kind="linear", bias=True)
MLP = AdapterSpec(kind="mlp", hidden=6, depth=2)


def learner_for(engine, spec, seed, *, optimizer="adamw"):
    learner = GradientLearner(engine.layout, spec, optimizer=optimizer, lr=1e-2,
                              dtype=torch.float64, seed=seed)
    learner.load_adapter_state(randomize(learner.adapter_state(), seed=seed))
    return learner


def assert_same_data(a, b, tol=1e-12):
    assert a.layer_names == b.layer_names
    assert a.loss == pytest.approx(b.loss, rel=1e-13)
    for name in a.layer_names:
        for got, want in zip(a.layer(name), b.layer(name)):
            assert got.shape == want.shape, name
            assert (got - want).abs().max() <= tol * max(1.0, want.abs().max()), name


def test_mixed_batch_gives_each_client_what_it_gets_alone(bert64):
    engine = ServerEngine(bert64, targets=["query", "value"])
    specs = {"a": LOWRANK, "b": LINEAR, "c": MLP}
    learners = {c: learner_for(engine, s, seed=i) for i, (c, s) in enumerate(specs.items())}
    batches = {c: text_batch(3 + i, 10, 60, labels="3", seed=20 + i) for i, c in enumerate(specs)}
    states = {c: lr.adapter_state() for c, lr in learners.items()}

    mixed = engine.compute(batches, states)
    alone = {c: engine.compute({c: batches[c]}, {c: states[c]})[c] for c in specs}
    for client in specs:
        assert mixed[client].num_samples == batches[client]["labels"].shape[0]
        assert_same_data(mixed[client], alone[client])

    twins = {c: copy.deepcopy(lr) for c, lr in learners.items()}
    for client in specs:
        learners[client].fit(mixed[client])
        twins[client].fit(alone[client])
        for layer, params in learners[client].adapter_state().items():
            for name, value in params.items():
                other = twins[client].adapter_state()[layer][name]
                assert (value - other).abs().max() <= 1e-12


def test_max_batch_size_splits_passes_without_changing_results(bert64):
    engine = ServerEngine(bert64, targets=["query", "value"])
    learner = learner_for(engine, LOWRANK, seed=1)
    batches = {c: text_batch(3, 10, 60, labels="3", seed=i) for i, c in enumerate("abcd")}
    states = {c: learner.adapter_state() for c in batches}
    together = engine.compute(batches, states)
    engine.max_batch_size = 6
    assert engine._pack(batches, {c: 3 for c in batches}) == [["a", "b"], ["c", "d"]]
    split = engine.compute(batches, states)
    for client in batches:
        assert_same_data(together[client], split[client])


@pytest.mark.parametrize("spec", [LOWRANK, LINEAR], ids=["lowrank", "linear"])
def test_merged_equals_unmerged(bert64, spec):
    engine = ServerEngine(bert64, targets=["query", "value"])
    learners = {c: learner_for(engine, spec, seed=i) for i, c in enumerate("ab")}
    batches = {c: text_batch(4, 10, 60, labels="3", seed=40 + i) for i, c in enumerate("ab")}
    states = {c: lr.adapter_state() for c, lr in learners.items()}
    before = {n: p.clone() for n, p in bert64.state_dict().items()}
    unmerged = engine.compute(batches, states, mode="unmerged")
    merged = engine.compute(batches, states, mode="merged")
    for client in batches:
        assert_same_data(merged[client], unmerged[client], tol=1e-11)
    for name, value in bert64.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_col_merges_the_mean_delta_weight(bert64):
    engine = ServerEngine(bert64, targets=["query", "value"])
    learners = {c: learner_for(engine, LINEAR, seed=i) for i, c in enumerate("ab")}
    batches = {c: text_batch(4, 10, 60, labels="3", seed=60 + i) for i, c in enumerate("ab")}
    states = {c: lr.adapter_state() for c, lr in learners.items()}
    mean = {layer: {p: (states["a"][layer][p] + states["b"][layer][p]) / 2
                    for p in states["a"][layer]} for layer in states["a"]}
    col = engine.compute(batches, states, mode="col")
    shared = engine.compute(batches, {"a": mean, "b": mean}, mode="unmerged")
    for client in batches:
        assert_same_data(col[client], shared[client], tol=1e-11)


def test_zero_initialised_adapters_leave_the_base_output_unchanged(bert64, gpt64):
    for model, batch in ((bert64, text_batch(3, 10, 60, labels="3", seed=1)),
                         (gpt64, text_batch(3, 10, 50, labels="lm", seed=1))):
        expected = model(**batch).logits
        engine = ServerEngine(model)
        for spec in (LOWRANK, LINEAR, MLP):
            fresh = GradientLearner(engine.layout, spec).adapter_state()
            assert torch.equal(engine.predict(batch, fresh, spec=spec), expected)
        assert torch.equal(engine.predict(batch), expected)
        engine.close()


def test_padding_rows_are_dropped_and_shared_inputs_sent_once(bert64):
    engine = ServerEngine(bert64, targets=["query", "value"])
    batch = text_batch(4, 10, 60, labels="3", seed=2)
    learner = learner_for(engine, LOWRANK, seed=3)
    data = engine.compute({"c": batch}, {"c": learner.adapter_state()})["c"]
    tokens = int(batch["attention_mask"].sum())
    assert tokens < 40  # the batch has padding
    layer0 = "bert.encoder.layer.0.attention.self"
    assert data.input_of[f"{layer0}.query"] == data.input_of[f"{layer0}.value"]
    assert len(data.inputs) == 2  # one shared x per transformer layer
    assert data.num_rows(f"{layer0}.value") == tokens
    # only the [CLS] query of the last layer reaches the classifier
    assert data.num_rows("bert.encoder.layer.1.attention.self.query") == 4


def test_dropped_zero_rows_change_no_gradient(bert64):
    engine = ServerEngine(bert64, targets=["query", "value"])
    batch = text_batch(4, 10, 60, labels="3", seed=2)
    learner = learner_for(engine, MLP, seed=3)
    data = engine.compute({"c": batch}, {"c": learner.adapter_state()})["c"]
    g = torch.Generator().manual_seed(0)
    padded = AdaptationData({}, {}, {}, {})
    for name in data.layer_names:  # every layer its own x, plus rows with d == 0, x arbitrary
        x, d = data.layer(name)
        extra = torch.randn(5, x.shape[1], generator=g, dtype=x.dtype)
        padded.inputs[name] = torch.cat([x, extra])
        padded.grads[name] = torch.cat([d, torch.zeros(5, d.shape[1], dtype=d.dtype)])
        padded.input_of[name] = name
    full, compact = learner.gradient(padded), learner.gradient(data)
    for layer, grads in compact.items():
        for name, value in grads.items():
            torch.testing.assert_close(full[layer][name], value, rtol=1e-13, atol=1e-15)


def test_bf16_merge_restore_is_exact_over_1000_cycles():
    torch.manual_seed(0)
    model = TinyNet().to(torch.bfloat16)
    original = {n: p.clone() for n, p in model.state_dict().items()}
    engine = ServerEngine(model, targets=["fc1", "fc2"], mode="merged")
    learner = GradientLearner(engine.layout, LOWRANK, lr=1e-2)
    learner.load_adapter_state(randomize(learner.adapter_state(), seed=1))
    batch = vector_batch(4, seed=0)
    batch["x"] = batch["x"].to(torch.bfloat16)
    for _ in range(1000):
        data = engine.compute({"c": batch}, {"c": learner.adapter_state()})["c"]
    assert data.inputs[data.input_of["fc1"]].dtype == torch.float32
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name]), name


def test_server_holds_no_trainable_parameter(bert64):
    engine = ServerEngine(bert64, targets=["query", "value"])
    assert not any(p.requires_grad for p in bert64.parameters())
    bert64.classifier.weight.requires_grad_(True)
    learner = GradientLearner(engine.layout, LOWRANK)
    with pytest.raises(ColaError, match="parameter-free"):
        engine.compute({"c": text_batch(2, 8, 60, labels="3", seed=0)},
                       {"c": learner.adapter_state()})


def test_bad_input_gets_clear_errors(bert64, net64):
    with pytest.raises(TargetError, match="'kwery' matches no module"):
        ServerEngine(bert64, targets=["kwery"])
    with pytest.raises(TargetError, match="LayerNorm"):
        ServerEngine(bert64, targets=["attention.output.LayerNorm"])
    with pytest.raises(ConfigError, match="mode"):
        ServerEngine(bert64, mode="fused")

    engine = ServerEngine(net64, targets=["fc1", "fc2"])
    learner = GradientLearner(engine.layout, LOWRANK, dtype=torch.float64)
    state = learner.adapter_state()
    batch = vector_batch(4, seed=0)
    wrong = copy.deepcopy(state)
    wrong["fc2"]["A"] = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(AdapterError, match=r"client 'c', layer 'fc2'.*'A'"):
        engine.compute({"c": batch}, {"c": wrong})
    with pytest.raises(AdapterError, match="'fc9', which is not an adapted layer"):
        engine.compute({"c": batch}, {"c": {**state, "fc9": state["fc1"]}})
    with pytest.raises(ConfigError, match="no 'labels'"):
        engine.compute({"c": {"x": batch["x"]}}, {"c": state})
    with pytest.raises(AdapterError, match="cannot be merged"):
        mlp = GradientLearner(engine.layout, MLP, dtype=torch.float64).adapter_state()
        engine.compute({"c": batch}, {"c": mlp}, mode="merged")

    poisoned = dict(batch, x=batch["x"].clone())
    poisoned["x"][1, 3] = float("nan")
    with pytest.raises(GradientError, match=r"client 'c'.*loss is nan.*'fc1'"):
        engine.compute({"c": poisoned}, {"c": state})
    nan_state = copy.deepcopy(state)
    nan_state["fc2"]["B"][0, 0] = float("inf")
    with pytest.raises(AdapterError, match=r"layer 'fc2'.*'B' is not finite"):
        engine.compute({"c": batch}, {"c": nan_state})


def test_predict_col_is_the_base_with_the_mean_delta_weight(bert64):
    engine = ServerEngine(bert64, targets=["query", "value"])
    states = {c: learner_for(engine, LINEAR, seed=i).adapter_state() for i, c in enumerate("ab")}
    mean = {layer: {p: (states["a"][layer][p] + states["b"][layer][p]) / 2
                    for p in states["a"][layer]} for layer in states["a"]}
    batch = text_batch(3, 10, 60, labels="3", seed=7)
    torch.testing.assert_close(engine.predict_col(batch, states), engine.predict(batch, mean),
                               rtol=1e-10, atol=1e-10)
