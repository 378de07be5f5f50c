"""Adaptation data in weight-space form: the exact, often smaller, alternative to rows.

For an adapter that is linear in its input rows, the whole parameter gradient depends on the
adaptation data only through the layer's weight-space gradient ``G = d^T x`` (``[d_out, d_in]``)
and the sum of ``d``'s rows: a Linear adapter's gradient is ``G`` (and that sum for a bias), Low
Rank's are ``B^T G`` and ``G A^T``. Sending them costs ``d_out * (d_in + 1)`` numbers instead of
``n * (d_in + d_out)`` for ``n`` rows, and is exact. An adaptation interval sums ``G`` over its
chunks, exactly as concatenating their rows would. Families declare whether they learn from it
(``AdapterFamily.weight_gradient``).

Works on torch tensors (the server, one GEMM per layer and node) and on numpy arrays alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cola_fed.adapters.registry import family_of
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.errors import ConfigError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layer_data import to_rows
from cola_fed.gl.layout import LayerInfo, Layout

#: ``wire.form``: the smaller exact form per layer, always rows, or weight-space wherever the
#: layer's family learns from it
FORMS = ("auto", "rows", "weight-gradient")


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


def choose(data: AdaptationData, layout: Layout, specs: Mapping[str, AdapterSpec],
           form: str) -> list[str]:
    """The row layers of ``data`` to send in weight-space form under ``wire.form = form``.

    ``auto`` compares, per group of layers that share one input, the values the rows take (the
    shared ``x`` once, each layer's ``d``) with the weight-space form of the layers whose family
    learns from it; the shared ``x`` still travels while any layer of its group stays in rows.
    """
    if form not in FORMS:
        raise ConfigError(f"wire.form: expected one of {', '.join(FORMS)}, got {form!r}")
    if form == "rows":
        return []
    capable = [n for n in data.row_layers
               if n in specs and learns_from_weight_gradient(specs[n])]
    if not capable:
        return []
    if form == "weight-gradient":
        return capable
    chosen = []
    groups: dict[str, list[str]] = {}
    for name in data.row_layers:
        groups.setdefault(data.input_of[name], []).append(name)
    for key, members in groups.items():
        x_values = int(np.prod(data.inputs[key].shape))
        weight = {n: layout[n].d_out * (layout[n].d_in + 1) for n in members if n in capable}
        rows = {n: int(np.prod(data.grads[n].shape)) for n in members}
        if len(weight) == len(members):  # all of them: x need not travel at all
            if sum(weight.values()) < x_values + sum(rows.values()):
                chosen += members
        else:  # x travels anyway: each capable layer on its own d
            chosen += [n for n, w in weight.items() if w < rows[n]]
    return chosen


def to_form(data: AdaptationData, layout: Layout, specs: Mapping[str, AdapterSpec],
            form: str) -> AdaptationData:
    """``data`` with the layers :func:`choose` picks carried in weight-space form; shared
    inputs no row layer reads any more are dropped."""
    chosen = choose(data, layout, specs, form)
    if not chosen:
        return data
    weight_grads = dict(data.weight_grads)
    for name in chosen:
        weight_grads[name] = weight_gradient(layout[name], *data.layer(name))
    keep = [n for n in data.row_layers if n not in chosen]
    used = {data.input_of[n] for n in keep}
    return AdaptationData(
        {k: v for k, v in data.inputs.items() if k in used},
        {n: data.grads[n] for n in keep}, {n: data.input_of[n] for n in keep},
        {n: data.rows.get(n) for n in keep}, loss=data.loss, num_samples=data.num_samples,
        weight_grads=weight_grads)
