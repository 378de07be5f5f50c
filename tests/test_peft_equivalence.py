"""ColA Low Rank (r=8, I=1, unmerged) trained by Gradient Learning == PEFT LoRA (r=8, alpha=8).

Both start from the same base model and the same A and B, see the same batches and use AdamW
with the same hyper-parameters; after 20 steps their weights agree to float error.
"""

import copy

import pytest
import torch
from conftest import text_batch, tiny_bert

from cola_fed import AdapterSpec, GradientLearner, ServerEngine

peft = pytest.importorskip("peft")

STEPS, LR, WD = 20, 1e-3, 0.01


def lora_weights(peft_model):
    """PEFT's LoRA weights as a cola-fed adapter state."""
    state = {}
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            layer, rest = name.removeprefix("base_model.model.").split(".lora_")
            state.setdefault(layer, {})[rest[0]] = param.detach().clone()
    return state


def run_both(dtype):
    base = tiny_bert(num_labels=3).to(dtype)
    peft_model = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]),
    ).eval()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=WD)

    engine = ServerEngine(base, targets=["query", "value"])
    learner = GradientLearner(engine.layout, AdapterSpec(kind="lowrank", rank=8),
                              optimizer="adamw", lr=LR, weight_decay=WD, dtype=dtype)
    learner.load_adapter_state(lora_weights(peft_model))

    for step in range(STEPS):
        batch = text_batch(8, 12, 60, labels="3", seed=100 + step)
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
        learner.fit(engine.compute({"c": batch}, {"c": learner.adapter_state()})["c"])

    expected, got = lora_weights(peft_model), learner.adapter_state()
    assert set(expected) == set(got) and len(got) == 4
    diff = max((got[layer][p] - expected[layer][p]).abs().max().item()
               for layer, params in got.items() for p in params)
    return diff, expected


def test_matches_peft_lora_float64():
    diff, weights = run_both(torch.float64)
    assert max(w["B"].abs().max().item() for w in weights.values()) > 1e-3  # it did train
    print(f"max |ColA - PEFT LoRA| after {STEPS} AdamW steps, float64: {diff:.3e}")
    assert diff <= 1e-10


def test_matches_peft_lora_float32():
    diff, _ = run_both(torch.float32)
    print(f"max |ColA - PEFT LoRA| after {STEPS} AdamW steps, float32: {diff:.3e}")
    assert diff <= 1e-5
