"""The pretrained MiniLM-L6 path: exactness on the real model, and the demo learns."""

import copy
import os

import pytest
import torch

from cola_fed import AdapterSpec, GradientLearner, ServerEngine

text_classification = pytest.importorskip("cola_fed.tasks.text_classification")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    try:
        model, tokenizer = text_classification.load_minilm_classifier()
        data = text_classification.load_rotten_tomatoes()
    except Exception as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"offline demo assets missing: {err}")
    return model, tokenizer, data


def test_rotten_tomatoes_is_read_from_the_wheel(minilm):
    _, _, data = minilm
    assert len(data) == 12808 and set(data.labels) == {0, 1}


def test_gl_equals_peft_gradient_on_pretrained_minilm_float64(minilm):
    peft = pytest.importorskip("peft")
    model, tokenizer, data = minilm
    model = copy.deepcopy(model).double()
    batch = text_classification.encode(tokenizer, data.texts[:8], data.labels[:8], 32)
    peft_model = peft.get_peft_model(
        copy.deepcopy(model),
        peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]),
    ).eval()
    engine = ServerEngine(model, targets=["query", "value"])
    learner = GradientLearner(engine.layout, AdapterSpec(kind="lowrank", rank=8),
                              dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, param in peft_model.named_parameters():  # a non-zero B, copied to both sides
        if ".lora_" in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.05)
            layer, rest = name.removeprefix("base_model.model.").split(".lora_")
            state.setdefault(layer, {})[rest[0]] = param.detach().clone()
    learner.load_adapter_state(state)
    peft_model(**batch).loss.backward()
    gl = learner.gradient(engine.compute({"c": batch}, {"c": state})["c"])
    worst = 0.0
    for name, param in peft_model.named_parameters():
        if ".lora_" in name:
            layer, rest = name.removeprefix("base_model.model.").split(".lora_")
            ours = gl[layer][rest[0]]
            worst = max(worst, float((ours - param.grad).abs().max() / param.grad.abs().max()))
    assert worst <= 1e-12


def test_demo_learns(minilm):
    from cola_fed.centralized import DemoConfig, run_demo

    result = run_demo(DemoConfig(steps=40, batch_size=16, test_size=200, log_every=20))
    assert result.accuracy_after >= result.accuracy_before + 0.1
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
