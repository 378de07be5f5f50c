"""The sizing benchmark's FLOP count (benchmarks/sizing.py) against what torch counts on a real
ColA server step, and its GPU formula."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks import sizing  # noqa: E402
from cola_fed.adapters.spec import AdapterSpec  # noqa: E402
from cola_fed.gl.engine import ServerEngine  # noqa: E402
from cola_fed.gl.learner import GradientLearner  # noqa: E402


def test_counted_flops_match_torch_on_a_real_server_step():
    """A tiny BERT (eager attention, so torch sees the attention products too): the analytic
    count is at least what torch counts, and at most a few percent more (the backward stops at
    the first adapted layer; the analytic count does not)."""
    config = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, intermediate_size=128,
                                     num_labels=2, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    shape = sizing.model_shape(model)
    assert shape["matmul_params_per_token"] == 3 * (4 * 64 * 64 + 2 * 64 * 128)
    assert shape["matmul_params_per_sample"] == 64 * 64 + 64 * 2  # pooler and classifier
    engine = ServerEngine(model, targets=["query", "value", "classifier"])
    state = GradientLearner(engine.layout, AdapterSpec(kind="lowrank", rank=4)).adapter_state()
    batch, length = 4, 32
    ids = torch.randint(5, 500, (batch, length))
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (batch,))}
    with FlopCounterMode(display=False) as counter:
        engine.compute({"c": data}, {"c": state})
    analytic = sizing.flops_per_sample(shape, length)["total"] * batch
    assert 1.0 <= analytic / counter.get_total_flops() <= 1.15


def test_the_1b_class_model_has_llama_3_2_1b_shapes():
    shape = sizing.llama_1b_shape()
    assert shape["matmul_params_per_token"] == 1_235_746_816  # 16 layers + the tied head
    assert shape["layers"] == 16 and shape["attention_width"] == 2048


def test_gpus_follow_the_formula():
    """GPUs = ceil(users * B * F / 3600 / (peak * utilisation)), for every row."""
    shapes = {"llama-1b": sizing.llama_1b_shape()}
    rows = sizing.sizing(shapes, {}, (0.1, 0.4), 989e12, "cpu")
    for row in rows:
        flops = sizing.flops_per_sample(shapes["llama-1b"], row["length"])["total"]
        needed = row["users"] * row["batch"] * flops / 3600
        assert row["gpus_at_low_utilisation"] == math.ceil(needed / (989e12 * 0.1))
        assert row["gpus_at_high_utilisation"] == math.ceil(needed / (989e12 * 0.4))
    big = [r for r in rows if r["users"] == 1_000_000 and r["length"] == 512]
    assert big and big[0]["gpus_at_low_utilisation"] == 60
