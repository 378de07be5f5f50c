"""Image classification on scikit-learn's bundled 8x8 digits with a frozen, random MLP base.

The reference code's image-classification setting: the base is random and frozen, every linear
layer is adapted, and the task is small enough to run a whole federation in seconds on a CPU.

``task.data-path`` (a node: its node config ``data-path``) names a node's own CSV instead: a
header, a ``label`` column (0-9) and 64 feature columns in order, pixels in [0, 1]
(:func:`cola_fed.tasks.tables.read_feature_csv`).
"""

from __future__ import annotations

import functools

import numpy as np

from cola_fed.tasks.base import Task
from cola_fed.tasks.contract import BATCH, InputContract, TensorContract
from cola_fed.tasks.tables import read_feature_csv

FEATURES = 64
CLASSES = 10


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 images as float32 ``[n, 64]`` in [0, 1], and int64 labels 0-9."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


@functools.cache
def load_digits_csv(path: str, skip_invalid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A node's own digits CSV as :func:`load_digits` returns the bundled set, read once per
    process (and file); ``skip_invalid``: ``task.skip-invalid-rows``. The arrays are
    read-only: they are the cache."""
    features, labels = read_feature_csv(path, features=FEATURES, low=0.0, high=1.0,
                                        classes=CLASSES, skip_invalid=skip_invalid)
    features.flags.writeable = labels.flags.writeable = False
    return features, labels


class DigitsTask(Task):
    name = "digits"
    targets = ("fc1", "fc2", "head")
    head = "head"

    def build_model(self):
        import torch
        from torch import nn

        class FrozenMLP(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(FEATURES, 64), nn.Linear(64, 64)
                self.head = nn.Linear(64, CLASSES)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

        torch.manual_seed(self.config.seed)
        return FrozenMLP().eval()

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The node's own CSV (``task.data-path``), else the bundled digits."""
        if self.config.data_path:
            return load_digits_csv(self.config.data_path, self.config.skip_invalid_rows)
        return load_digits()

    def labels(self) -> np.ndarray:
        return self.load()[1]

    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        features, labels = self.load()
        return {"x": features[rows], "labels": labels[rows]}

    def input_contract(self) -> InputContract:
        """``x`` float32 ``(batch, 64)`` pixels in [0, 1]; ``labels`` int64 digits 0-9."""
        return InputContract({
            "x": TensorContract("float32", (BATCH, FEATURES), 0.0, 1.0),
            "labels": TensorContract("int64", (BATCH,), 0, CLASSES),
        })
