"""Parameter shapes and initial values of every adapter family, in numpy (torch-free).

Both learners start from these numbers — the PyTorch ``GradientLearner`` and the ONNX Runtime
``OrtLearner`` — so a node's adapters do not depend on which backend it runs: the same run seed
and partition give the same initial adapters, bit for bit, on a laptop and on a phone. Values are
drawn in float64 and rounded once to the learner's dtype.

Every family starts with an output of exactly zero, so the adapted model starts as the base model:
Low Rank as PEFT's LoRA (A ``nn.Linear``-style kaiming-uniform, B zero), Linear zero, MLP with
``nn.Linear``-style hidden layers and a zero last layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise

import numpy as np

from cola_fed.adapters.spec import AdapterSpec

Shapes = dict[str, tuple[int, ...]]
Arrays = dict[str, np.ndarray]


def param_shapes(spec: AdapterSpec, d_in: int, d_out: int) -> Shapes:
    """Shape of every parameter of ``spec``'s adapter on a ``d_in -> d_out`` layer."""
    if spec.kind == "lowrank":
        return {"A": (spec.rank, d_in), "B": (d_out, spec.rank)}
    if spec.kind == "linear":
        return {"weight": (d_out, d_in), **({"bias": (d_out,)} if spec.bias else {})}
    shapes: Shapes = {}
    for i, (fan_in, fan_out) in enumerate(pairwise([d_in, *spec.hidden_sizes, d_out])):
        shapes[f"fc{i}.weight"] = (fan_out, fan_in)
        shapes[f"fc{i}.bias"] = (fan_out,)
    return shapes


def state_shapes(layout, specs: Mapping[str, AdapterSpec]) -> dict[str, Shapes]:
    """``{layer: {param: shape}}`` of the adapter state of ``specs`` (one spec per layer, as
    ``assign_specs`` returns them): exactly what a node's adapters must look like."""
    return {name: param_shapes(spec, layout[name].d_in, layout[name].d_out)
            for name, spec in specs.items()}


def state_nbytes(layout, specs: Mapping[str, AdapterSpec]) -> int:
    """Bytes of that adapter state in float32, as it travels."""
    return sum(4 * math.prod(shape) for shapes in state_shapes(layout, specs).values()
               for shape in shapes.values())


def initial_params(spec: AdapterSpec, d_in: int, d_out: int, rng: np.random.Generator) -> Arrays:
    """Fresh float64 parameters whose output is exactly zero."""
    shapes = param_shapes(spec, d_in, d_out)
    params = {name: np.zeros(shape) for name, shape in shapes.items()}
    if spec.kind == "lowrank":
        params["A"] = _uniform(rng, shapes["A"], fan_in=d_in)
    elif spec.kind == "mlp":
        for i in range(spec.depth):  # hidden layers; the last layer (fc{depth}) stays zero
            fan_in = shapes[f"fc{i}.weight"][1]
            params[f"fc{i}.weight"] = _uniform(rng, shapes[f"fc{i}.weight"], fan_in=fan_in)
            params[f"fc{i}.bias"] = _uniform(rng, shapes[f"fc{i}.bias"], fan_in=fan_in)
    return params


def initial_state(layout, specs: Mapping[str, AdapterSpec], seed: int) -> dict[str, Arrays]:
    """``{layer: {param: float64 array}}`` for every adapted layer, drawn from one seeded stream
    in the order of ``specs`` (the layout's order, as ``assign_specs`` returns it)."""
    rng = np.random.default_rng(seed)
    return {name: initial_params(spec, layout[name].d_in, layout[name].d_out, rng)
            for name, spec in specs.items()}


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], *, fan_in: int) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): ``nn.Linear``'s default, i.e. kaiming-uniform with
    a = sqrt(5) for weights."""
    bound = 1.0 / fan_in**0.5
    return (rng.random(shape) * 2.0 - 1.0) * bound
