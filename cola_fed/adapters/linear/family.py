"""The Linear family's torch-free description."""

from __future__ import annotations

from collections.abc import Mapping

from cola_fed.adapters.family import AdapterFamily, Shapes
from cola_fed.adapters.spec import AdapterSpec


class Linear(AdapterFamily):
    kind = "linear"
    ops = "cola_fed.adapters.linear.ops:LinearAdapter"
    fields = ("bias",)
    mergeable = True
    weight_gradient = True

    def param_shapes(self, spec: AdapterSpec, d_in: int, d_out: int) -> Shapes:
        return {"weight": (d_out, d_in), **({"bias": (d_out,)} if spec.bias else {})}

    def graph_tag(self, spec: AdapterSpec) -> str:
        return "bias" if spec.bias else "nobias"

    def infer(self, shapes: Mapping[str, tuple[int, ...]], activation: str) -> AdapterSpec | None:
        if set(shapes) in ({"weight"}, {"weight", "bias"}):
            return AdapterSpec(kind="linear", bias="bias" in shapes)
        return None
