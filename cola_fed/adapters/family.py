"""The torch-free description of one auxiliary-model family: what every backend needs to know.

A family is two pieces, as PEFT's tuners are a config beside a layer:

- an :class:`AdapterFamily` (this contract; numpy only): which :class:`AdapterSpec` fields it
  reads and how it checks them, its parameter shapes, its seeded initial values, whether it
  merges into the frozen weight, and the tag that names its ONNX train-step graphs. The server's
  protocol, the ONNX Runtime learner and the wire codec need nothing else, so none of them
  imports torch;
- its torch operations (an :class:`cola_fed.adapters.base.Adapter`: forward, closed-form VJP,
  weight delta), named by ``ops`` as ``"module:Class"`` and imported on first use.

Register a new family with :func:`cola_fed.adapters.register_adapter`; every learner, the ONNX
exporter and the federation then use it without any change to cola-fed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cola_fed.errors import ConfigError

if TYPE_CHECKING:
    from cola_fed.adapters.spec import AdapterSpec

Shapes = dict[str, tuple[int, ...]]
Arrays = dict[str, np.ndarray]


class AdapterFamily:
    """One family of auxiliary models ``g(x; params)`` on rows ``[n, d_in] -> [n, d_out]``.

    Subclass it, set the class attributes and implement :meth:`param_shapes`; override the
    other methods where the defaults do not fit.

    Attributes
    ----------
    kind : str
        The name that ``adapter.kind`` selects (lower case, digits, ``-`` and ``_``).
    ops : str
        ``"module:Class"`` of the family's torch operations, an ``Adapter`` subclass.
    fields : tuple of str
        The :class:`AdapterSpec` fields this family reads (``rank``, ``bias``, ``hidden``,
        ``depth``, ``growth``, ``activation``); the others are ignored.
    options : mapping
        The family's own settings beyond those fields, ``name -> type`` (``int``, ``float``,
        ``bool`` or ``str``), given as ``AdapterSpec(options={...})`` or ``adapter.options``.
    mergeable : bool
        Whether ``g`` is linear in ``x``, so that it folds into the frozen weight (merged and
        collaborative modes, PEFT export).
    weight_gradient : bool
        Whether its gradient depends on the adaptation data only through the weight-space
        gradient ``G = d^T x`` and the sum of ``d`` (then its ops implement ``vjp_weight``
        and the server may send that smaller, exact form: :mod:`cola_fed.gl.weight_gradient`).
    """

    kind: ClassVar[str]
    ops: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[Mapping[str, type]] = {}
    mergeable: ClassVar[bool] = False
    weight_gradient: ClassVar[bool] = False

    def check(self, spec: AdapterSpec) -> None:
        """Raise :class:`ConfigError` unless ``spec`` configures this family soundly. The spec's
        shared fields are already checked; by default this checks ``spec.options``."""
        for name, value in spec.options:
            expected = self.options.get(name)
            if expected is None:
                known = ", ".join(self.options) or "none"
                raise ConfigError(f"adapter.options: a {self.kind!r} adapter has no option "
                                  f"{name!r} (its options: {known})")
            if not _is_a(value, expected):
                raise ConfigError(f"adapter.options.{name}: expected {expected.__name__}, got "
                                  f"{value!r}")
        missing = set(self.options) - {name for name, _ in spec.options}
        if missing:
            raise ConfigError(f"adapter.options: a {self.kind!r} adapter needs "
                              f"{', '.join(sorted(missing))}")

    def param_shapes(self, spec: AdapterSpec, d_in: int, d_out: int) -> Shapes:
        """Shape of every parameter on a ``d_in -> d_out`` layer."""
        raise NotImplementedError

    def init(self, spec: AdapterSpec, d_in: int, d_out: int, rng: np.random.Generator) -> Arrays:
        """Fresh float64 parameters whose output is exactly zero, so that the adapted model
        starts as the base model. Draw only from ``rng``: both learners call this, so the same
        seed gives the same adapters on every backend. Default: all zeros."""
        return {name: np.zeros(shape) for name, shape in
                self.param_shapes(spec, d_in, d_out).items()}

    def graph_tag(self, spec: AdapterSpec) -> str:
        """The size part of this family's graph names (``r8`` in ``lowrank-r8-64x64-adamw``):
        specs that train with different graphs must get different tags. Default: every field
        the family reads (validated numbers, booleans and activation names), then a digest of
        its options, whose values may be any text."""
        parts = [f"{name}{getattr(spec, name)}" for name in self.fields]
        if spec.options:
            canonical = json.dumps(spec.options, separators=(",", ":")).encode()
            parts.append("o" + hashlib.sha256(canonical).hexdigest()[:12])
        return "".join(parts) or "default"

    def infer(self, shapes: Mapping[str, tuple[int, ...]], activation: str) -> AdapterSpec | None:
        """The spec of a state with these parameter shapes, if it is one of this family's; used
        to read a state that came without its spec. Default: never recognised."""
        return None


def uniform(rng: np.random.Generator, shape: tuple[int, ...], *, fan_in: int) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): ``nn.Linear``'s default, i.e. kaiming-uniform with
    a = sqrt(5) for weights, drawn in float64."""
    bound = 1.0 / fan_in**0.5
    return (rng.random(shape) * 2.0 - 1.0) * bound


def _is_a(value: Any, expected: type) -> bool:
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float)) and value == value
    return isinstance(value, expected)
