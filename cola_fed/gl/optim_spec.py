"""How a client's adapters are optimised: a small, validated, torch-free description.

The same spec drives the torch learner and the ONNX Runtime learner: it names each parameter's
optimizer state (:attr:`OptimizerSpec.slots`), the scalar hyper-parameters of every step
(:meth:`OptimizerSpec.hyper`: schedule included) and the clipping coefficient, so the two
backends agree on all of them and their saved states are interchangeable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cola_fed.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")

#: the scalar hyper-parameters of one step, in the order train-step graphs take them
HYPER_PARAMETERS = ("lr", "step", "beta1", "beta2", "eps", "weight_decay", "momentum")


def slot_names(optimizer: str) -> tuple[str, ...]:
    """Optimizer state per parameter. SGD always keeps a momentum buffer (with momentum 0 it
    holds the last gradient and the update is plain SGD's, bit for bit), so that a state has one
    shape whatever the momentum and moves between backends as it is."""
    return ("exp_avg", "exp_avg_sq") if optimizer == "adamw" else ("momentum_buffer",)


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer, schedule and clipping of a client's adapters.

    Parameters
    ----------
    name : str
        ``"adamw"`` (``torch.optim.AdamW`` semantics) or ``"sgd"`` (``torch.optim.SGD`` with
        optional momentum and Nesterov, no dampening).
    lr : float
        Peak learning rate.
    weight_decay : float
        Decoupled for AdamW; L2 added to the gradient for SGD (as torch does).
    betas, eps : tuple of float, float
        AdamW's moment decay rates and denominator epsilon.
    momentum : float
        SGD momentum; ``0`` for plain SGD.
    nesterov : bool
        Nesterov momentum for SGD.
    warmup_steps : int
        Linear warmup from 0 over this many optimizer steps (as
        ``transformers.get_linear_schedule_with_warmup``: the first step runs at lr 0 when > 0).
    total_steps : int or None
        Decay linearly to 0 at this many optimizer steps; ``None`` keeps ``lr`` after warmup.
        Count optimizer steps, i.e. batches divided by the adaptation interval.
    max_grad_norm : float or None
        Clip the global gradient norm over all of the client's adapters to this value.
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False
    warmup_steps: int = 0
    total_steps: int | None = None
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer.name: expected one of {', '.join(OPTIMIZERS)}, got {self.name!r}"
            )
        _check_range("optimizer.lr", self.lr, 0.0, None)
        _check_range("optimizer.weight-decay", self.weight_decay, 0.0, None)
        _check_range("optimizer.eps", self.eps, 0.0, None)
        _check_range("optimizer.momentum", self.momentum, 0.0, 1.0)
        if len(self.betas) != 2:
            raise ConfigError(f"optimizer.betas: expected two values, got {self.betas!r}")
        for beta in self.betas:
            _check_range("optimizer.betas", beta, 0.0, 1.0, upper_open=True)
        if self.nesterov and self.momentum == 0:
            raise ConfigError("optimizer.nesterov: Nesterov momentum needs optimizer.momentum > 0")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(
                f"optimizer.warmup-steps: expected an integer >= 0, got {self.warmup_steps!r}"
            )
        if self.total_steps is not None and (
            not isinstance(self.total_steps, int) or self.total_steps <= self.warmup_steps
        ):
            raise ConfigError(
                "optimizer.total-steps: expected an integer above warmup-steps "
                f"({self.warmup_steps}), got {self.total_steps!r}"
            )
        if self.max_grad_norm is not None:
            _check_range("optimizer.max-grad-norm", self.max_grad_norm, 0.0, None, lower_open=True)

    def lr_at(self, step: int) -> float:
        """Learning rate of the ``step``-th optimizer step (1-based)."""
        done = step - 1
        if done < self.warmup_steps:
            return self.lr * done / self.warmup_steps
        if self.total_steps is None:
            return self.lr
        remaining = (self.total_steps - done) / (self.total_steps - self.warmup_steps)
        return self.lr * max(0.0, remaining)

    @property
    def slots(self) -> tuple[str, ...]:
        """The optimizer state kept per parameter (see :func:`slot_names`)."""
        return slot_names(self.name)

    def hyper(self, step: int) -> dict[str, float]:
        """The scalar hyper-parameters of the ``step``-th step (1-based), ``HYPER_PARAMETERS``
        in order: the scheduled learning rate and the optimizer's constants."""
        return {"lr": self.lr_at(step), "step": float(step), "beta1": self.betas[0],
                "beta2": self.betas[1], "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum}

    def clip_coefficient(self, grad_norm: float) -> float:
        """``torch.nn.utils.clip_grad_norm_``'s scale for a global gradient norm: ``min(1,
        max_grad_norm / (norm + 1e-6))``, or 1 without clipping."""
        if self.max_grad_norm is None:
            return 1.0
        return min(1.0, self.max_grad_norm / (grad_norm + 1e-6))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OptimizerSpec:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"optimizer: unknown keys {sorted(unknown)}")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def _check_range(
    key: str,
    value: Any,
    low: float,
    high: float | None,
    *,
    lower_open: bool = False,
    upper_open: bool = False,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok:
        ok = (value > low if lower_open else value >= low) and (
            high is None or (value < high if upper_open else value <= high)
        )
    if not ok:
        bounds = f"{'(' if lower_open else '['}{low}, {high if high is not None else 'inf'}"
        bounds += ")" if upper_open or high is None else "]"
        raise ConfigError(f"{key}: expected a number in {bounds}, got {value!r}")
