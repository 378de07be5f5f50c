"""Adaptation data as the adapter's own parameter gradient: the smallest exact form.

In a federation a node takes exactly one step per round, at the adapters whose state the server
holds: the state its last reply carried, which the TRAIN order acknowledges and the node steps
from. The server's pass ran with those very adapters. So the server can apply the family's
closed-form VJP (``Adapter.vjp``) to the rows it already holds, and send the node the gradient of
its parameters: as many numbers as the adapter has, for every family, exact. For a Low Rank r=8
adapter of a 384 x 384 layer that is 6,144 numbers, against 147,840 for ``G`` and about 700,000
for the 900 rows of a demo batch.

The gradient is exact only at those adapters, so each layer carries the :func:`digest` of the
parameters it was computed at, and a learner refuses it unless its own parameters have that
digest. Every chunk of an adaptation interval is computed at the same adapters, so the server
may send the interval's gradients summed in one chunk; a learner adds up those it buffers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from cola_fed.gl.layout import LayerInfo

#: length of a :func:`digest` (SHA-256, hex)
DIGEST_CHARS = 64


def digest(params: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of one adapter's parameters as float32: names, shapes and values.

    Float32 because that is how adapters travel: a learner holding float64 parameters (an
    exactness test) and the server holding the float32 copy it received agree.
    """
    hasher = hashlib.sha256()
    for name in sorted(params):
        value = params[name]
        value = value.detach().float().cpu().numpy() if hasattr(value, "detach") else value
        array = np.ascontiguousarray(value, dtype="<f4")
        hasher.update(name.encode() + b"\0")
        hasher.update(np.asarray(array.shape, dtype="<i8").tobytes())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def parameter_gradient(info: LayerInfo, adapter: Any, params: Mapping[str, Any], x: Any,
                       d: Any) -> dict[str, Any]:
    """The gradient of ``adapter``'s parameters ``params`` from one layer's adaptation data
    ``(x, d)`` (torch tensors; a convolution's compact data is unfolded), in float32 (float64
    data stays float64): what the node's learner would compute from the rows (``adapter`` is
    the family's torch ops)."""
    import torch
    import torch.nn.functional as F

    x, d = torch.as_tensor(x), torch.as_tensor(d)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, d = x.to(dtype), d.to(dtype)
    if info.is_conv2d:
        x = F.unfold(x, info.kernel_size, dilation=info.dilation, padding=info.padding,
                     stride=info.stride).transpose(1, 2).reshape(-1, info.d_in)
        d = d.flatten(2).transpose(1, 2).reshape(-1, info.d_out)
    on = {"device": x.device, "dtype": dtype}
    tensors = {p: torch.as_tensor(np.asarray(v) if not hasattr(v, "detach") else v).to(**on)
               for p, v in params.items()}
    return adapter.vjp(tensors, x, d)


__all__ = ["DIGEST_CHARS", "digest", "parameter_gradient"]
