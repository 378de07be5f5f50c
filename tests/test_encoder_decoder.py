"""Encoder-decoder models (BART, T5): Gradient Learning is backprop through all three kinds of
attention, and ColA Low Rank is PEFT LoRA.

The default targets (BART ``q_proj,v_proj``; T5 ``q,v``) match by suffix, so the encoder's
self-attention, the decoder's self-attention and its cross-attention are all adapted; the
cross-attention's ``v`` reads the encoder's output. The batch carries ``decoder_input_ids``
shifted from the labels, as the ``seq2seq`` task sends them.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cola_fed import AdapterSpec, GradientLearner, ServerEngine
from cola_fed.gl.losses import default_loss, seq2seq_lm_loss

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB, PAD = 40, {"bart": 1, "t5": 0}
#: one client per adapter family, all in one engine pass
SPECS = {
    "lowrank": AdapterSpec(kind="lowrank", rank=3),
    "linear": AdapterSpec(kind="linear"),
    "mlp": AdapterSpec(kind="mlp", hidden=5, depth=2, activation="gelu"),
}
STEPS, LR, WD = 20, 1e-3, 0.01


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised BART or T5 (2 encoder and 2 decoder layers), no dropout."""
    torch.manual_seed(seed)
    if kind == "bart":
        config = transformers.BartConfig(
            vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
            decoder_ffn_dim=32, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2, forced_eos_token_id=None)
        return transformers.BartForConditionalGeneration(config).eval()
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
        num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0)
    return transformers.T5ForConditionalGeneration(config).eval()


