"""What a client's auxiliary models look like: a small, validated, torch-free description.

The fields are the shared vocabulary of the families (a rank, a bias, an MLP's widths); each
family reads the ones it needs, checks them (``AdapterFamily.check``) and may take further
``options`` of its own. Which kinds exist is open: see :mod:`cola_fed.adapters.registry`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cola_fed.errors import ConfigError

#: scalar types an option may take
OptionValue = int | float | bool | str
ACTIVATIONS = ("relu", "gelu", "tanh", "silu")


@dataclass(frozen=True)
class AdapterSpec:
    """The family and size of the auxiliary model attached to each adapted layer.

    Parameters
    ----------
    kind : str
        The family: ``"lowrank"`` (``B @ A``, PEFT LoRA's initialisation, scale 1), ``"linear"``
        (a full ``d_out x d_in`` matrix, zero-initialised), ``"mlp"`` (not mergeable) or any
        registered family.
    rank : int
        Rank ``r`` of a Low Rank adapter. Ignored by the other kinds.
    bias : bool
        Whether a Linear adapter has a bias (use it to adapt a frozen, freshly initialised task
        head). Ignored by Low Rank; MLP layers always have biases.
    hidden : int
        Width of the first hidden layer of an MLP adapter.
    depth : int
        Number of hidden layers of an MLP adapter.
    growth : int
        Each further hidden layer is ``growth`` times wider than the one before; the default
        ``hidden=128, depth=2, growth=2`` gives the reference code's 128 -> 256 MLP.
    activation : str
        Hidden activation of an MLP adapter: ``relu``, ``gelu`` (exact erf form), ``tanh`` or
        ``silu``.
    options : mapping
        Settings of a registered family beyond these fields (its ``options``); stored as sorted
        ``(name, value)`` pairs so that a spec stays hashable.
    """

    kind: str = "lowrank"
    rank: int = 8
    bias: bool = False
    hidden: int = 128
    depth: int = 2
    growth: int = 2
    activation: str = "relu"
    options: tuple[tuple[str, OptionValue], ...] = ()

    def __post_init__(self) -> None:
        from cola_fed.adapters.registry import family_of

        object.__setattr__(self, "options", _canonical_options(self.options))
        if not isinstance(self.kind, str):
            raise ConfigError(f"adapter.kind: expected a string, got {self.kind!r:.40}")
        family = family_of(self.kind)
        # an option declared float may be written as an integer ("alpha=16"): one spec either way
        object.__setattr__(self, "options", tuple(
            (name, float(value) if family.options.get(name) is float and type(value) is int
             else value) for name, value in self.options))
        if not isinstance(self.bias, bool):
            raise ConfigError(f"adapter.bias: expected true or false, got {self.bias!r}")
        for name in ("rank", "hidden", "depth", "growth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"adapter.{name}: expected a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"adapter.activation: expected one of {', '.join(ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        family.check(self)

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Widths of the hidden layers of an MLP adapter."""
        return tuple(self.hidden * self.growth**i for i in range(self.depth))

    @property
    def mergeable(self) -> bool:
        """Whether the adapter is linear in ``x`` and can be folded into the base weight."""
        from cola_fed.adapters.registry import family_of

        return family_of(self.kind).mergeable

    def option(self, name: str) -> OptionValue:
        """The value of one of the family's options."""
        return dict(self.options)[name]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["options"] = dict(self.options)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterSpec:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"adapter: unknown keys {sorted(unknown)}")
        return cls(**values)


def _canonical_options(options: Any) -> tuple[tuple[str, OptionValue], ...]:
    """``options`` as sorted ``(name, value)`` pairs, each name once and each value a finite
    number (integers within +-2^53, as JSON carries them exactly), a boolean or a string."""
    pairs = list(options.items()) if isinstance(options, Mapping) else options
    problem = None
    if not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
        problem = "expected a mapping of names to numbers, booleans or strings"
    elif len({name for name, _ in pairs}) != len(pairs):
        problem = "a name is given twice"
    else:
        for name, value in pairs:
            if not (isinstance(value, (bool, str))
                    or (isinstance(value, int) and abs(value) < 2**53)
                    or (isinstance(value, float) and math.isfinite(value))):
                problem = f"{name}: expected a finite number, a boolean or a string"
    if problem:
        raise ConfigError(f"adapter.options: {problem}, got {options!r:.80}")
    return tuple(sorted(pairs))
