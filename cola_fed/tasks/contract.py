"""Input contracts: what a task's batches must look like before the frozen model sees them.

In ColA a node sends its batches (token ids, masks, labels, feature arrays) for the server to
run through the frozen base model. Authentication only proves who sent a batch, not that it is
sane: a node with valid keys can still send labels out of range, token ids past the vocabulary,
float64 inputs, extra keys or NaN. A task's :class:`InputContract` states exactly which keys,
dtypes, shapes and value ranges it accepts, and :meth:`InputContract.check` refuses anything
else with a :class:`~cola_fed.errors.ContractError` naming the key and what was expected.

Torch-free (numpy only): nodes can check their own batches before sending them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from cola_fed.errors import ContractError

#: the symbolic dimension that is the batch: equal across tensors, and checked against the
#: expected batch size (or the allowed range of sizes)
BATCH = "batch"

_NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


@dataclass(frozen=True)
class TensorContract:
    """What one tensor of a batch must be.

    Parameters
    ----------
    dtype : str
        The exact numpy dtype (``"int64"``, ``"float32"``); no other dtype is accepted, not even
        one that casts safely, so the server never silently widens or narrows a node's data.
    shape : tuple of int or str
        Each dimension's exact size, or a symbolic name. ``"batch"`` is the batch dimension;
        every symbolic name must take the same size in every tensor of a batch.
    low, high : float, optional
        Integer values must lie in ``[low, high)``; float values in ``[low, high]``. ``None``
        leaves that side open.
    extra_values : tuple of int
        Integer values allowed outside ``[low, high)``, e.g. ``-100`` for ignored LM labels.

    Notes
    -----
    Float values must always be finite (no NaN, no Inf), whatever the bounds.
    """

    dtype: str
    shape: tuple[int | str, ...]
    low: float | None = None
    high: float | None = None
    extra_values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        kind = np.dtype(self.dtype).kind
        if kind not in _NUMERIC_KINDS:
            raise ValueError(f"TensorContract: dtype {self.dtype!r} is not numeric")
        for dim in self.shape:
            if isinstance(dim, bool) or not isinstance(dim, int | str) or (
                    isinstance(dim, int) and dim < 0):
                raise ValueError(f"TensorContract: shape entry {dim!r} is neither a size >= 0 "
                                 "nor a symbolic name")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"TensorContract: low {self.low} is above high {self.high}")
        if self.extra_values and not self.is_integer:
            raise ValueError("TensorContract: extra_values only apply to integer dtypes")

    @property
    def is_integer(self) -> bool:
        """Whether values are integers (half-open range) rather than floats (closed range)."""
        return np.dtype(self.dtype).kind in "biu"

    def describe_range(self) -> str:
        """The allowed values in words, e.g. ``[0, 257) or -100``."""
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        text = f"[{low}, {high}{')' if self.is_integer else ']'}"
        if self.extra_values:
            text += " or " + ", ".join(str(v) for v in self.extra_values)
        return text


@dataclass(frozen=True)
class InputContract:
    """The batches a task accepts: exactly these keys, each meeting its :class:`TensorContract`.

    Parameters
    ----------
    tensors : Mapping[str, TensorContract]
        One contract per key of the batch; stored read-only.

    Examples
    --------
    >>> contract = InputContract({"labels": TensorContract("int64", ("batch",), 0, 2)})
    >>> contract.check({"labels": np.array([0, 1, 1])}, batch_size=3)
    """

    tensors: Mapping[str, TensorContract] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))

    def sample_nbytes(self) -> int | None:
        """Bytes one sample takes over all tensors; ``None`` when a dimension other than the
        batch is symbolic (then it is not known before the batch comes)."""
        total = 0
        for spec in self.tensors.values():
            dims = [d for d in spec.shape if d != BATCH]
            if not all(isinstance(d, int) for d in dims):
                return None
            total += np.dtype(spec.dtype).itemsize * int(np.prod(dims, dtype=np.int64))
        return total

    def check(self, batch: Mapping[str, np.ndarray], *, batch_size: int | None = None,
              min_batch: int | None = None, max_batch: int | None = None,
              what: str = "batch") -> None:
        """Refuse ``batch`` unless it meets the contract; return ``None`` if it does.

        Parameters
        ----------
        batch : Mapping[str, numpy.ndarray]
            The batch as it came over the wire.
        batch_size : int, optional
            The exact number of rows required (a stream round's configured batch size).
        min_batch, max_batch : int, optional
            The allowed range of rows when ``batch_size`` is not given (an upload's batches).
            A batch never has fewer than one row.
        what : str
            What the batch is, to start every error message (``"node 3 eval batch 1"``).

        Raises
        ------
        ContractError
            Naming the key and what was expected: missing or unexpected keys, a value that is
            not an ``ndarray`` of exactly the dtype and shape, a batch dimension that
            disagrees between keys or with the expected size, a value out of range or not
            finite. Nothing else is raised.
        """
        if not isinstance(batch, Mapping):
            raise ContractError(f"{what}: expected a mapping of arrays, got "
                                f"{type(batch).__name__}")
        self._check_keys(batch, what)
        sizes: dict[str, tuple[int, str]] = {}
        for key, spec in self.tensors.items():
            _check_array(batch[key], spec, key, what)
            _collect_dims(batch[key], spec, key, sizes, what)
        if BATCH in sizes:
            _check_batch_size(sizes[BATCH], batch_size, min_batch, max_batch, what)
        for key, spec in self.tensors.items():
            _check_values(batch[key], spec, key, what)

    def _check_keys(self, batch: Mapping[Any, Any], what: str) -> None:
        """Exactly the contract's keys: name every missing and every unexpected one."""
        missing = [k for k in self.tensors if k not in batch]
        unexpected = [k for k in batch if k not in self.tensors]
        problems = []
        if missing:
            problems.append("missing key(s) " + ", ".join(repr(k) for k in missing))
        if unexpected:
            problems.append("unexpected key(s) " + ", ".join(repr(k) for k in unexpected))
        if problems:
            raise ContractError(f"{what}: {'; '.join(problems)} (expected exactly "
                                f"{', '.join(repr(k) for k in self.tensors)})")


def _check_array(value: Any, spec: TensorContract, key: str, what: str) -> None:
    """A plain ``ndarray`` (no subclass) of exactly the dtype, rank and fixed sizes."""
    if type(value) is not np.ndarray:
        raise ContractError(f"{what}: key {key!r} is of type {type(value).__name__}, expected a "
                            f"numpy ndarray of {spec.dtype}")
    if value.dtype != np.dtype(spec.dtype):
        raise ContractError(f"{what}: key {key!r} has dtype {value.dtype}, expected "
                            f"{spec.dtype} (no casting)")
    if value.ndim != len(spec.shape) or any(
            isinstance(dim, int) and size != dim for size, dim in zip(value.shape, spec.shape)):
        raise ContractError(f"{what}: key {key!r} has shape {value.shape}, expected "
                            f"{_shape_text(spec.shape)}")


def _collect_dims(value: np.ndarray, spec: TensorContract, key: str,
                  sizes: dict[str, tuple[int, str]], what: str) -> None:
    """Record each symbolic dimension's size; refuse one that disagrees with an earlier key."""
    for size, dim in zip(value.shape, spec.shape):
        if not isinstance(dim, str):
            continue
        if dim in sizes and sizes[dim][0] != size:
            seen, other = sizes[dim]
            raise ContractError(f"{what}: key {key!r} has {dim} dimension {size}, but key "
                                f"{other!r} has {seen}")
        sizes.setdefault(dim, (size, key))


def _check_batch_size(found: tuple[int, str], batch_size: int | None, min_batch: int | None,
                      max_batch: int | None, what: str) -> None:
    """The batch dimension equals ``batch_size`` if given, else lies in [min, max] (min >= 1)."""
    size, key = found
    if batch_size is not None:
        if size != batch_size:
            raise ContractError(f"{what}: key {key!r} has batch dimension {size}, expected "
                                f"{batch_size}")
        return
    low = max(1, min_batch or 1)
    if size < low or (max_batch is not None and size > max_batch):
        high = "" if max_batch is None else f", {max_batch}"
        bound = f"[{low}{high}]" if max_batch is not None else f">= {low}"
        raise ContractError(f"{what}: key {key!r} has batch dimension {size}, expected "
                            f"{bound}")


def _check_values(value: np.ndarray, spec: TensorContract, key: str, what: str) -> None:
    """Values in range, floats also finite: one vectorised min and max, a mask only on failure.

    NaN propagates through ``min``/``max``, so finite extremes prove every value finite.
    """
    if value.size == 0 or (spec.is_integer and spec.low is None and spec.high is None):
        return
    lowest, highest = value.min(), value.max()
    if not spec.is_integer and not (np.isfinite(lowest) and np.isfinite(highest)):
        bad = value[~np.isfinite(value)].flat[0]
        raise ContractError(f"{what}: key {key!r} holds {_number(bad)}, expected finite "
                            f"values in {spec.describe_range()}")
    if _within(lowest, highest, spec):
        return
    outside = _outside(value, spec)
    if outside.any():
        bad = value[outside].flat[0]
        raise ContractError(f"{what}: key {key!r} holds {_number(bad)} outside "
                            f"{spec.describe_range()}")


def _within(lowest: Any, highest: Any, spec: TensorContract) -> bool:
    """Whether the extreme values already lie in the main range (the common, fast case)."""
    if spec.low is not None and lowest < spec.low:
        return False
    if spec.high is None:
        return True
    return bool(highest < spec.high) if spec.is_integer else bool(highest <= spec.high)


def _outside(value: np.ndarray, spec: TensorContract) -> np.ndarray:
    """Mask of the values outside the range and not among the extra values."""
    outside = np.zeros(value.shape, dtype=bool)
    if spec.low is not None:
        outside |= value < spec.low
    if spec.high is not None:
        outside |= (value >= spec.high) if spec.is_integer else (value > spec.high)
    if spec.extra_values:
        outside &= ~np.isin(value, np.asarray(spec.extra_values))
    return outside


def _number(x: Any) -> str:
    """A bound or value without a spurious ``.0`` on whole numbers."""
    x = x.item() if isinstance(x, np.generic) else x
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _shape_text(shape: tuple[int | str, ...]) -> str:
    """``(batch, 64)``: the shape as it reads in the contract."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
