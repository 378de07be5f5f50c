"""The Low Rank family's torch-free description."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cola_fed.adapters.family import AdapterFamily, Arrays, Shapes, uniform
from cola_fed.adapters.spec import AdapterSpec


class LowRank(AdapterFamily):
    kind = "lowrank"
    ops = "cola_fed.adapters.lowrank.ops:LowRankAdapter"
    fields = ("rank",)
    mergeable = True
    weight_gradient = True

    def param_shapes(self, spec: AdapterSpec, d_in: int, d_out: int) -> Shapes:
        return {"A": (spec.rank, d_in), "B": (d_out, spec.rank)}

    def init(self, spec: AdapterSpec, d_in: int, d_out: int, rng: np.random.Generator) -> Arrays:
        return {"A": uniform(rng, (spec.rank, d_in), fan_in=d_in),
                "B": np.zeros((d_out, spec.rank))}

    def graph_tag(self, spec: AdapterSpec) -> str:
        return f"r{spec.rank}"

    def infer(self, shapes: Mapping[str, tuple[int, ...]], activation: str) -> AdapterSpec | None:
        if set(shapes) == {"A", "B"} and len(shapes["A"]) == 2:
            return AdapterSpec(kind="lowrank", rank=int(shapes["A"][0]))
        return None
