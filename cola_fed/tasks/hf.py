"""Generic Hugging Face tasks, set up by configuration: your model, your data.

``task.model`` names the model (a local folder, a model id in the local Hugging Face cache, a
``.gguf`` file, or ``pkg:<package>/<path>``; :func:`cola_fed.tasks.models.resolve_model`),
``task.data-path`` the data (CSV, JSON lines, Parquet or a ``save_to_disk`` folder;
:mod:`cola_fed.tasks.tables`), and column keys and a prompt template say what to read:

- ``sequence-classification``: text (or a template over columns) -> a label; the model gets a
  fresh, seeded classification head, adapted by a Linear adapter with bias;
- ``causal-lm``: plain text, or instruction/response pairs whose loss counts the response
  tokens only. Metrics: token accuracy, loss and perplexity on held-out text and, with
  ``task.rouge-prompts``, ROUGE-L of greedy generations on server-held test prompts;
- ``seq2seq``: source -> target pairs on an encoder-decoder LM (BART, T5); the node sends the
  decoder inputs (the labels shifted right). Metrics as ``causal-lm``.

The node side is torch-free: it encodes its rows with the model's ``tokenizer.json`` through
the ``tokenizers`` library, from the copy the server ships at hello (checked against the signed
plan's hash). Padding and end-of-sequence ids travel in the plan.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cola_fed.config import TaskConfig
from cola_fed.errors import ConfigError
from cola_fed.tasks.base import IGNORE, Task, next_token_correct, with_perplexity
from cola_fed.tasks.contract import BATCH, InputContract, TensorContract
from cola_fed.tasks.tables import (
    RowCheck,
    Table,
    checked_rows,
    column,
    label_ids,
    present,
    read_table,
    render_column,
    template_columns,
    valid_label,
)

if TYPE_CHECKING:
    from cola_fed.tasks.chat import ChatWrapping

TOKENIZER = "tokenizer.json"
#: words of a plain text that prompt a ROUGE-L generation
PROMPT_WORDS = 12
#: characters a text may have per token of ``task.max-length`` before it is tokenised
MAX_CHARS_PER_TOKEN = 64
#: names of the freshly initialised classification layer, by model family
HEAD_NAMES = ("classifier", "score", "classifier.out_proj", "classification_head.out_proj")
#: characters a plan's text field carries (``cola_fed.federation.protocol``'s string limit)
MAX_PLAN_TEXT = 4096


class HuggingFaceTask(Task):
    """What both generic kinds share: the model folder, the tokenizer, the data table."""

    node_files = (TOKENIZER,)

    # ---- server side

    @functools.cached_property
    def model_folder(self) -> Path:
        """The folder ``from_pretrained`` loads (``task.model`` resolved; server side)."""
        from cola_fed.tasks.models import resolve_model

        if not self.config.model:
            raise ConfigError(f"task.model: the {self.name} task needs a model: a local "
                              "folder, a model id in the local Hugging Face cache, a .gguf "
                              "file or pkg:<package>/<path> (docs/tasks.md)")
        return resolve_model(self.config.model)

    @functools.cached_property
    def model_config(self) -> dict[str, Any]:
        """The model's ``config.json``, read as JSON (no transformers needed)."""
        path = self.model_folder / "config.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"task.model: cannot read {path}: {err}") from None

    def locate_node_files(self) -> dict[str, Path]:
        from cola_fed.tasks.models import tokenizer_file

        return {TOKENIZER: tokenizer_file(self.model_folder)}

    def plan_config(self) -> TaskConfig:
        """The plan's task, with the padding and end-of-sequence ids resolved from the model."""
        import dataclasses

        pad, eos = self.special_ids
        return dataclasses.replace(super().plan_config(), pad_id=pad, eos_id=eos)

    @functools.cached_property
    def special_ids(self) -> tuple[int, int]:
        """``(pad_id, eos_id)``: configured, else the model's (padding falls back to the end
        of sequence, as is usual for decoder models), checked against the tokenizer."""
        pad, eos = self.config.pad_id, self.config.eos_id
        if min(pad, eos) < 0 and not self.config.model:
            raise ConfigError("plan: task.pad-id and task.eos-id must come resolved from the "
                              "server")
        if min(pad, eos) < 0:  # server side: the model says
            model_eos = _first_id(self.model_config.get("eos_token_id"))
            model_pad = _first_id(self.model_config.get("pad_token_id"))
            eos = eos if eos >= 0 else (model_eos if model_eos is not None else 0)
            pad = pad if pad >= 0 else (model_pad if model_pad is not None else eos)
        size = self.tokenizer().get_vocab_size(with_added_tokens=True)
        for key, value in (("task.pad-id", pad), ("task.eos-id", eos)):
            if not 0 <= value < size:
                raise ConfigError(f"{key}: token id {value} is outside the tokenizer's "
                                  f"vocabulary of {size}")
        return pad, eos

    @functools.cached_property
    def vocab_size(self) -> int:
        """Token ids the model embeds (from its config), the bound of the input contract."""
        size = self.model_config.get("vocab_size")
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"task.model: {self.model_folder}/config.json has no vocab_size")
        return size

    def check(self, num_partitions: int | None = None) -> None:
        """The model and its tokenizer agree (every token id has an embedding, sequences fit
        its positions), then, where the server has the data, the base checks."""
        tokens = self.tokenizer().get_vocab_size(with_added_tokens=True)
        if tokens > self.vocab_size:
            raise ConfigError(f"task.model: the tokenizer has {tokens} tokens but the model "
                              f"embeds {self.vocab_size} (config.json vocab_size); resize the "
                              "model's embeddings or use its own tokenizer")
        positions = next((self.model_config[k] for k in ("max_position_embeddings",
                                                          "n_positions")
                          if isinstance(self.model_config.get(k), int)), None)
        if positions is not None and self.config.max_length > positions:
            raise ConfigError(f"task.max-length: {self.config.max_length} tokens, but the "
                              f"model has {positions} positions")
        self.special_ids  # noqa: B018 - checks pad and eos against the tokenizer
        if self.config.data_path:  # a deployed server may hold no data: its nodes do
            super().check(num_partitions)

    def _load_model(self, auto_class: str, **kwargs: Any) -> Any:
        """The model in float32, eval mode, seeded (a fresh head is initialised seeded)."""
        from cola_fed.tasks.models import load_pretrained

        return load_pretrained(self.model_folder, auto_class, seed=self.config.seed, **kwargs)

    # ---- node side (numpy and tokenizers only)

    def tokenizer(self) -> Any:
        """The model's tokenizer (``tokenizers``), without padding or truncation set."""
        return _tokenizer(str(self.file(TOKENIZER)))

    @functools.cache  # noqa: B019 - one task object per run, reread never
    def table(self) -> Table:
        """The data: ``task.data-path``."""
        if not self.config.data_path:
            raise ConfigError(f"task.data-path: the {self.name} task has no bundled data; name "
                              "a CSV, JSONL or Parquet file or a save_to_disk folder (nodes: "
                              "node config data-path)")
        path = self.config.data_path
        if path.startswith("pkg:"):
            from cola_fed.tasks.models import package_file

            path = str(package_file(path, key="task.data-path"))
        return checked_rows(read_table(path), self.row_checks(),
                            skip=self.config.skip_invalid_rows, source=f"task.data-path {path}")

    def row_checks(self) -> list[RowCheck]:
        """What every data row must hold for the task to use it: the rows that do not are an
        error naming their lines, or skipped with ``task.skip-invalid-rows``. Here: a value
        (not null) in the text column, or in each column the template names."""
        return self.text_checks("text_column")

    def text_checks(self, text_column: str) -> list[RowCheck]:
        """A value (not null) in each column ``task.template`` names, else in the column the
        config field ``text_column`` names (none when that field is empty)."""
        if self.config.template:
            return [present(name, "task.template")
                    for name in template_columns(self.config.template)]
        name = getattr(self.config, text_column)
        return [present(name, f"task.{text_column.replace('_', '-')}")] if name else []

    def rows(self, rows: np.ndarray) -> Table:
        """The data's ``rows``, every column."""
        return {name: [values[i] for i in rows] for name, values in self.table().items()}

    def texts(self, table: Table, text_column: str) -> list[str]:
        """The text of each row of ``table``: ``task.template`` over its columns, else
        ``text_column``."""
        if self.config.template:
            return render_column(table, self.config.template)
        key = f"task.{text_column.replace('_', '-')}"
        return [str(v) for v in column(table, getattr(self.config, text_column), key=key)]

    def partition_values(self) -> list:
        return column(self.table(), self.config.partition_by, key="task.partition-by")

    def encode_ids(self, texts: list[str], *, special: bool = True) -> list[list[int]]:
        """Token ids of each text (with the tokenizer's special tokens unless ``special`` is
        off), at most ``task.max-length``. A text is cut to ``MAX_CHARS_PER_TOKEN`` characters
        a token first: a template cannot make a node tokenise without bound."""
        limit = self.config.max_length * MAX_CHARS_PER_TOKEN
        try:
            encodings = self.tokenizer().encode_batch([t[:limit] for t in texts],
                                                      add_special_tokens=special)
        except BaseException as err:  # the Rust library panics (not an Exception) on bad input
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            raise ConfigError(f"the task's tokenizer failed: {type(err).__name__}: "
                              f"{str(err)[:200]}") from None
        return [e.ids[:self.config.max_length] for e in encodings]

    def pad(self, sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, right-padded (or cut) to ``task.max-length``."""
        length, pad_id = self.config.max_length, self.special_ids[0]
        ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.int64)
        for row, seq in enumerate(sequences):
            seq = seq[:length]
            ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
        return ids, mask

    def input_contract(self) -> InputContract:
        """Token ids below the model's vocabulary and a 0/1 mask, int64
        ``(batch, max_length)``, and the kind's labels."""
        tokens = (BATCH, self.config.max_length)
        return InputContract({
            "input_ids": TensorContract("int64", tokens, 0, self.vocab_size),
            "attention_mask": TensorContract("int64", tokens, 0, 2),
            "labels": self.label_contract(),
        })

    def label_contract(self) -> TensorContract:
        raise NotImplementedError


class SequenceClassificationTask(HuggingFaceTask):
    """Text -> one of ``task.num-labels`` classes (or ``task.label-names``), on any Hugging
    Face model with a sequence-classification head."""

    name = "sequence-classification"

    @property
    def num_classes(self) -> int:
        return len(self.config.labels) or self.config.num_labels

    def build_model(self) -> Any:
        model = self._load_model("AutoModelForSequenceClassification",
                                 num_labels=self.num_classes)
        model.config.pad_token_id = self.special_ids[0]  # decoders classify the last token
        self.head = _find_head(model)
        return model

    @functools.cache  # noqa: B019 - one task object per run; encode asks for it per batch
    def labels(self) -> np.ndarray:
        values = column(self.table(), self.config.label_column, key="task.label-column")
        return label_ids(values, names=self.config.labels, num_labels=self.num_classes)

    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        ids, mask = self.pad(self.encode_ids(self.texts(self.rows(rows), "text_column")))
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels()[rows]}

    def label_contract(self) -> TensorContract:
        return TensorContract("int64", (BATCH,), 0, self.num_classes)

    def row_checks(self) -> list[RowCheck]:
        """A text, and a label :func:`label_ids` accepts (a missing one is the usual case)."""
        return [*super().row_checks(),
                valid_label(self.config.label_column, names=self.config.labels,
                            num_labels=self.num_classes)]


