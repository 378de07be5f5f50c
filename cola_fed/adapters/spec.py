"""What a client's auxiliary models look like: a small, validated, torch-free description."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cola_fed.errors import ConfigError

ADAPTER_KINDS = ("lowrank", "linear", "mlp")
ACTIVATIONS = ("relu", "gelu", "tanh", "silu")


@dataclass(frozen=True)
class AdapterSpec:
    """The family and size of the auxiliary model attached to each adapted layer.

    Parameters
    ----------
    kind : str
        ``"lowrank"`` (``B @ A``, PEFT LoRA's initialisation, scale 1), ``"linear"`` (a full
        ``d_out x d_in`` matrix, zero-initialised) or ``"mlp"`` (not mergeable).
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
    """

    kind: str = "lowrank"
    rank: int = 8
    bias: bool = False
    hidden: int = 128
    depth: int = 2
    growth: int = 2
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ConfigError(
                f"adapter.kind: expected one of {', '.join(ADAPTER_KINDS)}, got {self.kind!r}"
            )
        for name in ("rank", "hidden", "depth", "growth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"adapter.{name}: expected a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"adapter.activation: expected one of {', '.join(ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Widths of the hidden layers of an MLP adapter."""
        return tuple(self.hidden * self.growth**i for i in range(self.depth))

    @property
    def mergeable(self) -> bool:
        """Whether the adapter is linear in ``x`` and can be folded into the base weight."""
        return self.kind in ("lowrank", "linear")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterSpec:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"adapter: unknown keys {sorted(unknown)}")
        return cls(**values)
