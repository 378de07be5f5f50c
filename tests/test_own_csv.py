"""A node's own data for the numeric tasks (issue 24): the digits and MNIST tasks read a CSV
with a ``label`` column and the features in order, exactly as the bundled data would give
them, and refuse bad files with a ConfigError naming the line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from cola_fed.config import TaskConfig
from cola_fed.errors import ConfigError
from cola_fed.tasks import get_task
from cola_fed.tasks.digits import FEATURES, load_digits
from cola_fed.tasks.mnist import PIXELS, load_mnist


def write_feature_csv(path: Path, features: np.ndarray, labels: np.ndarray,
                      label_at: int | None = None, newline: str = "\n") -> Path:
    """A feature CSV: ``f0..f{n-1}`` and ``label`` (last, or at ``label_at``), each float32
    value written as the shortest decimal of its float64 value."""
    names = [f"f{i}" for i in range(features.shape[1])]
    at = len(names) if label_at is None else label_at
    lines = [",".join([*names[:at], "label", *names[at:]])]
    for row, label in zip(features.reshape(len(features), -1), labels):
        values = [repr(float(v)) for v in row]
        lines.append(",".join([*values[:at], str(int(label)), *values[at:]]))
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


def digits_config(**kwargs) -> TaskConfig:
    return TaskConfig(name="digits", batch_size=16, eval_batches=2, seed=3, **kwargs)


def assert_same_client_data(ours, bundled) -> None:
    assert ours.num_examples == bundled.num_examples
    assert ours.train.keys() == bundled.train.keys()
    for key, values in bundled.train.items():
        assert ours.train[key].dtype == values.dtype
        np.testing.assert_array_equal(ours.train[key], values)
    assert len(ours.eval_batches) == len(bundled.eval_batches)
    for mine, theirs in zip(ours.eval_batches, bundled.eval_batches):
        for key, values in theirs.items():
            assert mine[key].dtype == values.dtype
            np.testing.assert_array_equal(mine[key], values)
    for mine, theirs in zip(ours.batches(16, seed=9), bundled.batches(16, seed=9)):
        np.testing.assert_array_equal(mine["x"], theirs["x"])
        break


@pytest.mark.parametrize("server_test_size", [0, 100])
@pytest.mark.parametrize("label_at", [None, 0, 20])
def test_digits_csv_gives_the_bundled_client_data(tmp_path, server_test_size, label_at):
    features, labels = load_digits()
    path = write_feature_csv(tmp_path / "digits.csv", features, labels, label_at)
    config = digits_config(server_test_size=server_test_size)
    bundled = get_task(config).client_data(0, 1)
    ours = get_task(dataclasses.replace(config, data_path=str(path))).client_data(0, 1)
    assert_same_client_data(ours, bundled)
    assert ours.train["x"].dtype == np.float32 and ours.train["labels"].dtype == np.int64


def test_a_few_rows_read_back_exactly_and_round_like_numpy(tmp_path):
    features, labels = load_digits()
    path = write_feature_csv(tmp_path / "d.csv", features[:40], labels[:40], newline="\r\n")
    task = get_task(digits_config(data_path=str(path)))
    x, y = task.load()
    np.testing.assert_array_equal(x, features[:40])
    np.testing.assert_array_equal(y, labels[:40])
    # decimal text -> float64 -> float32, as numpy casts (and as the JavaScript node does)
    text = "label," + ",".join(f"f{i}" for i in range(FEATURES)) + "\n"
    decimals = ["0.1", "0.3333333333333333", "1e-3", ".5", "+0.7", "1.", "0", "1"] * 8
    text += '"3",' + ",".join(decimals) + "\n\n"  # a quoted field, a blank line
    (tmp_path / "r.csv").write_text(text)
    x, y = get_task(digits_config(data_path=str(tmp_path / "r.csv"))).load()
    assert y.tolist() == [3]
    np.testing.assert_array_equal(x[0], np.asarray([float(d) for d in decimals]
                                                   ).astype(np.float32))


def test_a_data_path_that_does_not_exist_is_refused(tmp_path):
    missing = tmp_path / "nope.csv"
    for name in ("digits", "mnist"):
        task = get_task(TaskConfig(name=name, data_path=str(missing)))
        with pytest.raises(ConfigError, match=r"nope\.csv"):
            task.labels()


HEADER = "label," + ",".join(f"f{i}" for i in range(FEATURES))
GOOD = "1," + ",".join(["0.5"] * FEATURES)


def with_feature(value: str, label: str = "1") -> str:
    return label + "," + value + "," + ",".join(["0.5"] * (FEATURES - 1))


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    (HEADER + "\n", "no rows"),
    ("f0,f1\n1,2\n", "no 'label' column"),
    (HEADER + ",f0\n", "repeats"),
    (HEADER + ",extra\n" + GOOD + ",0.5\n", "65 feature columns"),
    (HEADER + "\n" + GOOD + "\n" + GOOD + ",0.5\n", "line 3: 66 fields"),
    (HEADER + "\n" + GOOD[:-4] + "\n", "line 2: 64 fields"),
    (HEADER + "\n" + with_feature("abc") + "\n", "line 2: column 'f0' holds 'abc'"),
    (HEADER + "\n" + with_feature("nan") + "\n", "decimal number"),
    (HEADER + "\n" + with_feature("inf") + "\n", "decimal number"),
    (HEADER + "\n" + with_feature("1_0") + "\n", "decimal number"),
    (HEADER + "\n" + with_feature(" 0.5") + "\n", "decimal number"),
    (HEADER + "\n" + with_feature("") + "\n", "decimal number"),
    (HEADER + "\n" + with_feature("0x1") + "\n", "decimal number"),
    (HEADER + "\n" + with_feature('"0,5"') + "\n", "holds '0,5'"),
    (HEADER + "\n" + with_feature("1.5") + "\n", "outside"),
    (HEADER + "\n" + with_feature("-0.1") + "\n", "outside"),
    (HEADER + "\n" + with_feature("1e400") + "\n", "outside"),
    (HEADER + "\n" + with_feature("0.5", label="10") + "\n", "label '10'"),
    (HEADER + "\n" + with_feature("0.5", label="-1") + "\n", "label '-1'"),
    (HEADER + "\n" + with_feature("0.5", label="1.0") + "\n", "label '1.0'"),
    (HEADER + "\n" + with_feature("0.5", label="") + "\n", "line 2: no label"),
    (HEADER + "\n" + GOOD + "\n" + with_feature('"0.5', label="1") + "\n", "malformed CSV"),
    (HEADER + "\n" + with_feature('"0.5"x') + "\n", "malformed CSV at line 2"),
])
def test_bad_digits_files_are_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    task = get_task(digits_config(data_path=str(path)))
    with pytest.raises(ConfigError, match=re.escape(message)):
        task.labels()


def test_non_utf8_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(HEADER.encode() + b"\n" + with_feature("0.5").encode() + b"\xff\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        get_task(digits_config(data_path=str(path))).labels()


def test_mnist_reads_a_nodes_own_csv_with_a_label_column(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30, PIXELS)) / 255.0
    labels = np.arange(30) % 10
    path = write_feature_csv(tmp_path / "mnist.csv", pixels, labels, label_at=0)
    config = TaskConfig(name="mnist", data_path=str(path), batch_size=8, eval_batches=1, seed=1)
    data = get_task(config).client_data(0, 1)
    assert data.num_examples == 22
    assert data.train["x"].shape == (22, 1, 28, 28) and data.train["x"].dtype == np.float32
    images, read = load_mnist(str(path))
    np.testing.assert_array_equal(images.reshape(30, -1), pixels.astype(np.float32))
    np.testing.assert_array_equal(read, labels)
    # pixels must be in [0, 1] here (the contract's values), not 0-255
    bad = write_feature_csv(tmp_path / "raw.csv", pixels * 255, labels)
    with pytest.raises(ConfigError, match=r"line 2: column 'f.*outside"):
        load_mnist(str(bad))


def test_mnist_still_reads_the_headerless_0_255_format(tmp_path):
    rows = np.zeros((3, PIXELS + 1), dtype=np.int64)
    rows[:, 5], rows[:, -1] = 255, [1, 2, 3]
    path = tmp_path / "legacy.csv"
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    images, labels = load_mnist(str(path))
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [1, 2, 3]
    assert images.reshape(3, -1)[:, 5].tolist() == [1.0, 1.0, 1.0]
