"""Which exact form each layer's adaptation data travels in (``wire.form``).

Three forms give a node the same step:

- ``rows``: ``(x, d)``, what every family learns from (:mod:`cola_fed.gl.data`);
- weight-space ``(G = d^T x, sum of d)``, for families linear in their input rows
  (:mod:`cola_fed.gl.weight_gradient`);
- the adapter's own parameter gradient, computed by the server at the adapters it holds, for
  every family (:mod:`cola_fed.gl.parameter_gradient`).

The server converts the chunks of one adaptation interval together: a layer in weight-space or
parameter form is summed over the interval into the first chunk (the node adds its chunks up
anyway), so it costs its size once per round while rows cost theirs for every chunk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cola_fed.adapters.init import state_shapes
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.errors import ConfigError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layout import Layout
from cola_fed.gl.parameter_gradient import digest, parameter_gradient
from cola_fed.gl.weight_gradient import learns_from_weight_gradient, weight_gradient

#: ``wire.form``: the smallest exact form per layer; always rows; weight-space wherever the
#: family learns from it; the parameter gradient everywhere
FORMS = ("auto", "rows", "weight-gradient", "parameter-gradient")
#: the forms besides rows, as a layer's choice names them
WEIGHT, PARAMETER = "weight-gradient", "parameter-gradient"


def choose(chunks: list[AdaptationData], layout: Layout, specs: Mapping[str, AdapterSpec],
           form: str, *, parameter_form: bool = True) -> dict[str, str]:
    """``{layer: WEIGHT or PARAMETER}`` for the row layers of one interval's ``chunks`` that
    ``form`` takes out of rows; ``parameter_form=False`` when the server does not hold the
    node's adapters.

    ``auto`` counts values: per group of layers that share one input, either every layer leaves
    rows (and the shared ``x`` need not travel), or ``x`` travels and each layer takes the
    smaller of its ``d`` rows and its cheapest other form.
    """
    if form not in FORMS:
        raise ConfigError(f"wire.form: expected one of {', '.join(FORMS)}, got {form!r}")
    layers = [n for n in chunks[0].row_layers if n in specs] if chunks else []
    if form == "rows" or not layers:
        return {}
    cost: dict[str, tuple[int, str]] = {}  # the cheapest form other than rows, per layer
    for name in layers:
        options = []
        if form in ("auto", WEIGHT) and learns_from_weight_gradient(specs[name]):
            options.append((layout[name].d_out * (layout[name].d_in + 1), WEIGHT))
        if form in ("auto", PARAMETER) and parameter_form:
            shapes = state_shapes(layout, {name: specs[name]})[name].values()
            options.append((sum(math.prod(s) for s in shapes), PARAMETER))
        if options:  # a tie goes to the parameter gradient (edge.graphs ships G only if smaller)
            cost[name] = min(options, key=lambda option: (option[0], option[1] != PARAMETER))
    if form != "auto":
        return {n: f for n, (_, f) in cost.items()}
    chosen: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for name in layers:
        groups.setdefault(chunks[0].input_of[name], []).append(name)
    for key, members in groups.items():
        x_values = sum(_values(c.inputs[key]) for c in chunks if key in c.inputs)
        rows = {n: sum(_values(c.grads[n]) for c in chunks if n in c.grads) for n in members}
        if all(n in cost for n in members):
            leave_all = sum(cost[n][0] for n in members)
            with_x = x_values + sum(min(cost[n][0], rows[n]) for n in members)
            if leave_all <= with_x:
                chosen.update({n: cost[n][1] for n in members})
                continue
        chosen.update({n: cost[n][1] for n in members if n in cost and cost[n][0] < rows[n]})
    return chosen


def to_forms(chunks: list[AdaptationData], layout: Layout, specs: Mapping[str, AdapterSpec],
             form: str, *, adapters: Mapping[str, Mapping[str, Any]] | None = None
             ) -> list[AdaptationData]:
    """One interval's ``chunks`` (torch, on the server) with the layers :func:`choose` picks
    carried in their other form, summed over the interval into the first chunk; shared inputs
    no row layer reads any more are dropped.

    ``adapters`` (``{layer: {param: array}}``, the node's adapters the chunks were computed
    at) makes the parameter form available.
    """
    from cola_fed.adapters.registry import build_adapter

    chosen = choose(chunks, layout, specs, form, parameter_form=adapters is not None)
    if not chosen:
        return chunks
    weight_grads: dict[str, tuple[Any, Any]] = {}
    param_grads: dict[str, dict[str, Any]] = {}
    param_at: dict[str, str] = {}
    for name, how in chosen.items():
        parts = [c.layer(name) for c in chunks if name in c.grads]
        if how == WEIGHT:
            pairs = [weight_gradient(layout[name], x, d) for x, d in parts]
            weight_grads[name] = (sum(p[0] for p in pairs), sum(p[1] for p in pairs))
        else:
            adapter, params = build_adapter(specs[name]), adapters[name]
            grads = [parameter_gradient(layout[name], adapter, params, x, d) for x, d in parts]
            param_grads[name] = {p: sum(g[p] for g in grads) for p in grads[0]}
            param_at[name] = digest(params)
    out = []
    for i, data in enumerate(chunks):
        keep = [n for n in data.row_layers if n not in chosen]
        used = {data.input_of[n] for n in keep}
        first = i == 0
        out.append(AdaptationData(
            {k: v for k, v in data.inputs.items() if k in used},
            {n: data.grads[n] for n in keep}, {n: data.input_of[n] for n in keep},
            {n: data.rows.get(n) for n in keep}, loss=data.loss, num_samples=data.num_samples,
            weight_grads={**data.weight_grads, **(weight_grads if first else {})},
            param_grads={**data.param_grads, **(param_grads if first else {})},
            param_at={**data.param_at, **(param_at if first else {})}))
    return out


def to_form(data: AdaptationData, layout: Layout, specs: Mapping[str, AdapterSpec], form: str,
            *, adapters: Mapping[str, Mapping[str, Any]] | None = None) -> AdaptationData:
    """One chunk in the forms :func:`to_forms` picks (an interval of one)."""
    return to_forms([data], layout, specs, form, adapters=adapters)[0]


def _values(array: Any) -> int:
    return math.prod(int(n) for n in array.shape)


__all__ = ["FORMS", "PARAMETER", "WEIGHT", "choose", "to_form", "to_forms"]
