"""Image classification on scikit-learn's bundled 8x8 digits with a frozen, random MLP base.

The reference code's image-classification setting: the base is random and frozen, every linear
layer is adapted, and the task is small enough to run a whole federation in seconds on a CPU.
"""

from __future__ import annotations

import numpy as np

from cola_fed.tasks.base import Task
from cola_fed.tasks.contract import BATCH, InputContract, TensorContract

FEATURES = 64
CLASSES = 10


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 images as float32 ``[n, 64]`` in [0, 1], and int64 labels 0-9."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


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

    def labels(self) -> np.ndarray:
        return load_digits()[1]

    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        features, labels = load_digits()
        return {"x": features[rows], "labels": labels[rows]}

    def input_contract(self) -> InputContract:
        """``x`` float32 ``(batch, 64)`` pixels in [0, 1]; ``labels`` int64 digits 0-9."""
        return InputContract({
            "x": TensorContract("float32", (BATCH, FEATURES), 0.0, 1.0),
            "labels": TensorContract("int64", (BATCH,), 0, CLASSES),
        })
