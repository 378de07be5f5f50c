"""Parameter shapes and initial values of every adapted layer, in numpy (torch-free).

Both learners start from these numbers — the PyTorch ``GradientLearner`` and the ONNX Runtime
``OrtLearner`` — so a node's adapters do not depend on which backend it runs: the same run seed
and partition give the same initial adapters, bit for bit, on a laptop and on a phone. Each
family draws its values in float64 (``AdapterFamily.init``); they are rounded once to the
learner's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cola_fed.adapters.family import Arrays, Shapes
from cola_fed.adapters.registry import family_of
from cola_fed.adapters.spec import AdapterSpec


def param_shapes(spec: AdapterSpec, d_in: int, d_out: int) -> Shapes:
    """Shape of every parameter of ``spec``'s adapter on a ``d_in -> d_out`` layer."""
    return family_of(spec.kind).param_shapes(spec, d_in, d_out)


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
    """Fresh float64 parameters whose output is exactly zero, checked against the shapes."""
    family = family_of(spec.kind)
    params = family.init(spec, d_in, d_out, rng)
    shapes = family.param_shapes(spec, d_in, d_out)
    got = {name: tuple(np.shape(value)) for name, value in params.items()}
    if got != shapes:
        raise ValueError(f"adapter family {spec.kind!r}: init gave {got}, its shapes are {shapes}")
    return {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}


def initial_state(layout, specs: Mapping[str, AdapterSpec], seed: int) -> dict[str, Arrays]:
    """``{layer: {param: float64 array}}`` for every adapted layer, drawn from one seeded stream
    in the order of ``specs`` (the layout's order, as ``assign_specs`` returns it)."""
    rng = np.random.default_rng(seed)
    return {name: initial_params(spec, layout[name].d_in, layout[name].d_out, rng)
            for name, spec in specs.items()}
