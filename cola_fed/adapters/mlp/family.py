"""The MLP family's torch-free description."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import numpy as np

from cola_fed.adapters.family import AdapterFamily, Arrays, Shapes, uniform
from cola_fed.adapters.spec import AdapterSpec


class MLP(AdapterFamily):
    kind = "mlp"
    ops = "cola_fed.adapters.mlp.ops:MLPAdapter"
    fields = ("hidden", "depth", "growth", "activation")

    def param_shapes(self, spec: AdapterSpec, d_in: int, d_out: int) -> Shapes:
        shapes: Shapes = {}
        for i, (fan_in, fan_out) in enumerate(pairwise([d_in, *spec.hidden_sizes, d_out])):
            shapes[f"fc{i}.weight"] = (fan_out, fan_in)
            shapes[f"fc{i}.bias"] = (fan_out,)
        return shapes

    def init(self, spec: AdapterSpec, d_in: int, d_out: int, rng: np.random.Generator) -> Arrays:
        """``nn.Linear``-style hidden layers; the last layer (``fc{depth}``) is zero."""
        shapes = self.param_shapes(spec, d_in, d_out)
        params = {name: np.zeros(shape) for name, shape in shapes.items()}
        for i in range(spec.depth):
            fan_in = shapes[f"fc{i}.weight"][1]
            params[f"fc{i}.weight"] = uniform(rng, shapes[f"fc{i}.weight"], fan_in=fan_in)
            params[f"fc{i}.bias"] = uniform(rng, shapes[f"fc{i}.bias"], fan_in=fan_in)
        return params

    def graph_tag(self, spec: AdapterSpec) -> str:
        return f"h{spec.hidden}x{spec.depth}g{spec.growth}{spec.activation}"

    def infer(self, shapes: Mapping[str, tuple[int, ...]], activation: str) -> AdapterSpec | None:
        """The activation is not visible in a state; it is ``activation``."""
        names = set(shapes)
        if "fc0.weight" not in names or len(names) % 2:
            return None
        depth = len(names) // 2 - 1
        if depth < 1 or any(f"fc{i}.weight" not in names for i in range(depth + 1)):
            return None
        widths = [int(shapes[f"fc{i}.weight"][0]) for i in range(depth)]
        growth = max(widths[1] // widths[0], 1) if depth > 1 else 2
        spec = AdapterSpec(kind="mlp", hidden=widths[0], depth=depth, growth=growth,
                           activation=activation)
        return spec if list(spec.hidden_sizes) == widths else None