class CausalLMTask(HuggingFaceTask):
    """Next-token prediction on plain text, or instruction tuning with the loss on the
    response tokens only (``task.response-column``)."""

    name = "causal-lm"
    #: whether instruction prompts may be wrapped in the model's chat template (decoder-only)
    chat = True

    def build_model(self) -> Any:
        return self._load_model("AutoModelForCausalLM")

    @functools.cached_property
    def chat_wrapping(self) -> ChatWrapping | None:
        """Server side: the text the model's chat template puts around a prompt, for
        instruction tuning with ``task.chat-template = "auto"`` on a model that has one; else
        ``None``. Always ``None`` on a node: it gets the wrapped template in the plan."""
        if not (self.chat and self.instruction and self.config.chat_template == "auto"
                and self.config.model):
            return None
        from cola_fed.tasks.chat import chat_wrapping
        from cola_fed.tasks.models import tokenizer_file

        return chat_wrapping(self.model_folder, tokenizer_file(self.model_folder))

    @functools.cached_property
    def prompt_template(self) -> str:
        """The prompt's template: ``task.template`` (or ``{task.prompt-column}``) inside the
        chat template where one applies (:attr:`chat_wrapping`), else ``task.template``. The
        plan carries it as ``task.template``, so nodes build the same prompts."""
        wrapping = self.chat_wrapping
        if wrapping is None:
            return self.config.template
        inner = self.config.template or "{" + self.config.prompt_column + "}"
        if not self.config.template:
            try:
                template_columns(inner, key="task.prompt-column")
            except ConfigError:
                raise ConfigError(f"task.prompt-column: {self.config.prompt_column!r} cannot "
                                  "be wrapped in the chat template; name the prompt through "
                                  "task.template (\"{column}\")") from None
        wrapped = wrapping.template(inner)
        if len(wrapped) > MAX_PLAN_TEXT:
            raise ConfigError(f"task.chat-template: the model's chat template wraps prompts in "
                              f"{len(wrapped) - len(inner)} characters; a plan carries "
                              f"{MAX_PLAN_TEXT}; set task.chat-template = \"none\" and write "
                              "the format in task.template")
        return wrapped

    def plan_config(self) -> TaskConfig:
        """The plan's task, with the prompt's chat wrapping resolved into its template."""
        import dataclasses

        return dataclasses.replace(super().plan_config(), template=self.prompt_template)

    def labels(self) -> np.ndarray:
        return np.zeros(len(next(iter(self.table().values()))), dtype=np.int64)

    def row_checks(self) -> list[RowCheck]:
        """The text; in instruction tuning (and seq2seq) the prompt's columns and the
        response."""
        if not self.config.response_column:
            return super().row_checks()
        return [*self.text_checks("prompt_column"),
                present(self.config.response_column, "task.response-column")]

    @property
    def instruction(self) -> bool:
        return bool(self.config.response_column)

    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        prompts, responses = self.pairs(rows)
        if responses is None:
            ids, mask = self.pad(self.encode_ids(prompts))
            return {"input_ids": ids, "attention_mask": mask,
                    "labels": np.where(mask == 1, ids, IGNORE)}
        prompt_ids, response_ids = self.encode_pair(prompts, responses)
        length = self.config.max_length
        # a long prompt is cut (its end) so that the response keeps at least half the length:
        # a sample whose response is cut away whole would teach nothing
        prompt_ids = [p[:max(length - len(r), length // 2)]
                      for p, r in zip(prompt_ids, response_ids)]
        ids, mask = self.pad([p + r for p, r in zip(prompt_ids, response_ids)])
        labels = np.full_like(ids, IGNORE)
        for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
            start, stop = min(len(prompt), ids.shape[1]), min(len(prompt) + len(response),
                                                              ids.shape[1])
            labels[row, start:stop] = ids[row, start:stop]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def pairs(self, rows: np.ndarray) -> tuple[list[str], list[str] | None]:
        """The prompt (or whole text) and, in instruction tuning, the response of each row."""
        table = self.rows(rows)
        if not self.instruction:
            return self.texts(table, "text_column"), None
        if self.prompt_template:
            prompts = render_column(table, self.prompt_template)
        elif self.config.prompt_column:
            prompts = self.texts(table, "prompt_column")
        else:
            prompts = None
        if prompts is None:
            raise ConfigError("task.prompt-column: instruction tuning (task.response-column) "
                              "needs a prompt column or a task.template")
        responses = [str(v) for v in column(table, self.config.response_column,
                                            key="task.response-column")]
        return prompts, responses

    def encode_pair(self, prompts: list[str], responses: list[str]
                    ) -> tuple[list[list[int]], list[list[int]]]:
        """Prompt ids (with the tokenizer's special tokens) and response ids (without, then
        the end-of-sequence id): what the model reads, and what it learns to write."""
        eos = self.special_ids[1]
        prompt_ids = self.encode_ids(prompts)
        response_ids = [[*ids, eos] for ids in self.encode_ids(responses, special=False)]
        return prompt_ids, response_ids

    def label_contract(self) -> TensorContract:
        return TensorContract("int64", (BATCH, self.config.max_length), 0, self.vocab_size,
                              extra_values=(IGNORE,))

    def correct(self, logits: Any, labels: Any) -> tuple[int, int]:
        """Next-token accuracy over the positions the loss counts."""
        return next_token_correct(logits, labels)

    def finish_metrics(self, means: dict[str, float]) -> dict[str, float]:
        return with_perplexity(means)

    # ---- ROUGE-L of greedy generations (server side)

    def rouge_l(self, predict: Callable[[dict[str, np.ndarray]], Any]) -> float:
        """Mean ROUGE-L F1 of greedy generations for the first ``task.rouge-prompts``
        server-held test samples against their references."""
        prompts, references = self.rouge_examples
        generated = self.generate(predict, prompts)
        scores = [_rouge_scorer().score(ref, gen)["rougeL"].fmeasure
                  for ref, gen in zip(references, generated)]
        return float(np.mean(scores)) if scores else 0.0

    @functools.cached_property
    def rouge_examples(self) -> tuple[list[str], list[str]]:
        """Prompts and references of the first ``task.rouge-prompts`` server-held test
        samples: the prompt and response of instruction data; for plain text, a text's first
        words (half of them, at most ``PROMPT_WORDS``) and the words that follow (about
        ``task.max-new-tokens`` tokens' worth), texts of ``2 * PROMPT_WORDS`` words or more
        first. Texts of fewer than 4 words are skipped."""
        rows = self.server_test_rows()
        prompts, responses = self.pairs(rows)
        count = self.config.rouge_prompts
        if responses is not None:
            return prompts[:count], responses[:count]
        follow = max(1, self.config.max_new_tokens * 3 // 4)  # ~0.75 words per token
        words = [text.split() for text in prompts]
        # texts long enough for a whole prompt first; shorter ones (4 words or more) only to
        # make up the count
        texts = sorted((w for w in words if len(w) >= 4),
                       key=lambda w: len(w) < 2 * PROMPT_WORDS)[:count]
        if not texts:
            raise ConfigError("task.rouge-prompts: every server-held test text has fewer than "
                              "4 words; set task.rouge-prompts = 0 (or use instruction data)")
        cuts = [min(PROMPT_WORDS, len(w) // 2) for w in texts]
        return ([" ".join(w[:cut]) for w, cut in zip(texts, cuts)],
                [" ".join(w[cut:cut + follow]) for w, cut in zip(texts, cuts)])

    def generate(self, predict: Callable[[dict[str, np.ndarray]], Any],
                 prompts: list[str]) -> list[str]:
        """Greedy continuations of ``prompts`` (at most ``task.max-new-tokens`` tokens each,
        within ``task.max-length``), through ``predict`` (batch -> logits)."""
        tokenizer, eos = self.tokenizer(), self.special_ids[1]
        budget = self.config.max_new_tokens
        encoded = [ids[-(self.config.max_length - 1):] for ids in self.encode_ids(prompts)]
        ids, mask = self.pad(encoded)
        lengths = np.asarray([len(e) for e in encoded])
        done = np.zeros(len(prompts), dtype=bool)
        out: list[list[int]] = [[] for _ in prompts]
        for _ in range(budget):
            if done.all():
                break
            logits = predict({"input_ids": ids, "attention_mask": mask,
                              "labels": np.full_like(ids, IGNORE)})
            nxt = np.asarray(logits[np.arange(len(prompts)), lengths - 1].argmax(-1))
            for row, token in enumerate(nxt.tolist()):
                if done[row]:
                    continue
                if token == eos or lengths[row] >= ids.shape[1]:
                    done[row] = True
                    continue
                out[row].append(token)
                ids[row, lengths[row]], mask[row, lengths[row]] = token, 1
                lengths[row] += 1
        return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in out]


@functools.cache
def _rouge_scorer() -> Any:
    import logging

    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # "Using default tokenizer." per call
    return rouge_scorer.RougeScorer(["rougeL"])


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _first_id(value: Any) -> int | None:
    """A token id from a config value that may be an int, a list of ints or absent."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _find_head(model: Any) -> str:
    """The name of the model's classification layer (freshly initialised, adapted)."""
    from torch import nn

    modules = dict(model.named_modules())
    for name in HEAD_NAMES:
        if isinstance(modules.get(name), nn.Linear):
            return name
    raise ConfigError(f"task.model: cannot find the classification head of "
                      f"{type(model).__name__} (looked for {HEAD_NAMES})")


class Seq2SeqTask(CausalLMTask):
    """Source -> target on an encoder-decoder LM (BART, T5, ...): the encoder reads the source
    (``task.prompt-column`` or ``task.template``), the decoder learns to write the target
    (``task.response-column``) and its end-of-sequence token.

    A batch is ``input_ids`` and ``attention_mask`` of the source, the target's ``labels``
    (-100 on padding) and ``decoder_input_ids``: the labels shifted right after the decoder
    start token (``task.decoder-start-id``: the model's), padding where the labels are -100,
    with its ``decoder_attention_mask``. The node builds them, so the server's loss is the
    unshifted token cross-entropy (:func:`cola_fed.gl.losses.seq2seq_lm_loss`). Sources and
    targets each take up to ``task.max-length`` tokens.
    """

    name = "seq2seq"
    chat = False  # the encoder reads the source as it is

    # ---- server side

    def build_model(self) -> Any:
        import inspect

        model = self._load_model("AutoModelForSeq2SeqLM")
        if not getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"task.model: {type(model).__name__} is not an encoder-decoder "
                              "model; the seq2seq task needs one (causal-lm: decoder-only)")
        if "decoder_attention_mask" not in inspect.signature(model.forward).parameters:
            raise ConfigError(f"task.model: {type(model).__name__} takes no "
                              "decoder_attention_mask, which the seq2seq task sends")
        return model

    def plan_config(self) -> TaskConfig:
        """The plan's task, with the decoder start id resolved too."""
        import dataclasses

        return dataclasses.replace(super().plan_config(), decoder_start_id=self.decoder_start_id)

    @functools.cached_property
    def decoder_start_id(self) -> int:
        """The token the decoder starts from: configured, else the model's
        ``decoder_start_token_id`` (``config.json``, then ``generation_config.json``)."""
        start = self.config.decoder_start_id
        if start < 0 and not self.config.model:
            raise ConfigError("plan: task.decoder-start-id must come resolved from the server")
        if start < 0:
            start = self._model_decoder_start()
        size = self.tokenizer().get_vocab_size(with_added_tokens=True)
        if start >= size:
            raise ConfigError(f"task.decoder-start-id: token id {start} is outside the "
                              f"tokenizer's vocabulary of {size}")
        return start

    def _model_decoder_start(self) -> int:
        """The model's ``decoder_start_token_id``: its ``config.json``'s, else its
        ``generation_config.json``'s (where newer checkpoints keep it)."""
        generation = self.model_folder / "generation_config.json"
        try:
            generation_config = json.loads(generation.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            generation_config = {}
        for values in (self.model_config, generation_config):
            found = (_first_id(values.get("decoder_start_token_id"))
                     if isinstance(values, dict) else None)
            if found is not None:
                return found
        raise ConfigError(f"task.decoder-start-id: {self.model_folder} names no "
                          "decoder_start_token_id; set task.decoder-start-id (T5: its padding "
                          "id, BART: its end-of-sequence id)")

    def check(self, num_partitions: int | None = None) -> None:
        self.decoder_start_id  # noqa: B018 - refuses a model without one now
        super().check(num_partitions)

    # ---- node side

    def pairs(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        """The source and the target of each row."""
        if not self.config.response_column:
            raise ConfigError("task.response-column: the seq2seq task needs the target column "
                              "(and task.prompt-column or task.template for the source)")
        prompts, responses = super().pairs(rows)
        assert responses is not None  # a response column is set
        return prompts, responses

    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The source's ids and mask; the target's labels and the decoder inputs (the labels
        shifted right after the start token), each ``task.max-length`` wide."""
        sources, targets = self.pairs(rows)
        eos = self.special_ids[1]
        target_ids = [[*t, eos] for t in self.encode_ids(targets, special=False)]
        ids, mask = self.pad(self.encode_ids(sources))
        target, decoder_mask = self.pad(target_ids)
        decoder_ids = np.full_like(target, self.special_ids[0])
        decoder_ids[:, 0] = self.decoder_start_id
        decoder_ids[:, 1:] = np.where(decoder_mask[:, :-1] == 1, target[:, :-1],
                                      self.special_ids[0])
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids,
                "decoder_attention_mask": decoder_mask,
                "labels": np.where(decoder_mask == 1, target, IGNORE)}

    def input_contract(self) -> InputContract:
        """Source and decoder token ids below the model's vocabulary, 0/1 masks, and labels
        in the vocabulary or -100, all int64 ``(batch, max_length)``."""
        tokens = (BATCH, self.config.max_length)
        return InputContract({
            "input_ids": TensorContract("int64", tokens, 0, self.vocab_size),
            "attention_mask": TensorContract("int64", tokens, 0, 2),
            "decoder_input_ids": TensorContract("int64", tokens, 0, self.vocab_size),
            "decoder_attention_mask": TensorContract("int64", tokens, 0, 2),
            "labels": self.label_contract(),
        })

    def correct(self, logits: Any, labels: Any) -> tuple[int, int]:
        """Token accuracy over the target tokens (the logits at ``t`` predict label ``t``)."""
        valid = labels != IGNORE
        return int(((logits.argmax(-1) == labels) & valid).sum()), int(valid.sum())

    # ---- ROUGE-L of greedy generations (server side)

    def generate(self, predict: Callable[[dict[str, np.ndarray]], Any],
                 prompts: list[str]) -> list[str]:
        """Greedy targets of the sources ``prompts`` (at most ``task.max-new-tokens`` tokens,
        within ``task.max-length``), through ``predict`` (batch -> decoder logits): the
        decoder reruns on its growing inputs (no cache), so the engine's adapters apply."""
        pad, eos = self.special_ids
        ids, mask = self.pad(self.encode_ids(prompts))
        decoder_ids = np.full_like(ids, pad)
        decoder_ids[:, 0] = self.decoder_start_id
        decoder_mask = np.zeros_like(mask)
        decoder_mask[:, 0] = 1
        lengths = np.ones(len(prompts), dtype=np.int64)
        done = np.zeros(len(prompts), dtype=bool)
        out: list[list[int]] = [[] for _ in prompts]
        for _ in range(self.config.max_new_tokens):
            if done.all():
                break
            logits = predict({"input_ids": ids, "attention_mask": mask,
                              "decoder_input_ids": decoder_ids,
                              "decoder_attention_mask": decoder_mask,
                              "labels": np.full_like(ids, IGNORE)})
            nxt = np.asarray(logits[np.arange(len(prompts)), lengths - 1].argmax(-1))
            for row, token in enumerate(nxt.tolist()):
                if done[row]:
                    continue
                done[row] = token == eos or lengths[row] >= ids.shape[1]
                if token != eos:
                    out[row].append(token)
                if done[row]:
                    continue
                decoder_ids[row, lengths[row]], decoder_mask[row, lengths[row]] = token, 1
                lengths[row] += 1
        tokenizer = self.tokenizer()
        return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in out]
