"""Gradient Learning gives exactly backprop's parameter gradient, through whole real models.

The reference is independent of cola-fed's adapter code: each adapter is rebuilt as ordinary
``nn.Linear``/``nn.Sequential`` modules, attached by forward hooks, and differentiated by
autograd through the model's own (Hugging Face) loss.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize, text_batch, vector_batch
from torch import nn

from cola_fed import AdapterSpec, GradientLearner, ServerEngine
from cola_fed.adapters.mlp.ops import ACTIVATIONS

SPECS = {
    "lowrank": AdapterSpec(kind="lowrank", rank=3),
    "linear": AdapterSpec(kind="linear", bias=True),
    "mlp": AdapterSpec(kind="mlp", hidden=5, depth=2, activation="gelu"),
}


class ReferenceAdapter(nn.Module):
    """The same function as a cola-fed adapter, as plain torch modules."""

    def __init__(self, spec: AdapterSpec, params: dict) -> None:
        super().__init__()
        self.spec = spec
        if spec.kind == "lowrank":
            self.layers = nn.ParameterList([nn.Parameter(params["A"]), nn.Parameter(params["B"])])
        elif spec.kind == "linear":
            self.layers = nn.ParameterList(
                [nn.Parameter(params["weight"]), nn.Parameter(params["bias"])])
        else:
            self.layers = nn.ParameterList(
                [nn.Parameter(params[f"fc{i // 2}.{'weight' if i % 2 == 0 else 'bias'}"])
                 for i in range(2 * (spec.depth + 1))])

    def forward(self, x):
        p = list(self.layers)
        if self.spec.kind == "lowrank":
            return F.linear(F.linear(x, p[0]), p[1])
        if self.spec.kind == "linear":
            return F.linear(x, p[0], p[1])
        act = ACTIVATIONS[self.spec.activation][0]
        for i in range(0, len(p), 2):
            x = F.linear(x, p[i], p[i + 1])
            if i + 2 < len(p):
                x = act(x)
        return x

    def named_grads(self):
        p = list(self.layers)
        if self.spec.kind == "lowrank":
            return {"A": p[0].grad, "B": p[1].grad}
        if self.spec.kind == "linear":
            return {"weight": p[0].grad, "bias": p[1].grad}
        return {f"fc{i // 2}.{'weight' if i % 2 == 0 else 'bias'}": t.grad
                for i, t in enumerate(p)}


def reference_grads(model, layout, spec, state, batch, loss_of):
    """Autograd through the model with the adapters as real trainable parameters."""
    modules = dict(model.named_modules())
    refs, hooks = {}, []
    for name in layout.names:
        ref = ReferenceAdapter(spec, {k: v.clone() for k, v in state[name].items()})
        refs[name] = ref
        hooks.append(modules[name].register_forward_hook(
            lambda m, args, out, ref=ref: out + ref(args[0])))
    try:
        loss_of(model, batch).backward()
    finally:
        for hook in hooks:
            hook.remove()
    return {name: ref.named_grads() for name, ref in refs.items()}


def hf_loss(model, batch):
    return model(**batch).loss


def lm_loss(model, batch):
    # Hugging Face's causal-LM loss casts logits to float32; the float64 reference must not.
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           batch["labels"][:, 1:].reshape(-1), ignore_index=-100)


def net_loss(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["labels"])


CASES = {
    "linear-net": ("net64", None, lambda: vector_batch(9, seed=3), net_loss),
    "gpt2-conv1d": ("gpt64", None, lambda: text_batch(3, 12, 50, labels="lm", seed=3), lm_loss),
    "bert": ("bert64", ["query", "value"], lambda: text_batch(4, 10, 60, labels="3", seed=3),
             hf_loss),
}


@pytest.mark.parametrize("kind", SPECS)
@pytest.mark.parametrize("case", CASES)
def test_gl_gradient_equals_autograd_float64(case, kind, request):
    fixture, targets, make_batch, loss_of = CASES[case]
    model = request.getfixturevalue(fixture)
    if targets is None and fixture == "net64":
        targets = ["fc1", "fc2"]
    engine = ServerEngine(model, targets=targets)
    learner = GradientLearner(engine.layout, SPECS[kind], dtype=torch.float64)
    learner.load_adapter_state(randomize(learner.adapter_state(), seed=7))
    state = learner.adapter_state()
    batch = make_batch()

    data = engine.compute({"c": batch}, {"c": state}, specs={"c": SPECS[kind]})["c"]
    gl = learner.gradient(data)
    engine.close()
    ref = reference_grads(model, engine.layout, SPECS[kind], state, batch, loss_of)

    assert set(gl) == set(engine.layout.names)
    for layer in engine.layout.names:
        for name, expected in ref[layer].items():
            err = (gl[layer][name] - expected).abs().max() / expected.abs().max()
            assert err <= 1e-12, (layer, name, float(err))


def test_engine_loss_equals_model_loss(bert64):
    batch = text_batch(4, 10, 60, labels="3", seed=5)
    expected = bert64(**batch).loss
    engine = ServerEngine(bert64, targets=["query", "value"])
    learner = GradientLearner(engine.layout, SPECS["lowrank"], dtype=torch.float64)
    data = engine.compute({"c": batch}, {"c": learner.adapter_state()})["c"]
    assert data.loss == pytest.approx(expected.item(), rel=1e-14)
    assert data.num_samples == 4
