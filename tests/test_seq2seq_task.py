"""The generic ``seq2seq`` task on tiny BART and T5 models saved to a temporary folder (no
download): its encoding is the models' own label shift, its input contract is strict, and a
short federation over LocalGrid lowers the loss and reports ROUGE-L."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import numpy as np
import pytest
import torch

from cola_fed.config import RunConfig, TaskConfig
from cola_fed.errors import ConfigError, ContractError
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.protocol import Plan
from cola_fed.federation.server import build_strategy
from cola_fed.gl.engine import ServerEngine
from cola_fed.gl.losses import seq2seq_lm_loss
from cola_fed.tasks import get_task
from cola_fed.tasks.base import IGNORE

transformers = pytest.importorskip("transformers")

WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "star"]
#: the tokenizer's special tokens, in id order
PAD, EOS, UNK, BOS = 0, 1, 2, 3
MAX_LENGTH = 10


def reverse_rows(n: int, seed: int = 0) -> list[dict]:
    """Sources of 2 to 6 words; the target is the source reversed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        rows.append({"source": " ".join(words), "target": " ".join(reversed(words))})
    return rows


def save_tokenizer(folder) -> int:
    """A word-level tokenizer over ``WORDS`` (tokenizer.json); its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[EOS]", "[UNK]", "[BOS]"]))
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer.get_vocab_size()


def save_model(folder, kind: str, **overrides) -> None:
    """A randomly initialised tiny BART (decoder starts from end of sequence) or T5 (from
    padding), with the tokenizer's special ids."""
    folder.mkdir(parents=True)
    vocab = save_tokenizer(folder)
    torch.manual_seed(0)
    if kind == "bart":
        config = transformers.BartConfig(
            vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=32, pad_token_id=PAD,
            bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS,
            forced_eos_token_id=None, init_std=0.2, **overrides)
        transformers.BartForConditionalGeneration(config).save_pretrained(folder)
    else:
        config = transformers.T5Config(
            vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=2, relative_attention_num_buckets=8, pad_token_id=PAD,
            eos_token_id=EOS, **{"decoder_start_token_id": PAD, **overrides})
        transformers.T5ForConditionalGeneration(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    with (root / "pairs.jsonl").open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in reverse_rows(160))
    for kind in ("bart", "t5"):
        save_model(root / kind, kind)
    return root


def task_config(root, kind: str, **overrides) -> TaskConfig:
    return TaskConfig(**{"name": "seq2seq", "model": str(root / kind),
                         "data_path": str(root / "pairs.jsonl"), "prompt_column": "source",
                         "response_column": "target", "max_length": MAX_LENGTH, **overrides})


@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_the_batch_is_the_models_own_label_shift(workspace, kind):
    """Labels are the target's tokens and end of sequence, -100 on padding; the decoder's
    inputs are the model's own shift of the labels (BART starts from end of sequence, T5 from
    padding); the engine's loss equals the model's loss from the labels alone."""
    task = get_task(task_config(workspace, kind))
    rows = np.arange(6)
    batch = task.encode(rows)
    tokenizer = task.tokenizer()
    for row, pair in zip(rows, reverse_rows(160)[:6]):
        target = [*tokenizer.encode(pair["target"], add_special_tokens=False).ids, EOS]
        labels = batch["labels"][row]
        assert labels[:len(target)].tolist() == target
        assert (labels[len(target):] == IGNORE).all()
        source = tokenizer.encode(pair["source"]).ids
        assert batch["input_ids"][row, :len(source)].tolist() == source
        assert batch["attention_mask"][row].sum() == len(source)
    assert np.array_equal(batch["decoder_attention_mask"], batch["labels"] != IGNORE)

    model = task.build_model().double()
    labels = torch.as_tensor(batch["labels"])
    if kind == "t5":
        assert task.decoder_start_id == PAD
        shifted = model._shift_right(labels)
    else:
        assert task.decoder_start_id == EOS
        shifted = transformers.models.bart.modeling_bart.shift_tokens_right(labels, PAD, EOS)
    assert np.array_equal(batch["decoder_input_ids"], shifted.numpy())

    inputs = {k: torch.as_tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        own = model(**{k: v for k, v in inputs.items() if k != "decoder_input_ids"}).loss
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    assert float(seq2seq_lm_loss(logits, labels)) == pytest.approx(float(own), abs=1e-12)
    engine = ServerEngine(model, targets=task.adapted_targets(model))
    assert {name.rsplit(".", 1)[-1] for name in engine.layout.names} == (
        {"q", "v"} if kind == "t5" else {"q_proj", "v_proj"})
    engine.close()


def test_the_plan_carries_the_decoder_start_to_a_node_without_the_model(workspace):
    """The signed plan's task, as a node decodes it, has the ids the node needs; with them
    and the tokenizer alone the node encodes what the server would."""
    server = get_task(task_config(workspace, "bart"))
    assert server.plan_config().decoder_start_id == EOS
    strategy = build_strategy(RunConfig.from_flat({
        "task.name": "seq2seq", "task.model": str(workspace / "bart"),
        "task.data-path": str(workspace / "pairs.jsonl"), "task.prompt-column": "source",
        "task.response-column": "target", "task.max-length": MAX_LENGTH}))
    plan = Plan.from_dict(json.loads(json.dumps(strategy.plan.to_dict()))).task
    strategy.engine.close()
    assert (plan.pad_id, plan.eos_id, plan.decoder_start_id, plan.model) == (PAD, EOS, EOS, "")
    node = get_task(dataclasses.replace(plan, data_path=str(workspace / "pairs.jsonl")))
    node.files = {"tokenizer.json": workspace / "bart" / "tokenizer.json"}
    rows = np.arange(8)
    for key, value in server.encode(rows).items():
        assert np.array_equal(node.encode(rows)[key], value), key
    with pytest.raises(ConfigError, match=re.escape("task.decoder-start-id must come resolved")):
        get_task(dataclasses.replace(plan, decoder_start_id=-1)).decoder_start_id  # noqa: B018


def test_a_model_without_a_decoder_start_asks_for_the_key(workspace, tmp_path):
    save_model(tmp_path / "t5", "t5", decoder_start_token_id=None)
    (tmp_path / "t5" / "generation_config.json").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match=re.escape("task.decoder-start-id")):
        get_task(task_config(tmp_path, "t5", data_path="")).check()
    task = get_task(task_config(tmp_path, "t5", decoder_start_id=PAD))
    assert task.plan_config().decoder_start_id == PAD
    with pytest.raises(ConfigError, match=re.escape("task.response-column")):
        get_task(task_config(workspace, "t5", response_column="")).encode(np.arange(2))


