"""Adaptation data in weight-space form: the exact, often smaller, alternative to rows.

For an adapter that is linear in its input rows, the whole parameter gradient depends on the
adaptation data only through the layer's weight-space gradient ``G = d^T x`` (``[d_out, d_in]``)
and the sum of ``d``'s rows: a Linear adapter's gradient is ``G`` (and that sum for a bias), Low
Rank's are ``B^T G`` and ``G A^T``. Sending them costs ``d_out * (d_in + 1)`` numbers instead of
``n * (d_in + d_out)`` for ``n`` rows, and is exact. An adaptation interval sums ``G`` over its
chunks, exactly as concatenating their rows would. Families declare whether they learn from it
(``AdapterFamily.weight_gradient``).

Works on torch tensors (the server, one GEMM per layer and node) and on numpy arrays alike.
Which layers travel in this form is :mod:`cola_fed.gl.forms`' choice.
"""

from __future__ import annotations

from typing import Any

from cola_fed.adapters.registry import family_of
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.gl.layer_data import to_rows
from cola_fed.gl.layout import LayerInfo


def weight_gradient(info: LayerInfo, x: Any, d: Any) -> tuple[Any, Any]:
    """``(G = d^T x, sum of d's rows)`` of one layer's adaptation data (a convolution's compact
    data unfolded first), in the data's own array type."""
    if hasattr(x, "detach") and info.is_conv2d:  # torch on the server: unfold there
        import torch.nn.functional as F

        cols = F.unfold(x, info.kernel_size, dilation=info.dilation, padding=info.padding,
                        stride=info.stride)  # [B, C_in*kh*kw, L]
        rows_d = d.flatten(2)  # [B, C_out, L]
        return (rows_d @ cols.transpose(1, 2)).sum(0), rows_d.sum((0, 2))
    if not hasattr(x, "detach"):
        x, d = to_rows(info, x, d)
    return d.T @ x, d.sum(0)


def learns_from_weight_gradient(spec: AdapterSpec) -> bool:
    """Whether ``spec``'s family takes its gradient from ``(G, sum of d)``."""
    return bool(family_of(spec.kind).weight_gradient)
