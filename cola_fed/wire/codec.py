"""Payloads to bytes and back: safetensors plus a small JSON header. No pickle, ever. Torch-free.

A payload is one safetensors blob. Its ``__metadata__`` holds one entry, ``cola``, a JSON
header with the format version, the payload kind and the bookkeeping of that kind; tensors are
named by role (``x/<group>``, ``d/<layer>``, ``rows/<layer>``, ``a/<layer>/<param>``,
``b/<key>``).

Decoding is strict and happens in two stages. First the safetensors header is parsed and checked
on its own (size caps, dtypes, shapes, byte ranges, names, expected layout) before any tensor is
materialised; then the tensors are read and checked for values (finite floats, row indices in
range). Every failure raises :class:`MalformedPayloadError` with a message that says what was
wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from safetensors.numpy import save as st_save

from cola_fed.errors import MalformedPayloadError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layout import Layout

FORMAT_VERSION = 1
KINDS = ("adaptation", "adapter-state", "batch", "metrics", "bundle")
#: Floating dtypes ``x`` and ``d`` may travel in; fp16 and bf16 are lossy and opt-in.
WIRE_DTYPES = ("float32", "float16", "bfloat16")

# safetensors dtype -> numpy dtype; bfloat16 travels as its uint16 bit pattern ("U16")
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "U16": np.uint16,
              "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}
_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,512}")


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


# --------------------------------------------------------------------------------------------
# the envelope shared by every kind


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, converted without importing torch
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)


def pack(kind: str, tensors: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> bytes:
    """One payload: ``tensors`` plus the JSON ``header`` of a payload ``kind``."""
    meta = {"format": FORMAT_VERSION, "kind": kind, **header}
    return st_save(dict(tensors), metadata={"cola": json.dumps(meta, separators=(",", ":"))})


def inspect(blob: bytes, kind: str, limits: Limits = DEFAULT_LIMITS) -> tuple[dict, dict]:
    """Check a payload's structure without materialising a tensor.

    Returns ``(tensor_specs, header)`` where ``tensor_specs[name] = (numpy dtype, shape)``.
    """
    specs, header, _ = _inspect(blob, kind, limits)
    return specs, header


def _inspect(blob: bytes, kind: str, limits: Limits) -> tuple[dict, dict, dict[str, int]]:
    """:func:`inspect`, plus where each tensor's bytes start in ``blob``."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise MalformedPayloadError(f"a payload must be bytes, got {type(blob).__name__}")
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
    try:
        raw = json.loads(bytes(blob[8:8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MalformedPayloadError(f"the payload header is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise MalformedPayloadError("the payload header is not a JSON object")
    meta = raw.pop("__metadata__", None)
    if not isinstance(meta, dict) or not isinstance(meta.get("cola"), str):
        raise MalformedPayloadError("the payload has no cola-fed header; is it a cola-fed payload?")
    try:
        header = json.loads(meta["cola"])
    except json.JSONDecodeError as err:
        raise MalformedPayloadError(f"the cola-fed header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise MalformedPayloadError("the cola-fed header is not a JSON object")
    if header.get("format") != FORMAT_VERSION:
        raise MalformedPayloadError(
            f"payload format {header.get('format')!r}, this cola-fed reads {FORMAT_VERSION}; "
            "upgrade the older side"
        )
    if header.get("kind") != kind:
        raise MalformedPayloadError(f"expected a {kind!r} payload, got {header.get('kind')!r}")
    if len(raw) > limits.max_tensors:
        raise MalformedPayloadError(f"{len(raw)} tensors exceed the cap {limits.max_tensors}")
    data_size = size - 8 - header_len
    specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    starts: dict[str, int] = {}
    for name, info in raw.items():
        if not _NAME.fullmatch(name):
            raise MalformedPayloadError(f"invalid tensor name {name[:80]!r}")
        if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
            raise MalformedPayloadError(
                f"tensor {name!r}: dtype {info.get('dtype') if isinstance(info, dict) else None!r}"
                f" is not one of {sorted(_ST_DTYPES)}"
            )
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) <= 4 and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= limits.max_rows
                for s in shape)):
            raise MalformedPayloadError(f"tensor {name!r}: invalid shape {shape!r}")
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        nbytes = math.prod(shape) * dtype.itemsize
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size
                and offsets[1] - offsets[0] == nbytes):
            raise MalformedPayloadError(
                f"tensor {name!r}: byte range {offsets!r} does not hold shape {shape} of "
                f"{dtype} within {data_size} data bytes"
            )
        specs[name] = (dtype, tuple(shape))
        starts[name] = 8 + header_len + offsets[0]
    return specs, header, starts


def _read(blob: bytes | memoryview, specs: dict, starts: dict[str, int], *,
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


def _require(header: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = header.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedPayloadError(f"header field {key!r} must be {what}, got {value!r}")
    return value


def _check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        raise MalformedPayloadError(f"tensor {name!r} holds NaN or Inf")


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
    for name in data.layer_names:
        tensors[f"d/{name}"] = _to_wire(_to_numpy(data.grads[name]), dtype)
        index = data.rows.get(name)
        rows[name] = index is not None
        if index is not None:
            index = _to_numpy(index)
            small = index.size == 0 or int(index.max()) < 2**31
            tensors[f"rows/{name}"] = index.astype(np.int32 if small else np.int64)
    header = {"dtype": dtype, "layers": data.layer_names, "input_of": data.input_of,
              "rows": rows, "loss": float(data.loss), "num_samples": int(data.num_samples)}
    return pack("adaptation", tensors, header)


def decode_adaptation(
    blob: bytes, *, layout: Layout | None = None, limits: Limits = DEFAULT_LIMITS
) -> AdaptationData:
    """Adaptation data (numpy float32) from a payload, checked against ``layout`` if given."""
    specs, header, starts = _inspect(blob, "adaptation", limits)
    dtype = header.get("dtype")
    if dtype not in WIRE_DTYPES:
        raise MalformedPayloadError(f"unknown wire dtype {dtype!r}")
    layers = _require(header, "layers", list, "a list of layer names")
    input_of = _require(header, "input_of", dict, "a mapping of layer to input group")
    has_rows = _require(header, "rows", dict, "a mapping of layer to bool")
    loss = header.get("loss")
    if not isinstance(loss, (int, float)) or isinstance(loss, bool):
        raise MalformedPayloadError(f"header field 'loss' must be a number, got {loss!r}")
    num_samples = _require(header, "num_samples", int, "an integer")
    if len(set(layers)) != len(layers) or set(input_of) != set(layers) or set(has_rows) != set(
            layers):
        raise MalformedPayloadError("header layers, input_of and rows disagree")
    groups = set(input_of.values())
    expected_names = {f"x/{g}" for g in groups} | {f"d/{n}" for n in layers} | {
        f"rows/{n}" for n in layers if has_rows[n] is True}
    if set(specs) != expected_names:
        raise MalformedPayloadError(
            f"tensors {sorted(set(specs) ^ expected_names)[:5]} do not match the header"
        )
    wire = np.dtype(_WIRE_NUMPY[dtype])
    for name in layers:
        x_dtype, x_shape = specs[f"x/{input_of[name]}"]
        d_dtype, d_shape = specs[f"d/{name}"]
        if x_dtype != wire or d_dtype != wire or len(x_shape) != 2 or len(d_shape) != 2:
            raise MalformedPayloadError(f"layer {name!r}: x and d must be 2-D {dtype} tensors")
        if layout is not None:
            if name not in layout:
                raise MalformedPayloadError(f"layer {name!r} is not an adapted layer")
            info = layout[name]
            if x_shape[1] != info.d_in or d_shape[1] != info.d_out:
                raise MalformedPayloadError(
                    f"layer {name!r}: expected x [n, {info.d_in}] and d [n, {info.d_out}], "
                    f"got {list(x_shape)} and {list(d_shape)}"
                )
        if has_rows[name] is True:
            r_dtype, r_shape = specs[f"rows/{name}"]
            if r_dtype.kind != "i" or r_shape != (d_shape[0],):
                raise MalformedPayloadError(f"layer {name!r}: rows must be {d_shape[0]} integers")
        elif x_shape[0] != d_shape[0]:
            raise MalformedPayloadError(
                f"layer {name!r}: {d_shape[0]} gradient rows for {x_shape[0]} input rows"
            )
    tensors = _read(blob, specs, starts, copy=False)
    data = AdaptationData({}, {}, dict(input_of), {}, loss=float(loss), num_samples=num_samples)
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
    """An adapter state, checked against ``layout`` and exact ``expected_shapes`` if given."""
    specs, header, starts = _inspect(blob, "adapter-state", limits)
    layers = _require(header, "layers", list, "a list of layer names")
    found: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, (dtype, shape) in specs.items():
        prefix, _, rest = name.partition("/")
        layer, _, param = rest.rpartition("/")
        if prefix != "a" or not layer or layer not in layers or dtype != np.float32:
            raise MalformedPayloadError(f"unexpected tensor {name!r} in an adapter state")
        if layout is not None and layer not in layout:
            raise MalformedPayloadError(f"adapter for {layer!r}, which is not an adapted layer")
        found.setdefault(layer, {})[param] = shape
    if len(set(layers)) != len(layers) or not set(found) <= set(layers):
        raise MalformedPayloadError("the adapter state's layers do not match its header")
    if expected_shapes is not None:
        expected = {layer: {p: tuple(s) for p, s in params.items()}
                    for layer, params in expected_shapes.items()}
        if found != expected:
            raise MalformedPayloadError(
                "the adapter state does not have the expected parameters and shapes"
            )
    tensors = _read(blob, specs, starts)
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
    """A batch whose tensors all share one leading dimension (and carry ``expected_keys``)."""
    specs, header, starts = _inspect(blob, "batch", limits)
    keys = _require(header, "keys", list, "a list of batch keys")
    if set(specs) != {f"b/{k}" for k in keys}:
        raise MalformedPayloadError("the batch's tensors do not match its header")
    if expected_keys is not None and set(keys) != set(expected_keys):
        raise MalformedPayloadError(f"batch keys {sorted(keys)}, expected {sorted(expected_keys)}")
    leading = {shape[0] if shape else -1 for _, shape in specs.values()}
    if len(leading) > 1 or -1 in leading:
        raise MalformedPayloadError("batch tensors must share one leading (batch) dimension")
    tensors = _read(blob, specs, starts)
    batch = {name[2:]: value for name, value in tensors.items()}
    for key, value in batch.items():
        _check_finite(key, value)
    return batch


def encode_metrics(metrics: Mapping[str, float | int]) -> bytes:
    """Scalar metrics, carried in the JSON header alone."""
    values = {}
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise MalformedPayloadError(f"metric {key!r} must be a number, got {value!r}")
        values[str(key)] = value
    return pack("metrics", {}, {"metrics": values})


def decode_metrics(blob: bytes, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, float | int]:
    specs, header = inspect(blob, "metrics", limits)
    metrics = _require(header, "metrics", dict, "a mapping of names to numbers")
    if specs or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        for v in metrics.values()):
        raise MalformedPayloadError("metrics must be a flat mapping of names to numbers")
    return metrics


def encode_bundle(parts: Mapping[str, bytes]) -> bytes:
    """Several payloads as one (e.g. an adapter state and the next batches), each kept whole."""
    tensors = {f"part/{name}": np.frombuffer(bytes(blob), dtype=np.uint8)
               for name, blob in parts.items()}
    return pack("bundle", tensors, {"parts": list(parts)})


def decode_bundle(blob: bytes, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, memoryview]:
    """The named payloads of a bundle, still encoded (views into ``blob``, not copies): decode
    each with its own strict decoder."""
    specs, header, starts = _inspect(blob, "bundle", limits)
    parts = _require(header, "parts", list, "a list of part names")
    if set(specs) != {f"part/{p}" for p in parts} or any(
            dtype != np.uint8 or len(shape) != 1 for dtype, shape in specs.values()):
        raise MalformedPayloadError("the bundle's parts do not match its header")
    tensors = _read(blob, specs, starts, copy=False)
    return {name: memoryview(tensors[f"part/{name}"]) for name in parts}