def test_the_input_contract_is_strict(workspace):
    task = get_task(task_config(workspace, "t5"))
    contract, batch = task.input_contract(), task.encode(np.arange(4))
    contract.check(batch, batch_size=4)
    vocab = task.vocab_size
    bad = {
        "labels beyond the vocabulary": {"labels": np.full((4, MAX_LENGTH), vocab)},
        "a negative label other than -100": {"labels": np.full((4, MAX_LENGTH), -99)},
        "decoder ids beyond the vocabulary": {
            "decoder_input_ids": np.full((4, MAX_LENGTH), vocab)},
        "ignored decoder ids": {"decoder_input_ids": np.full((4, MAX_LENGTH), IGNORE)},
        "a decoder mask of 2": {"decoder_attention_mask": np.full((4, MAX_LENGTH), 2)},
        "float decoder ids": {"decoder_input_ids": batch["decoder_input_ids"].astype(float)},
        "int32 labels": {"labels": batch["labels"].astype(np.int32)},
        "longer decoder inputs": {"decoder_input_ids": np.zeros((4, MAX_LENGTH + 1),
                                                                dtype=np.int64)},
        "one row fewer": {"labels": batch["labels"][:3]},
    }
    for what, change in bad.items():
        with pytest.raises(ContractError):
            contract.check({**batch, **change}, batch_size=4)
            pytest.fail(f"accepted {what}")
    with pytest.raises(ContractError, match="decoder_attention_mask"):
        contract.check({k: v for k, v in batch.items() if k != "decoder_attention_mask"},
                       batch_size=4)


def test_greedy_generation_runs_through_the_adapters(workspace):
    """The generation loop reads the logits at each target's last position: with the base
    model it gives what ``model.generate`` gives greedily (no adapters: the same model)."""
    task = get_task(task_config(workspace, "bart", max_new_tokens=6))
    model = task.build_model()
    engine = ServerEngine(model, targets=task.adapted_targets(model))
    sources = [r["source"] for r in reverse_rows(160)[:3]]

    def predict(batch):
        return engine.predict({k: torch.as_tensor(v) for k, v in batch.items()})

    ours = task.generate(predict, sources)
    engine.close()
    ids, mask = task.pad(task.encode_ids(sources))
    out = model.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                         max_new_tokens=6, do_sample=False, num_beams=1,
                         decoder_start_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD,
                         forced_bos_token_id=None, forced_eos_token_id=None)
    tokenizer = task.tokenizer()
    theirs = [tokenizer.decode([t for t in row.tolist()[1:] if t not in (EOS, PAD)],
                               skip_special_tokens=True) for row in out]
    assert ours == theirs and any(ours)  # the same words, and where each stopped


@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_a_federation_lowers_the_loss_and_scores_rouge(workspace, kind, monkeypatch):
    config = RunConfig.from_flat({
        "task.name": "seq2seq", "task.model": str(workspace / kind),
        "task.data-path": str(workspace / "pairs.jsonl"), "task.prompt-column": "source",
        "task.response-column": "target", "task.batch-size": 8,
        "task.max-length": MAX_LENGTH, "task.eval-batches": 2, "task.server-test-size": 16,
        "task.rouge-prompts": 4, "task.max-new-tokens": 8, "optimizer.lr": 0.02,
        "strategy.min-available-nodes": 1, "num-server-rounds": 3})
    monkeypatch.setenv("COLA_FED_DATA_PATH", config.task.data_path)
    strategy = build_strategy(config)
    strategy.start(LocalGrid(2), num_rounds=3, timeout=30)
    first, last = strategy.rounds[0], strategy.rounds[-1]
    print(f"{kind}: held-out loss {first['loss-mean']:.3f} -> {last['loss-mean']:.3f}, "
          f"ROUGE-L {first['rouge-l-mean']:.3f} -> {last['rouge-l-mean']:.3f}")
    assert [r["round"] for r in strategy.rounds] == [0, 1, 2, 3]
    assert last["loss-mean"] < first["loss-mean"]
    assert last["server-loss-mean"] < first["server-loss-mean"]
    assert last["perplexity-mean"] == pytest.approx(
        np.mean([np.exp(s.history[-1]["loss"]) for s in strategy.members.values()]), rel=0.2)
    assert 0 <= last["accuracy-mean"] <= 1
    assert 0 <= first["rouge-l-mean"] <= 1 and 0 <= last["rouge-l-mean"] <= 1
