"""Tiny real models shared by the tests: a plain torch MLP, a BERT and a GPT-2, built offline."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the server identity and the nodes' known servers of this test session, never the user's
os.environ["COLA_FED_HOME"] = tempfile.mkdtemp(prefix="cola-fed-home-")
# ... and its caches (graphs, task files, converted models)
os.environ["COLA_FED_CACHE"] = tempfile.mkdtemp(prefix="cola-fed-cache-")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


class TinyNet(nn.Module):
    """A frozen MLP classifier taking ``x``: the image-classification shape of ColA."""

    def __init__(self, d_in: int = 12, hidden: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def tiny_bert(num_labels: int = 3, seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=32, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()


def tiny_gpt2(seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def text_batch(n: int, length: int, vocab: int, *, labels: str, seed: int) -> dict:
    """Token batch with right padding (some rows shorter), as a tokenizer would give."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    if labels == "lm":
        target = ids.masked_fill(mask == 0, -100)
    else:
        target = torch.randint(0, int(labels), (n,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": target}


def vector_batch(n: int, d_in: int = 12, classes: int = 5, *, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, d_in, generator=g, dtype=torch.float64),
            "labels": torch.randint(0, classes, (n,), generator=g)}


def randomize(state: dict, seed: int, scale: float = 0.1) -> dict:
    """Adapter state with every parameter drawn at random (so no gradient is trivially zero)."""
    g = torch.Generator().manual_seed(seed)
    return {
        layer: {name: torch.randn(t.shape, generator=g, dtype=t.dtype) * scale
                for name, t in params.items()}
        for layer, params in state.items()
    }


@pytest.fixture
def bert64():
    return tiny_bert().double()


@pytest.fixture
def gpt64():
    return tiny_gpt2().double()


@pytest.fixture
def net64():
    torch.manual_seed(0)
    return TinyNet().double()


@pytest.fixture(scope="session")
def digits_federations(tmp_path_factory):
    """The digits federations of tests/test_js_node.py, run side by side (each spends most of
    its time waiting on Flower's processes): the JavaScript node's, over TLS with SuperNode
    authentication, and the reference with partition 1 on a Python SuperNode with ONNX Runtime,
    which the browser node (tests/test_browser_node.py) is compared with too."""
    from test_js_node import federations

    tmp = tmp_path_factory.mktemp("digits-federations")
    return federations(tmp, "digits", secure_js=True)


@pytest.fixture(scope="session")
def python_onnx_digits(digits_federations):
    """Partition 1 on a Python SuperNode with ONNX Runtime (see ``digits_federations``)."""
    return digits_federations[1]
