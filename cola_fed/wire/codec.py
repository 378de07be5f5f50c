"""Payloads to bytes and back: safetensors plus a small JSON header. No pickle, ever. Torch-free.

A payload is one safetensors blob. Its ``__metadata__`` holds one entry, ``cola``, a JSON
header with the format version, the payload kind and the bookkeeping of that kind; tensors are
named by role (``x/<group>``, ``d/<layer>``, ``rows/<layer>``, ``a/<layer>/<param>``,
``b/<key>``).

Decoding is strict and happens in two stages. First the safetensors header is parsed and checked
on its own (size caps, dtypes, shapes, byte ranges, names, expected layout) before any tensor is
materialised; then the tensors are read and checked for values (finite floats, row indices in
range). Both JSON layers are read by :func:`~cola_fed.wire.strict_json.loads_strict` (strict
UTF-8, bounded depth, no duplicate keys, no NaN, bounded integers), and every header field of
every kind is type-checked before use; unknown fields are refused. Every failure, for any input
whatever, raises :class:`MalformedPayloadError` with a message that says what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from safetensors.numpy import save as st_save

from cola_fed.errors import MalformedPayloadError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layer_data import shape_error, unfolded_values
from cola_fed.gl.layout import Layout
from cola_fed.wire.strict_json import loads_strict

FORMAT_VERSION = 1
KINDS = ("adaptation", "adapter-state", "batch", "metrics", "bundle")
#: Floating dtypes ``x`` and ``d`` may travel in; fp16 and bf16 are lossy and opt-in.
WIRE_DTYPES = ("float32", "float16", "bfloat16")

# safetensors dtype -> numpy dtype; bfloat16 travels as its uint16 bit pattern ("U16")
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "U16": np.uint16,
              "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}
_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,512}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class Limits:
    """Caps checked before anything is allocated.

    Parameters
    ----------
    max_bytes : int
        Largest payload accepted.
    max_header_bytes : int
        Largest safetensors JSON header accepted.
    max_tensors : int
        Most tensors in one payload.
    max_rows : int
        Most rows of any one tensor.
    """

    max_bytes: int = 2**31
    max_header_bytes: int = 2**20
    max_tensors: int = 4096
    max_rows: int = 2**26


DEFAULT_LIMITS = Limits()


class DecodeBudget:
    """What the adaptation data of one TRAIN order may take, every chunk of its interval
    together: its values once decoded (float32, row indices int64) and the values the learner
    unfolds from a convolution's compact data (:func:`cola_fed.gl.layer_data.unfolded_values`,
    float32). :func:`decode_adaptation` spends a chunk's share from its header, after the
    header is checked and before anything is read, cast or unfolded; the chunk that would
    overdraw the budget is refused with :class:`MalformedPayloadError`.

    Parameters
    ----------
    max_bytes : int
        The budget, in bytes (a node's ``max-payload-mb``: ``Limits.max_bytes``).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.spent = 0
        self.chunks = 0

    def spend(self, nbytes: int) -> None:
        """Take ``nbytes`` for one more chunk, or refuse it (and change nothing)."""
        total = self.spent + nbytes
        if total > self.max_bytes:
            what = "this adaptation data" if self.chunks == 0 else (
                f"the adaptation data of this order's first {self.chunks + 1} chunks")
            raise MalformedPayloadError(
                f"{what} would take {total} bytes decoded and unfolded (float32), above this "
                f"node's cap of {self.max_bytes} bytes (max-payload-mb): refused before "
                "anything is unfolded")
        self.spent, self.chunks = total, self.chunks + 1


# --------------------------------------------------------------------------------------------
# the envelope shared by every kind


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, converted without importing torch
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)


