"""Functional optimizers: one definition for the torch learner and the exported ONNX graphs.

Each update is a pure function of tensors written with arithmetic and ``sqrt`` only, so that the
same code runs eagerly and traces into an ONNX train-step graph; hyper-parameters may be Python
numbers or 0-d tensors. The formulas follow ``torch.optim.AdamW`` and ``torch.optim.SGD``
(single-tensor code path) operation for operation, which is what makes ColA Low Rank reproduce
PEFT LoRA trained with ``torch.optim.AdamW`` to the last bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cola_fed.gl.optim_spec import OptimizerSpec

Tensor = torch.Tensor
Scalar = Any  # float or 0-d tensor


def init_slots(spec: OptimizerSpec, param: Tensor) -> dict[str, Tensor]:
    """Zero optimizer state for one parameter (``spec.slots``)."""
    return {name: torch.zeros_like(param) for name in spec.slots}


def adamw_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    step: Scalar,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
) -> tuple[Tensor, Tensor, Tensor]:
    """One AdamW step (decoupled weight decay, bias correction); ``step`` is 1-based."""
    param = param * (1 - lr * weight_decay)
    exp_avg = exp_avg + (grad - exp_avg) * (1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = exp_avg_sq.sqrt() / bias_correction2**0.5 + eps
    return param - step_size * (exp_avg / denom), exp_avg, exp_avg_sq


def sgd_update(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Tensor | None,
    *,
    lr: Scalar,
    momentum: Scalar,
    nesterov: bool,
    weight_decay: Scalar,
) -> tuple[Tensor, Tensor | None]:
    """One SGD step with L2 weight decay and (Nesterov) momentum, no dampening.

    The buffer starts at zero, so the first step's buffer is the gradient, as in torch.
    """
    grad = grad + weight_decay * param
    if momentum_buffer is not None:
        momentum_buffer = momentum_buffer * momentum + grad
        grad = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    return param - lr * grad, momentum_buffer


def apply_update(
    optimizer: str, nesterov: bool, param: Tensor, grad: Tensor, slots: Mapping[str, Tensor],
    hyper: Mapping[str, Scalar],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Update one parameter; ``slots`` and ``hyper`` as :class:`OptimizerSpec` names them.

    The torch learner calls it with Python numbers, the exported train-step graph with 0-d
    tensor inputs: one definition for both backends.
    """
    if optimizer == "adamw":
        new, exp_avg, exp_avg_sq = adamw_update(
            param, grad, slots["exp_avg"], slots["exp_avg_sq"], step=hyper["step"],
            lr=hyper["lr"], beta1=hyper["beta1"], beta2=hyper["beta2"], eps=hyper["eps"],
            weight_decay=hyper["weight_decay"],
        )
        return new, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    new, buffer = sgd_update(param, grad, slots["momentum_buffer"], lr=hyper["lr"],
                             momentum=hyper["momentum"], nesterov=nesterov,
                             weight_decay=hyper["weight_decay"])
    return new, {"momentum_buffer": buffer}