def seq2seq_batch(model: torch.nn.Module, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Right-padded sources and targets; ``decoder_input_ids`` by the model's own shift."""
    g = torch.Generator().manual_seed(seed)
    pad = model.config.pad_token_id

    def padded(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(3, VOCAB, (n, length), generator=g)
        lengths = torch.randint(2, length + 1, (n,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        return ids.masked_fill(mask == 0, pad), mask

    input_ids, attention_mask = padded(9)
    targets, decoder_mask = padded(7)
    labels = targets.masked_fill(decoder_mask == 0, -100)
    if isinstance(model, transformers.T5ForConditionalGeneration):
        decoder_input_ids = model._shift_right(labels)
    else:
        decoder_input_ids = transformers.models.bart.modeling_bart.shift_tokens_right(
            labels, pad, model.config.decoder_start_token_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "decoder_input_ids": decoder_input_ids, "decoder_attention_mask": decoder_mask,
            "labels": labels}


def reference_output(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """An adapter's output written with plain torch functions (not cola-fed's adapters)."""
    if "A" in params:
        return F.linear(F.linear(x, params["A"]), params["B"])
    if "weight" in params:
        return F.linear(x, params["weight"], params.get("bias"))
    depth = len(params) // 2 - 1
    for i in range(depth + 1):
        x = F.linear(x, params[f"fc{i}.weight"], params[f"fc{i}.bias"])
        x = F.gelu(x) if i < depth else x
    return x


def autograd_gradient(model, names, state, batch
                      ) -> tuple[float, dict[str, dict[str, torch.Tensor]]]:
    """The model's own loss and its gradient w.r.t. adapter parameters held as leaf tensors:
    plain backprop. The model shifts the labels into its decoder inputs itself."""
    modules = dict(model.named_modules())
    leaves = {layer: {p: t.detach().clone().requires_grad_(True) for p, t in params.items()}
              for layer, params in state.items()}
    hooks = [modules[name].register_forward_hook(
        lambda module, args, out, params=leaves[name]: out + reference_output(params, args[0]))
        for name in names]
    try:
        loss = model(**{k: v for k, v in batch.items() if k != "decoder_input_ids"}).loss
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    return float(loss.detach()), {layer: {p: t.grad for p, t in params.items()}
                         for layer, params in leaves.items()}


def attention_kinds(names: list[str]) -> set[str]:
    """Which attention blocks the adapted layers sit in."""
    kinds = set()
    for name in names:
        if ".encoder." in f".{name}":
            kinds.add("encoder self-attention")
        elif "encoder_attn" in name or "EncDecAttention" in name:
            kinds.add("cross-attention")
        else:
            kinds.add("decoder self-attention")
    return kinds


@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_gl_gradient_equals_autograd_in_every_attention_float64(kind):
    model = tiny_model(kind).double()
    engine = ServerEngine(model)  # default targets by model_type
    assert default_loss(model) is seq2seq_lm_loss
    names = list(engine.layout.names)
    assert attention_kinds(names) == {"encoder self-attention", "decoder self-attention",
                                      "cross-attention"}
    assert len(names) == 2 * (2 + 2 * 2)  # q and v of 2 encoder and 2 x 2 decoder attentions

    learners, batches = {}, {}
    for i, (client, spec) in enumerate(SPECS.items()):
        learner = GradientLearner(engine.layout, spec, "adamw", lr=LR, seed=i,
                                  dtype=torch.float64)
        g = torch.Generator().manual_seed(10 + i)  # perturbed: no gradient is trivially zero
        learner.load_adapter_state({
            layer: {p: torch.randn(t.shape, generator=g, dtype=torch.float64) * 0.1
                    for p, t in params.items()}
            for layer, params in learner.adapter_state().items()})
        learners[client], batches[client] = learner, seq2seq_batch(model, 3 + i, seed=i)
    # same shapes: all three clients share one forward and one backward pass
    assert engine._pack(batches, {c: len(b["labels"]) for c, b in batches.items()}) == [
        list(SPECS)]
    data = engine.compute(batches, {c: lr.adapter_state() for c, lr in learners.items()},
                          specs=SPECS)
    engine.close()

    worst = 0.0
    for client, learner in learners.items():
        got = learner.gradient(data[client])
        own, expected = autograd_gradient(model, names, learner.adapter_state(),
                                          batches[client])
        assert data[client].loss == pytest.approx(own, abs=1e-12)  # the same loss, the same shift
        assert set(got) == set(expected) == set(names)
        for layer in names:
            for p, grad in expected[layer].items():
                assert grad.abs().max() > 0, (client, layer, p)
                worst = max(worst, (got[layer][p] - grad).abs().max().item())
    print(f"{kind}: max |GL - autograd| over {len(names)} layers, 3 families: {worst:.3e}")
    assert worst <= 1e-12


def lora_state(peft_model) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT's LoRA weights as a cola-fed adapter state."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            layer, rest = name.removeprefix("base_model.model.").split(".lora_")
            state.setdefault(layer, {})[rest[0]] = param.detach().clone()
    return state


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_cola_low_rank_matches_peft_lora(kind, dtype, tolerance):
    """20 AdamW steps of ColA Low Rank (unmerged, I = 1) and of PEFT LoRA (r = lora_alpha,
    dropout 0) from the same A and B, on the same batches: the same weights."""
    base = tiny_model(kind).to(dtype)
    targets = ["q_proj", "v_proj"] if kind == "bart" else ["q", "v"]
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=8, lora_alpha=8, lora_dropout=0.0, target_modules=targets)).eval()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad],
                                  lr=LR, weight_decay=WD)
    engine = ServerEngine(base)
    learner = GradientLearner(engine.layout, AdapterSpec(kind="lowrank", rank=8), "adamw",
                              lr=LR, weight_decay=WD, dtype=dtype)
    learner.load_adapter_state(lora_state(peft_model))

    for step in range(STEPS):
        batch = seq2seq_batch(base, 6, seed=100 + step)
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
        learner.fit(engine.compute({"c": batch}, {"c": learner.adapter_state()})["c"])

    expected, got = lora_state(peft_model), learner.adapter_state()
    assert set(got) == set(expected) and len(got) == 12
    assert max(w["B"].abs().max().item() for w in expected.values()) > 1e-3  # it trained
    diff = max((got[layer][p] - expected[layer][p]).abs().max().item()
               for layer, params in got.items() for p in params)
    print(f"{kind}: max |ColA - PEFT LoRA| after {STEPS} AdamW steps, {dtype}: {diff:.3e}")
    assert diff <= tolerance


def test_seq2seq_loss_is_unshifted_and_ignores_padding():
    logits = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 2, -100, -100], [3, 4, 5, -100]])
    by_hand = -sum(torch.log_softmax(logits[r, t], -1)[labels[r, t]]
                   for r in range(2) for t in range(4) if labels[r, t] != -100) / 5
    loss = seq2seq_lm_loss(logits, labels).detach()
    assert float(loss) == pytest.approx(float(by_hand.detach()), abs=1e-14)
    nothing = seq2seq_lm_loss(logits, torch.full((2, 4), -100))
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad  # zero, with a graph
    with pytest.raises(ValueError, match="do not match"):
        seq2seq_lm_loss(logits, labels[:, :3])
