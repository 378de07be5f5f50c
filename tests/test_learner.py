"""GradientLearner and the functional optimizers: torch.optim semantics, interval, state."""

import copy

import pytest
import torch
from conftest import randomize, vector_batch
from transformers import get_linear_schedule_with_warmup

from cola_fed import AdaptationData, AdapterSpec, GradientLearner, OptimizerSpec, ServerEngine
from cola_fed.errors import AdapterError, ConfigError, GradientError
from cola_fed.gl.optim import apply_update, init_slots


@pytest.mark.parametrize(
    "spec, make_torch",
    [
        (OptimizerSpec(name="adamw", lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6),
         lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)),
        (OptimizerSpec(name="sgd", lr=1e-1, momentum=0.9, nesterov=True, weight_decay=5e-4),
         lambda p: torch.optim.SGD(p, lr=1e-1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
        (OptimizerSpec(name="sgd", lr=1e-1, momentum=0.9),
         lambda p: torch.optim.SGD(p, lr=1e-1, momentum=0.9)),
        (OptimizerSpec(name="sgd", lr=1e-1, weight_decay=1e-2),
         lambda p: torch.optim.SGD(p, lr=1e-1, weight_decay=1e-2)),
    ],
    ids=["adamw", "sgd-nesterov", "sgd-momentum", "sgd-plain"],
)
def test_functional_optimizers_match_torch_optim(spec, make_torch):
    g = torch.Generator().manual_seed(0)
    ours = torch.randn(6, 4, generator=g, dtype=torch.float64)
    theirs = torch.nn.Parameter(ours.clone())
    optimizer = make_torch([theirs])
    slots = init_slots(spec, ours)
    for step in range(1, 31):
        grad = torch.randn(6, 4, generator=g, dtype=torch.float64)
        theirs.grad = grad.clone()
        optimizer.step()
        ours, slots = apply_update(spec.name, spec.nesterov, ours, grad, slots, spec.hyper(step))
        # a few ulps: torch fuses some multiply-adds
        assert (ours - theirs.detach()).abs().max() <= 1e-15 * theirs.detach().abs().max()


def test_schedule_matches_transformers_linear_warmup():
    spec = OptimizerSpec(lr=0.5, warmup_steps=3, total_steps=10)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = get_linear_schedule_with_warmup(optimizer, 3, 10)
    for step in range(1, 13):
        assert spec.lr_at(step) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_clipping_matches_clip_grad_norm():
    g = torch.Generator().manual_seed(0)
    grads = {"a": {"A": torch.randn(3, 4, generator=g)}, "b": {"W": torch.randn(5, generator=g)}}
    params = [torch.nn.Parameter(torch.zeros_like(t)) for layer in grads.values()
              for t in layer.values()]
    for p, t in zip(params, [t for layer in grads.values() for t in layer.values()]):
        p.grad = t.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, 0.5)
    ours = sum(float((t.double() ** 2).sum()) for layer in grads.values()
               for t in layer.values()) ** 0.5
    assert ours == pytest.approx(float(norm), rel=1e-6)
    coef = OptimizerSpec(max_grad_norm=0.5).clip_coefficient(ours)
    assert OptimizerSpec().clip_coefficient(ours) == 1.0
    clipped = [t * coef for layer in grads.values() for t in layer.values()]
    for p, c in zip(params, clipped):
        torch.testing.assert_close(p.grad, c)


def make(net64, **kwargs):
    engine = ServerEngine(net64, targets=["fc1", "fc2"])
    learner = GradientLearner(engine.layout, AdapterSpec(kind="lowrank", rank=3),
                              dtype=torch.float64, **kwargs)
    learner.load_adapter_state(randomize(learner.adapter_state(), seed=1))
    return engine, learner


def test_interval_steps_once_on_the_sum_of_stale_gradients(net64):
    engine, learner = make(net64, optimizer="sgd", lr=0.1, interval=2)
    start = learner.adapter_state()
    chunks = [engine.compute({"c": vector_batch(5, seed=s)}, {"c": start})["c"] for s in (1, 2)]
    g1, g2 = learner.gradient(chunks[0]), learner.gradient(chunks[1])
    assert learner.fit(chunks[0])["stepped"] == 0.0
    assert all(torch.equal(learner.adapter_state()[n][p], start[n][p])
               for n in start for p in start[n])
    assert learner.fit(chunks[1])["stepped"] == 1.0
    for layer, params in learner.adapter_state().items():
        for name, value in params.items():
            expected = start[layer][name] - 0.1 * (g1[layer][name] + g2[layer][name])
            assert (value - expected).abs().max() <= 1e-14


