"""A learner's resumable state as one safetensors blob; torch-free, shared by both backends.

The PyTorch and the ONNX Runtime learners write the same format, so a node's saved state does not
depend on its backend. Layout (no pickle; metadata ``step`` and ``buffered``)::

    p/<layer>/<param>          adapter parameters
    s/<layer>/<param>/<slot>   optimizer state (exp_avg, exp_avg_sq | momentum_buffer)
    b/<i>/x/<layer>, b/<i>/d/<layer>   the i-th buffered chunk of adaptation data: rows,
    b/<i>/g/<layer>, b/<i>/gb/<layer>  or weight-space form,
    b/<i>/at/<layer>, b/<i>/pg.<param>/<layer>  or parameter gradient, with the SHA-256 (32
                                                bytes) of the parameters it was computed at
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cola_fed.errors import AdapterError

#: most buffered chunks a state may hold (an adaptation interval is far smaller)
MAX_BUFFERED = 4096
#: the parts of one buffered layer: its rows, or its weight-space form (or, see
#: :func:`_is_parameter_gradient`, its parameter gradient)
BUFFERED_FORMS = ({"x", "d"}, {"g", "gb"})
#: how a buffered parameter gradient's parts are named: ``pg.<param>``
PARAM_PREFIX = "pg."


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """A learner's ``state_dict`` (numpy arrays) as a safetensors blob."""
    from safetensors.numpy import save

    flat = {f"p/{n}/{p}": v for n, ps in state["params"].items() for p, v in ps.items()}
    flat.update({f"s/{n}/{p}/{k}": v for n, ps in state["slots"].items()
                 for p, slots in ps.items() for k, v in slots.items()})
    for i, chunk in enumerate(state["buffer"]):
        for name, parts in chunk.items():
            for part, value in parts.items():
                flat[f"b/{i}/{part}/{name}"] = value
    meta = {"step": str(state["step"]), "buffered": str(len(state["buffer"]))}
    return save({k: np.ascontiguousarray(v) for k, v in flat.items()}, metadata=meta)


def state_from_bytes(blob: bytes | memoryview) -> dict[str, Any]:
    """The ``state_dict`` (numpy arrays) in a :func:`state_to_bytes` blob."""
    from safetensors.numpy import load

    try:
        blob = bytes(blob)
        tensors = load(blob)
        size = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8:8 + size]).get("__metadata__", {})
        step, buffered = int(meta["step"]), int(meta["buffered"])
    except Exception as err:  # safetensors raises its own error types
        raise AdapterError(f"unreadable learner state: {err}") from None
    if not 0 <= buffered <= MAX_BUFFERED:
        raise AdapterError(f"learner state: {buffered} buffered chunks (at most {MAX_BUFFERED})")
    state: dict[str, Any] = {"step": step, "params": {}, "slots": {},
                             "buffer": [{} for _ in range(buffered)]}
    chunks: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        head, _, rest = key.partition("/")
        if head == "p":
            layer, _, param = rest.rpartition("/")
            state["params"].setdefault(layer, {})[param] = value
        elif head == "s":
            layer_param, _, slot = rest.rpartition("/")
            layer, _, param = layer_param.rpartition("/")
            state["slots"].setdefault(layer, {}).setdefault(param, {})[slot] = value
        elif head == "b":
            index, _, rest = rest.partition("/")
            which, _, layer = rest.partition("/")
            if not (index.isascii() and index.isdigit() and int(index) < buffered):
                raise AdapterError(f"learner state: malformed buffered chunk key {key!r:.80}")
            chunks.setdefault((int(index), layer), {})[which] = value
    for (index, layer), parts in chunks.items():
        if index >= buffered or not (set(parts) in BUFFERED_FORMS
                                     or _is_parameter_gradient(parts)):
            raise AdapterError(f"learner state: malformed buffered chunk {index} of {layer!r}")
        state["buffer"][index][layer] = parts
    return state


def _is_parameter_gradient(parts: dict[str, np.ndarray]) -> bool:
    """A buffered layer's parts are a parameter gradient: a 32-byte digest ``at`` and at least
    one ``pg.<param>``, nothing else."""
    at = parts.get("at")
    grads = [k for k in parts if k != "at"]
    return (at is not None and at.dtype == np.uint8 and at.shape == (32,) and bool(grads)
            and all(k.startswith(PARAM_PREFIX) and len(k) > len(PARAM_PREFIX)
                    and parts[k].dtype in (np.float32, np.float64) for k in grads))