def pack(kind: str, tensors: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> bytes:
    """One payload: ``tensors`` plus the JSON ``header`` of a payload ``kind``.

    Parameters
    ----------
    kind : str
        The payload kind, one of :data:`KINDS`.
    tensors : mapping
        ``{name: array}``; names match ``[A-Za-z0-9_.-/]{1,512}``.
    header : mapping
        The kind's header fields; numbers must be finite (decoders read strict JSON only).

    Returns
    -------
    bytes
        The safetensors payload.

    Raises
    ------
    MalformedPayloadError
        If ``header`` holds NaN or an infinity.
    """
    meta = {"format": FORMAT_VERSION, "kind": kind, **header}
    try:
        text = json.dumps(meta, separators=(",", ":"), allow_nan=False)
    except ValueError as err:
        raise MalformedPayloadError(f"a {kind!r} header must hold finite numbers: {err}") from None
    return st_save(dict(tensors), metadata={"cola": text})


def inspect(blob: bytes, kind: str, limits: Limits = DEFAULT_LIMITS) -> tuple[dict, dict]:
    """Check a payload's structure without materialising a tensor.

    Parameters
    ----------
    blob : bytes, bytearray or memoryview
        The payload.
    kind : str
        The payload kind expected, one of :data:`KINDS`.
    limits : Limits, optional
        Size caps checked before anything is allocated.

    Returns
    -------
    tuple
        ``(tensor_specs, header)`` where ``tensor_specs[name] = (numpy dtype, shape)`` and every
        field of ``header`` has been type-checked for its ``kind``.

    Raises
    ------
    MalformedPayloadError
        For any input that is not such a payload (whatever its bytes, or not bytes at all);
        no other exception type escapes.
    """
    checked = _inspect(blob, kind, limits)
    return checked.specs, checked.header


@dataclass(frozen=True)
class _Checked:
    """A payload whose structure :func:`_inspect` has checked: its bytes (``B``-format),
    tensor specs, type-checked header and where each tensor's bytes start."""

    blob: bytes | bytearray | memoryview
    specs: dict[str, tuple[np.dtype, tuple[int, ...]]]
    header: dict[str, Any]
    starts: dict[str, int]


def _inspect(blob: Any, kind: str, limits: Limits) -> _Checked:
    """:func:`inspect`, plus where each tensor's bytes start in ``blob``."""
    blob = _as_bytes(blob)
    size = len(blob)
    if size > limits.max_bytes:
        raise MalformedPayloadError(f"payload of {size} bytes exceeds the cap {limits.max_bytes}")
    if size < 8:
        raise MalformedPayloadError(f"payload of {size} bytes is too short to hold a header")
    header_len = int.from_bytes(bytes(blob[:8]), "little")
    if header_len > limits.max_header_bytes or 8 + header_len > size:
        raise MalformedPayloadError(
            f"header length {header_len} does not fit the payload ({size} bytes, "
            f"header cap {limits.max_header_bytes})"
        )
    raw = loads_strict(blob[8:8 + header_len], what="the payload header",
                       max_bytes=limits.max_header_bytes)
    if not isinstance(raw, dict):
        raise MalformedPayloadError("the payload header is not a JSON object")
    header = _cola_header(raw.pop("__metadata__", None), kind, limits)
    if len(raw) > limits.max_tensors:
        raise MalformedPayloadError(f"{len(raw)} tensors exceed the cap {limits.max_tensors}")
    specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    starts: dict[str, int] = {}
    for name, info in raw.items():
        dtype, shape, offset = _tensor_spec(name, info, size - 8 - header_len, limits)
        specs[name] = (dtype, shape)
        starts[name] = 8 + header_len + offset
    return _Checked(blob, specs, header, starts)


def _as_bytes(blob: Any) -> bytes | bytearray | memoryview:
    """``blob`` as a buffer whose length is its size in bytes: a memoryview of wider items (or
    of several dimensions) is cast to bytes; anything else but bytes and bytearray is refused."""
    if isinstance(blob, (bytes, bytearray)):
        return blob
    if not isinstance(blob, memoryview):
        raise MalformedPayloadError(f"a payload must be bytes, got {type(blob).__name__}")
    try:
        if blob.c_contiguous:
            return blob if blob.format == "B" and blob.ndim == 1 else blob.cast("B")
    except (TypeError, ValueError) as err:  # released, or an odd format
        raise MalformedPayloadError(f"the payload buffer cannot be read as bytes: {err}") from None
    raise MalformedPayloadError("the payload buffer is not contiguous; pass bytes")


def _short(value: Any) -> str:
    """A value's repr cut short for error messages (a hostile header can be a megabyte)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _tensor_spec(name: str, info: Any, data_size: int,
                 limits: Limits) -> tuple[np.dtype, tuple[int, ...], int]:
    """One tensor's entry of the safetensors header, checked: ``(dtype, shape, data offset)``.

    The entry must have exactly ``dtype``, ``shape`` and ``data_offsets``, a known dtype, at
    most four non-negative dimensions, the first (rows) within ``limits.max_rows`` and all of
    them together within ``limits.max_bytes``, and a byte range that lies in the data section
    and holds exactly that many bytes."""
    if not _NAME.fullmatch(name):
        raise MalformedPayloadError(f"invalid tensor name {_short(name)}")
    if not isinstance(info, dict) or set(info) != _TENSOR_FIELDS:
        fields = sorted(info)[:8] if isinstance(info, dict) else type(info).__name__
        raise MalformedPayloadError(
            f"tensor {name!r}: entry {_short(fields)} must hold exactly {sorted(_TENSOR_FIELDS)}"
        )
    st_dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(st_dtype, str) or st_dtype not in _ST_DTYPES:
        raise MalformedPayloadError(
            f"tensor {name!r}: dtype {_short(st_dtype)} is not one of {sorted(_ST_DTYPES)}"
        )
    if not (isinstance(shape, list) and len(shape) <= 4 and all(_is_int(s) and s >= 0
                                                                 for s in shape)
            and (not shape or shape[0] <= limits.max_rows)
            and math.prod(max(s, 1) for s in shape) <= limits.max_bytes):
        # (an empty tensor's other dimensions are bounded too: numpy refuses to shape a view
        # whose dimensions multiply past its index range, even with no element)
        raise MalformedPayloadError(f"tensor {name!r}: invalid shape {_short(shape)}")
    dtype = np.dtype(_ST_DTYPES[st_dtype])
    nbytes = math.prod(shape) * dtype.itemsize
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))
            and 0 <= offsets[0] <= offsets[1] <= data_size
            and offsets[1] - offsets[0] == nbytes):
        raise MalformedPayloadError(
            f"tensor {name!r}: byte range {_short(offsets)} does not hold shape {shape} of "
            f"{dtype} within {data_size} data bytes"
        )
    return dtype, tuple(shape), offsets[0]


def _cola_header(meta: Any, kind: str, limits: Limits) -> dict[str, Any]:
    """The cola-fed header from the safetensors ``__metadata__``, every field type-checked.

    ``__metadata__`` must hold one string entry, ``cola``: the strict JSON of an object with
    this reader's ``format``, the expected ``kind`` and exactly the fields of that kind."""
    if meta is None:
        raise MalformedPayloadError("the payload has no cola-fed header; is it a cola-fed payload?")
    if not isinstance(meta, dict) or set(meta) != {"cola"} or not isinstance(meta["cola"], str):
        found = sorted(meta)[:8] if isinstance(meta, dict) else type(meta).__name__
        raise MalformedPayloadError(
            f"the payload's __metadata__ {_short(found)} must hold one string entry, 'cola'; "
            "is it a cola-fed payload?"
        )
    header = loads_strict(meta["cola"], what="the cola-fed header",
                          max_bytes=limits.max_header_bytes)
    if not isinstance(header, dict):
        raise MalformedPayloadError("the cola-fed header is not a JSON object")
    version = header.get("format")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise MalformedPayloadError(
            f"payload format {_short(version)}, this cola-fed reads {FORMAT_VERSION}; "
            "upgrade the older side"
        )
    if header.get("kind") != kind:
        raise MalformedPayloadError(
            f"expected a {kind!r} payload, got {_short(header.get('kind'))}"
        )
    _check_fields(header, kind)
    return header


def _check_fields(header: dict[str, Any], kind: str) -> None:
    """Refuse missing, unknown or mistyped header fields of a payload ``kind``."""
    checks = _FIELD_CHECKS.get(kind)
    if checks is None:
        raise MalformedPayloadError(f"unknown payload kind {kind!r}; known: {KINDS}")
    fields = set(header) - {"format", "kind"}
    if fields != set(checks):
        extra, missing = sorted(fields - set(checks)), sorted(set(checks) - fields)
        raise MalformedPayloadError(
            f"a {kind!r} header: unknown fields {_short(extra[:8])}, missing {missing}"
        )
    for key, check in checks.items():
        check(key, header[key])


# --------------------------------------------------------------------------------------------
# header field types


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite JSON number (bools are ints to Python, not numbers on the wire)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _refuse(key: str, expected: str, value: Any) -> MalformedPayloadError:
    return MalformedPayloadError(f"header field {key!r} must be {expected}, got {_short(value)}")


def _unique_strings(key: str, value: Any) -> None:
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise _refuse(key, "a list of strings", value)
    if len(set(value)) != len(value):
        raise _refuse(key, "a list of distinct strings", value)


def _layer_names(key: str, value: Any) -> None:
    _unique_strings(key, value)
    if not all(_NAME.fullmatch(v) for v in value):
        raise _refuse(key, f"a list of names matching {_NAME.pattern}", value)


def _string_map(key: str, value: Any) -> None:
    if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
        raise _refuse(key, "a mapping of strings to strings", value)


def _digest_map(key: str, value: Any) -> None:
    if not (isinstance(value, dict) and all(_NAME.fullmatch(k) for k in value)
            and all(isinstance(v, str) and _DIGEST.fullmatch(v) for v in value.values())):
        raise _refuse(key, "a mapping of layer names to SHA-256 digests (64 lowercase hex)",
                      value)


def _bool_map(key: str, value: Any) -> None:
    if not (isinstance(value, dict) and all(isinstance(v, bool) for v in value.values())):
        raise _refuse(key, "a mapping of strings to booleans", value)


def _number_map(key: str, value: Any) -> None:
    if not (isinstance(value, dict) and all(map(_is_number, value.values()))):
        raise _refuse(key, "a mapping of names to finite numbers", value)


def _loss(key: str, value: Any) -> None:
    if value is not None and not _is_number(value):
        raise _refuse(key, "a finite number, or null when unknown", value)


def _count(key: str, value: Any) -> None:
    if not (_is_int(value) and value >= 0):
        raise _refuse(key, "a non-negative integer", value)


def _wire_dtype(key: str, value: Any) -> None:
    if not (isinstance(value, str) and value in WIRE_DTYPES):
        raise MalformedPayloadError(f"unknown wire dtype {_short(value)}; known: {WIRE_DTYPES}")


#: Per payload kind, the header fields besides ``format`` and ``kind`` and their type checks.
_FIELD_CHECKS: dict[str, dict[str, Callable[[str, Any], None]]] = {
    "adaptation": {"dtype": _wire_dtype, "layers": _layer_names, "input_of": _string_map,
                   "rows": _bool_map, "loss": _loss, "num_samples": _count,
                   "weight_gradient": _layer_names, "parameter_gradient": _digest_map},
    "adapter-state": {"layers": _layer_names},
    "batch": {"keys": _unique_strings},
    "metrics": {"metrics": _number_map},
    "bundle": {"parts": _unique_strings},
}


def _read(blob: bytes | bytearray | memoryview, specs: dict, starts: dict[str, int], *,
          copy: bool = True) -> dict[str, np.ndarray]:
    """The tensors of a payload :func:`_inspect` has checked (every name, dtype, shape and byte
    range): fresh arrays, or with ``copy=False`` read-only views into ``blob`` (for the large
    payloads a small device decodes)."""
    # as safetensors requires: the tensors tile the data section, no overlap, no slack
    ranges = sorted((starts[n], starts[n] + math.prod(shape) * dtype.itemsize)
                    for n, (dtype, shape) in specs.items())
    ends = [8 + int.from_bytes(bytes(blob[:8]), "little"), *(end for _, end in ranges)]
    if any(begin != end for (begin, _), end in zip(ranges, ends)) or ends[-1] != len(blob):
        raise MalformedPayloadError("the payload's tensors do not tile its data section")
    views = {name: np.frombuffer(blob, dtype=dtype.newbyteorder("<"), count=math.prod(shape),
                                 offset=starts[name]).reshape(shape)
             for name, (dtype, shape) in specs.items()}
    return {name: view.copy() for name, view in views.items()} if copy else views


def _check_finite(name: str, array: np.ndarray) -> None:
    """Refuse NaN and Inf in a float tensor, and bytes other than 0 and 1 in a bool tensor
    (numpy would carry them as a "true" that is not ``True``)."""
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        raise MalformedPayloadError(f"tensor {name!r} holds NaN or Inf")
    if array.dtype == np.bool_ and array.size and array.view(np.uint8).max() > 1:
        raise MalformedPayloadError(f"tensor {name!r} holds booleans other than 0 and 1")


# --------------------------------------------------------------------------------------------
# floating-point casts for the wire


def _to_wire(array: np.ndarray, dtype: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if dtype == "float32":
        return array
    if dtype == "float16":
        return array.astype(np.float16)
    bits = array.view(np.uint32)  # bfloat16: round to nearest even on the top 16 bits
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def _from_wire(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (array.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return array.astype(np.float32, copy=False)


_WIRE_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


# --------------------------------------------------------------------------------------------
# adaptation data


def encode_adaptation(data: AdaptationData, *, dtype: str = "float32") -> bytes:
    """Adaptation data as a payload; ``dtype`` casts ``x`` and ``d`` (fp16/bf16 are lossy)."""
    if dtype not in WIRE_DTYPES:
        raise MalformedPayloadError(f"wire.dtype must be one of {WIRE_DTYPES}, got {dtype!r}")
    tensors: dict[str, np.ndarray] = {}
    for key, x in data.inputs.items():
        tensors[f"x/{key}"] = _to_wire(_to_numpy(x), dtype)
    rows = {}
    for name, (g, g_bias) in data.weight_grads.items():
        tensors[f"g/{name}"] = _to_wire(_to_numpy(g), dtype)
        tensors[f"gb/{name}"] = _to_wire(_to_numpy(g_bias), dtype)
    for name, grads in data.param_grads.items():
        for param, value in grads.items():
            tensors[f"p/{name}/{param}"] = _to_wire(_to_numpy(value), dtype)
    for name in data.row_layers:
        tensors[f"d/{name}"] = _to_wire(_to_numpy(data.grads[name]), dtype)
        index = data.rows.get(name)
        rows[name] = index is not None
        if index is not None:
            index = _to_numpy(index)
            small = index.size == 0 or int(index.max()) < 2**31
            tensors[f"rows/{name}"] = index.astype(np.int32 if small else np.int64)
    loss = float(data.loss)
    header = {"dtype": dtype, "layers": data.row_layers, "input_of": data.input_of,
              "rows": rows, "loss": None if math.isnan(loss) else loss,  # NaN: not computed
              "num_samples": int(data.num_samples), "weight_gradient": list(data.weight_grads),
              "parameter_gradient": dict(data.param_at)}
    return pack("adaptation", tensors, header)


def decode_adaptation(
    blob: bytes, *, layout: Layout | None = None, limits: Limits = DEFAULT_LIMITS,
    budget: DecodeBudget | None = None,
) -> AdaptationData:
    """Adaptation data (numpy float32) from a payload, checked against ``layout`` if given.

    Parameters
    ----------
    blob : bytes, bytearray or memoryview
        The payload.
    layout : Layout, optional
        The adapted layers; each layer's ``x`` and ``d`` shapes must match it (a convolution's
        are 4-D, with the channels and output size its geometry gives).
    limits : Limits, optional
        Size caps checked before anything is allocated.
    budget : DecodeBudget, optional
        Shared by every chunk of one TRAIN order: what they take decoded and unfolded, all
        together, stays within it. Default: a budget of ``limits.max_bytes`` for this payload
        alone.

    Returns
    -------
    AdaptationData
        Float32 arrays (read-only views into ``blob`` where no cast was needed); a loss sent as
        ``null`` (not computed) comes back as NaN.

    Raises
    ------
    MalformedPayloadError
        For any input that is not such a payload (whatever its bytes, or not bytes at all);
        no other exception type escapes.
    """
    checked = _inspect(blob, "adaptation", limits)
    specs, header = checked.specs, checked.header
    dtype, layers, input_of = header["dtype"], header["layers"], header["input_of"]
    has_rows, num_samples = header["rows"], header["num_samples"]
    weight_layers, param_at = header["weight_gradient"], header["parameter_gradient"]
    if len({*layers, *weight_layers, *param_at}) != len(layers) + len(weight_layers) + len(
            param_at):
        raise MalformedPayloadError("a layer is carried in more than one form")
    loss = float("nan") if header["loss"] is None else float(header["loss"])
    if set(input_of) != set(layers) or set(has_rows) != set(layers):
        raise MalformedPayloadError("header layers, input_of and rows disagree")
    groups = set(input_of.values())
    expected_names = {f"x/{g}" for g in groups} | {f"d/{n}" for n in layers} | {
        f"rows/{n}" for n in layers if has_rows[n] is True} | {
        f"{part}/{n}" for n in weight_layers for part in ("g", "gb")}
    param_tensors = {n: _parameter_of(n, param_at) for n in specs if n not in expected_names}
    odd = sorted(expected_names - set(specs)) + [n for n, v in param_tensors.items() if v is None]
    bare = set(param_at) - {v[0] for v in param_tensors.values() if v is not None}
    if odd or bare:
        raise MalformedPayloadError(
            f"tensors {odd[:5]} do not match the header" if odd else
            f"layers {sorted(bare)[:5]} in parameter-gradient form carry no gradient")
    wire = np.dtype(_WIRE_NUMPY[dtype])
    unfolded = 0  # values the learner will unfold from convolution data
    for name in layers:
        x_dtype, x_shape = specs[f"x/{input_of[name]}"]
        d_dtype, d_shape = specs[f"d/{name}"]
        # rows [n, d] of a linear layer, or a convolution's compact [B, C, H, W]
        if (x_dtype != wire or d_dtype != wire or len(x_shape) not in (2, 4)
                or len(d_shape) != len(x_shape)):
            raise MalformedPayloadError(
                f"layer {name!r}: x and d must be {dtype} tensors, both 2-D or both 4-D")
        if layout is not None:
            if name not in layout:
                raise MalformedPayloadError(f"layer {name!r} is not an adapted layer")
            error = shape_error(layout[name], x_shape, d_shape, has_rows=True)
            if error is not None:
                raise MalformedPayloadError(error)
            if layout[name].is_conv2d:  # compact on the wire, unfolded by the learner
                unfolded += unfolded_values(layout[name], (d_shape[0], *x_shape[1:]))
        if has_rows[name] is True:
            r_dtype, r_shape = specs[f"rows/{name}"]
            if r_dtype.kind != "i" or r_shape != (d_shape[0],):
                raise MalformedPayloadError(f"layer {name!r}: rows must be {d_shape[0]} integers")
        elif x_shape[0] != d_shape[0]:
            raise MalformedPayloadError(
                f"layer {name!r}: {d_shape[0]} gradient rows for {x_shape[0]} input rows"
            )
    for name in weight_layers:
        (g_dtype, g_shape), (b_dtype, b_shape) = specs[f"g/{name}"], specs[f"gb/{name}"]
        if g_dtype != wire or b_dtype != wire or len(g_shape) != 2 or b_shape != g_shape[:1]:
            raise MalformedPayloadError(f"layer {name!r}: G and g_bias must be {dtype} tensors "
                                        "[d_out, d_in] and [d_out]")
        if layout is not None:
            if name not in layout:
                raise MalformedPayloadError(f"layer {name!r} is not an adapted layer")
            info = layout[name]
            if g_shape != (info.d_out, info.d_in):
                raise MalformedPayloadError(f"layer {name!r}: expected G [{info.d_out}, "
                                            f"{info.d_in}], got {list(g_shape)}")
    for tensor, (name, _) in param_tensors.items():
        if specs[tensor][0] != wire:
            raise MalformedPayloadError(f"layer {name!r}: its parameter gradient must be "
                                        f"{dtype} tensors")
        if layout is not None and name not in layout:
            raise MalformedPayloadError(f"layer {name!r} is not an adapted layer")
    # decoded (float32; row indices int64) and unfolded, before anything is read or unfolded
    (budget or DecodeBudget(limits.max_bytes)).spend(4 * unfolded + sum(
        math.prod(shape) * (8 if name.startswith("rows/") else 4)
        for name, (_, shape) in specs.items()))
    tensors = _read(checked.blob, specs, checked.starts, copy=False)
    data = AdaptationData({}, {}, dict(input_of), {}, loss=loss, num_samples=num_samples,
                          param_at=dict(param_at))
    for tensor, (name, param) in param_tensors.items():
        data.param_grads.setdefault(name, {})[param] = _from_wire(tensors[tensor], dtype)
        _check_finite(tensor, data.param_grads[name][param])
    for name in weight_layers:
        pair = tuple(_from_wire(tensors[f"{part}/{name}"], dtype) for part in ("g", "gb"))
        for part, value in zip(("g", "gb"), pair):
            _check_finite(f"{part}/{name}", value)
        data.weight_grads[name] = pair
    for group in groups:
        data.inputs[group] = _from_wire(tensors[f"x/{group}"], dtype)
        _check_finite(f"x/{group}", data.inputs[group])
    for name in layers:
        data.grads[name] = _from_wire(tensors[f"d/{name}"], dtype)
        _check_finite(f"d/{name}", data.grads[name])
        rows = tensors.get(f"rows/{name}")
        if rows is not None:
            limit = data.inputs[input_of[name]].shape[0]
            if rows.size and (rows.min() < 0 or rows.max() >= limit):
                raise MalformedPayloadError(f"layer {name!r}: row index out of range [0, {limit})")
            rows = rows.astype(np.int64)
        data.rows[name] = rows
    return data


def _parameter_of(tensor: str, param_at: Mapping[str, str]) -> tuple[str, str] | None:
    """``(layer, param)`` of a parameter-gradient tensor ``p/<layer>/<param>`` of a layer the
    header names, else None."""
    head, _, rest = tensor.partition("/")
    layer, _, param = rest.rpartition("/")
    if head != "p" or layer not in param_at or not _NAME.fullmatch(param):
        return None
    return layer, param


# --------------------------------------------------------------------------------------------
# adapter state, batches, metrics


def encode_adapter_state(state: Mapping[str, Mapping[str, Any]]) -> bytes:
    """``{layer: {param: array}}`` as a float32 payload."""
    tensors = {f"a/{layer}/{param}": np.asarray(_to_numpy(value), dtype=np.float32)
               for layer, params in state.items() for param, value in params.items()}
    return pack("adapter-state", tensors, {"layers": list(state)})


def decode_adapter_state(
    blob: bytes,
    *,
    layout: Layout | None = None,
    expected_shapes: Mapping[str, Mapping[str, tuple[int, ...]]] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, dict[str, np.ndarray]]:
    """An adapter state, checked against ``layout`` and exact ``expected_shapes`` if given.

    Parameters
    ----------
    blob : bytes, bytearray or memoryview
        The payload.
    layout : Layout, optional
        The adapted layers; every adapter must belong to one.
    expected_shapes : mapping, optional
        ``{layer: {param: shape}}`` the state must match exactly.
    limits : Limits, optional
        Size caps checked before anything is allocated.

    Returns
    -------
    dict
        ``{layer: {param: float32 array}}``, fresh copies.

    Raises
    ------
    MalformedPayloadError
        For any input that is not such a payload (whatever its bytes, or not bytes at all);
        no other exception type escapes.
    """
    checked = _inspect(blob, "adapter-state", limits)
    specs, layers = checked.specs, checked.header["layers"]
    known = set(layers)
    found: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, (dtype, shape) in specs.items():
        prefix, _, rest = name.partition("/")
        layer, _, param = rest.rpartition("/")
        if prefix != "a" or not layer or layer not in known or dtype != np.float32:
            raise MalformedPayloadError(f"unexpected tensor {name!r} in an adapter state")
        if layout is not None and layer not in layout:
            raise MalformedPayloadError(f"adapter for {layer!r}, which is not an adapted layer")
        found.setdefault(layer, {})[param] = shape
    if not set(found) <= known:
        raise MalformedPayloadError("the adapter state's layers do not match its header")
    if expected_shapes is not None:
        expected = {layer: {p: tuple(s) for p, s in params.items()}
                    for layer, params in expected_shapes.items()}
        if found != expected or set(layers) != set(expected):
            raise MalformedPayloadError(
                "the adapter state does not have the expected parameters and shapes"
            )
    tensors = _read(checked.blob, specs, checked.starts)
    state: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in layers}
    for name, value in tensors.items():
        _check_finite(name, value)
        layer, _, param = name[2:].rpartition("/")
        state[layer][param] = value
    return state


def encode_batch(batch: Mapping[str, Any]) -> bytes:
    """A client's batch (token ids, masks, labels, or feature arrays)."""
    tensors = {f"b/{key}": _to_numpy(value) for key, value in batch.items()}
    return pack("batch", tensors, {"keys": list(batch)})


def decode_batch(
    blob: bytes, *, expected_keys: set[str] | None = None, limits: Limits = DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """A batch whose tensors all share one leading dimension (and carry ``expected_keys``).

    Parameters
    ----------
    blob : bytes, bytearray or memoryview
        The payload.
    expected_keys : set of str, optional
        The keys the batch must carry, no more and no fewer.
    limits : Limits, optional
        Size caps checked before anything is allocated.

    Returns
    -------
    dict
        ``{key: array}``, fresh copies.

    Raises
    ------
    MalformedPayloadError
        For any input that is not such a payload (whatever its bytes, or not bytes at all);
        no other exception type escapes.
    """
    checked = _inspect(blob, "batch", limits)
    specs, keys = checked.specs, checked.header["keys"]
    if set(specs) != {f"b/{k}" for k in keys}:
        raise MalformedPayloadError("the batch's tensors do not match its header")
    if expected_keys is not None and set(keys) != set(expected_keys):
        raise MalformedPayloadError(f"batch keys {sorted(keys)}, expected {sorted(expected_keys)}")
    leading = {shape[0] if shape else -1 for _, shape in specs.values()}
    if len(leading) > 1 or -1 in leading:
        raise MalformedPayloadError("batch tensors must share one leading (batch) dimension")
    tensors = _read(checked.blob, specs, checked.starts)
    batch = {name[2:]: value for name, value in tensors.items()}
    for key, value in batch.items():
        _check_finite(key, value)
    return batch


def encode_metrics(metrics: Mapping[str, float | int]) -> bytes:
    """Scalar metrics, carried in the JSON header alone."""
    values = {}
    for key, value in metrics.items():
        if not _is_number(value):
            raise MalformedPayloadError(f"metric {key!r} must be a finite number, got {value!r}")
        values[str(key)] = value
    return pack("metrics", {}, {"metrics": values})


def decode_metrics(blob: bytes, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, float | int]:
    """Scalar metrics from a payload that carries no tensors.

    Parameters
    ----------
    blob : bytes, bytearray or memoryview
        The payload.
    limits : Limits, optional
        Size caps checked before anything is allocated.

    Returns
    -------
    dict
        ``{name: finite int or float}``.

    Raises
    ------
    MalformedPayloadError
        For any input that is not such a payload (whatever its bytes, or not bytes at all);
        no other exception type escapes.
    """
    checked = _inspect(blob, "metrics", limits)
    if checked.specs:
        raise MalformedPayloadError("a metrics payload must carry no tensors")
    _read(checked.blob, {}, {})  # nor any data bytes
    return checked.header["metrics"]


def encode_bundle(parts: Mapping[str, bytes]) -> bytes:
    """Several payloads as one (e.g. an adapter state and the next batches), each kept whole."""
    tensors = {f"part/{name}": np.frombuffer(bytes(blob), dtype=np.uint8)
               for name, blob in parts.items()}
    return pack("bundle", tensors, {"parts": list(parts)})


def decode_bundle(blob: bytes, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, memoryview]:
    """The named payloads of a bundle, still encoded: decode each with its own strict decoder.

    Parameters
    ----------
    blob : bytes, bytearray or memoryview
        The payload.
    limits : Limits, optional
        Size caps checked before anything is allocated.

    Returns
    -------
    dict
        ``{part name: memoryview}``, views into ``blob``, not copies.

    Raises
    ------
    MalformedPayloadError
        For any input that is not such a payload (whatever its bytes, or not bytes at all);
        no other exception type escapes.
    """
    checked = _inspect(blob, "bundle", limits)
    specs, parts = checked.specs, checked.header["parts"]
    if set(specs) != {f"part/{p}" for p in parts} or any(
            dtype != np.uint8 or len(shape) != 1 for dtype, shape in specs.values()):
        raise MalformedPayloadError("the bundle's parts do not match its header")
    tensors = _read(checked.blob, specs, checked.starts, copy=False)
    return {name: memoryview(tensors[f"part/{name}"]) for name in parts}


#: the strict decoder of each payload kind
DECODERS: dict[str, Callable[..., Any]] = {
    "adaptation": decode_adaptation,
    "adapter-state": decode_adapter_state,
    "batch": decode_batch,
    "metrics": decode_metrics,
    "bundle": decode_bundle,
}
