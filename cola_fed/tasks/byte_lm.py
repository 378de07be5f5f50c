"""Causal language modelling with a tiny, randomly initialised GPT-2 over UTF-8 bytes.

Fully offline: the vocabulary is the 256 byte values plus a padding token, so no tokenizer is
downloaded; the text is Rotten Tomatoes review snippets or the lines of a local text file. The
adapters go on GPT-2's fused ``c_attn`` (a Hugging Face ``Conv1D``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from cola_fed.errors import ConfigError
from cola_fed.tasks.base import IGNORE, Task, next_token_correct, with_perplexity
from cola_fed.tasks.contract import BATCH, InputContract, TensorContract

PAD = 256
VOCAB = 257


def encode_bytes(texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Right-padded byte ids; labels are the ids with padding set to -100."""
    ids = np.full((len(texts), max_length), PAD, dtype=np.int64)
    mask = np.zeros((len(texts), max_length), dtype=np.int64)
    for row, text in enumerate(texts):
        data = np.frombuffer(text.encode("utf-8")[:max_length], dtype=np.uint8)
        ids[row, :len(data)], mask[row, :len(data)] = data, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask == 1, ids, IGNORE)}


class ByteLMTask(Task):
    name = "byte-lm"
    targets = ("c_attn",)
    head = None

    def build_model(self):
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(self.config.seed)
        config = GPT2Config(vocab_size=VOCAB, n_positions=self.config.max_length, n_embd=64,
                            n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, pad_token_id=PAD)
        return GPT2LMHeadModel(config).eval()

    @functools.cache  # noqa: B019 - one task object per run, reread never
    def texts(self) -> list[str]:
        if self.config.data_path:
            try:
                lines = Path(self.config.data_path).read_text(encoding="utf-8").splitlines()
            except OSError as err:
                raise ConfigError(f"task.data-path: {err}") from None
            return [line for line in lines if line.strip()]
        from cola_fed.tasks.text_classification import load_rotten_tomatoes

        return load_rotten_tomatoes().texts

    def labels(self) -> np.ndarray:
        return np.zeros(len(self.texts()), dtype=np.int64)  # no classes: partition by count

    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        texts = self.texts()
        return encode_bytes([texts[i] for i in rows], self.config.max_length)

    def input_contract(self) -> InputContract:
        """Byte ids in [0, 257), a 0/1 mask, and labels in [0, 257) or -100, all int64
        ``(batch, max_length)``."""
        tokens = (BATCH, self.config.max_length)
        return InputContract({
            "input_ids": TensorContract("int64", tokens, 0, VOCAB),
            "attention_mask": TensorContract("int64", tokens, 0, 2),
            "labels": TensorContract("int64", tokens, 0, VOCAB, extra_values=(IGNORE,)),
        })

    def correct(self, logits, labels) -> tuple[int, int]:
        """Next-byte accuracy over the non-padding positions."""
        return next_token_correct(logits, labels)

    def finish_metrics(self, means: dict[str, float]) -> dict[str, float]:
        return with_perplexity(means)