def test_same_seed_same_adapters_and_state_dict_resumes_exactly(net64):
    engine = ServerEngine(net64, targets=["fc1", "fc2"])
    spec = AdapterSpec(kind="mlp", hidden=4, depth=1)
    a = GradientLearner(engine.layout, spec, seed=3, interval=2, dtype=torch.float64)
    b = GradientLearner(engine.layout, spec, seed=3, interval=2, dtype=torch.float64)
    c = GradientLearner(engine.layout, spec, seed=4, dtype=torch.float64)
    assert all(torch.equal(a.adapter_state()[n][p], b.adapter_state()[n][p])
               for n in a.adapter_state() for p in a.adapter_state()[n])
    assert not torch.equal(a.adapter_state()["fc1"]["fc0.weight"],
                           c.adapter_state()["fc1"]["fc0.weight"])

    def feed(learner, seeds):
        for s in seeds:
            learner.fit(engine.compute({"c": vector_batch(4, seed=s)},
                                       {"c": learner.adapter_state()})["c"])

    feed(a, [1, 2, 3])  # one step taken, one chunk buffered
    resumed = GradientLearner(engine.layout, spec, seed=99, interval=2, dtype=torch.float64)
    resumed.load_state_dict(copy.deepcopy(a.state_dict()))
    feed(a, [4, 5])
    feed(resumed, [4, 5])
    assert a.step == resumed.step == 2
    for layer, params in a.adapter_state().items():
        for name, value in params.items():
            assert torch.equal(value, resumed.adapter_state()[layer][name])


def test_per_layer_specs_adapt_a_head_with_a_biased_linear(net64):
    engine = ServerEngine(net64, targets=["fc1", "fc2", "head"])
    learner = GradientLearner(
        engine.layout,
        {"*": AdapterSpec(kind="lowrank", rank=2), "head": AdapterSpec(kind="linear", bias=True)},
    )
    state = learner.adapter_state()
    assert set(state["head"]) == {"weight", "bias"} and set(state["fc1"]) == {"A", "B"}


def test_bad_chunks_are_rejected_and_change_nothing(net64):
    engine, learner = make(net64, interval=1)
    data = engine.compute({"c": vector_batch(4, seed=0)}, {"c": learner.adapter_state()})["c"]
    before = copy.deepcopy(learner.state_dict())

    nan = copy.deepcopy(data)
    nan.grads["fc2"][0, 0] = float("nan")
    with pytest.raises(GradientError, match=r"layer 'fc2'.*non-finite values in d"):
        learner.fit(nan)
    wrong = AdaptationData({"fc1": torch.zeros(3, 7)}, {"fc1": torch.zeros(3, 16)},
                           {"fc1": "fc1"})
    with pytest.raises(GradientError, match=r"layer 'fc1': expected x \[n, 12\]"):
        learner.fit(wrong)
    alien = AdaptationData({"x": torch.zeros(1, 2)}, {"head": torch.zeros(1, 2)}, {"head": "x"})
    with pytest.raises(AdapterError, match="does not adapt"):
        learner.fit(alien)
    after = learner.state_dict()
    assert after["step"] == before["step"] == 0 and after["buffer"] == []
    for layer, params in after["params"].items():
        for name, value in params.items():
            assert torch.equal(value, before["params"][layer][name])


def test_optimizer_spec_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"optimizer\.lr"):
        OptimizerSpec(lr=-1.0)
    with pytest.raises(ConfigError, match=r"optimizer\.name"):
        OptimizerSpec(name="lion")
    with pytest.raises(ConfigError, match=r"optimizer\.total-steps"):
        OptimizerSpec(warmup_steps=10, total_steps=5)
    with pytest.raises(ConfigError, match=r"optimizer\.nesterov"):
        OptimizerSpec(name="sgd", nesterov=True)
