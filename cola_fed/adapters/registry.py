"""Adapter families by name: register once, build from a spec, recognise from a state."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cola_fed.adapters.base import Adapter
from cola_fed.adapters.linear import LinearAdapter
from cola_fed.adapters.lowrank import LowRankAdapter
from cola_fed.adapters.mlp import MLPAdapter
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.errors import AdapterError

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Make an adapter family available under ``cls.kind``."""
    ADAPTERS[cls.kind] = cls
    return cls


for _cls in (LowRankAdapter, LinearAdapter, MLPAdapter):
    register_adapter(_cls)


def build_adapter(spec: AdapterSpec) -> Adapter:
    """The adapter family named by ``spec.kind``, configured by ``spec``."""
    try:
        return ADAPTERS[spec.kind](spec)
    except KeyError:
        raise AdapterError(
            f"no adapter family {spec.kind!r} is registered; known: {sorted(ADAPTERS)}"
        ) from None


def infer_spec(params: Mapping[str, torch.Tensor], activation: str = "relu") -> AdapterSpec:
    """Recover the :class:`AdapterSpec` of an adapter state from its parameter names and shapes.

    The MLP activation is not visible in a state; it is ``activation``.
    """
    names = set(params)
    if names == {"A", "B"}:
        return AdapterSpec(kind="lowrank", rank=int(params["A"].shape[0]))
    if names in ({"weight"}, {"weight", "bias"}):
        return AdapterSpec(kind="linear", bias="bias" in names)
    if "fc0.weight" in names and len(names) % 2 == 0:
        depth = len(names) // 2 - 1
        widths = [int(params[f"fc{i}.weight"].shape[0]) for i in range(depth)]
        if depth >= 1:
            growth = widths[1] // widths[0] if depth > 1 else 2
            spec = AdapterSpec(
                kind="mlp", hidden=widths[0], depth=depth, growth=max(growth, 1),
                activation=activation,
            )
            if list(spec.hidden_sizes) == widths:
                return spec
    raise AdapterError(
        f"cannot tell which adapter family has parameters {sorted(names)}; expected "
        "{'A', 'B'} (lowrank), {'weight'[, 'bias']} (linear) or 'fc0.weight', ... (mlp)"
    )
