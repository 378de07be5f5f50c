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
    """Zero optimizer state for one parameter."""
    if spec.name == "adamw":
        return {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}
    if spec.momentum > 0:
        return {"momentum_buffer": torch.zeros_like(param)}
    return {}


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


def global_grad_norm(grads: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
    """L2 norm over every gradient of every layer (``torch.nn.utils.clip_grad_norm_``'s norm)."""
    norms = [g.norm() for layer in grads.values() for g in layer.values()]
    return torch.stack(norms).norm() if norms else torch.tensor(0.0)


def clip_coefficient(norm: Tensor, max_norm: Scalar) -> Tensor:
    """Scale factor of ``clip_grad_norm_``: ``min(1, max_norm / (norm + 1e-6))``."""
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def apply_update(
    spec: OptimizerSpec, param: Tensor, grad: Tensor, slots: dict[str, Tensor], *, step: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """Update one parameter with ``spec``'s optimizer at the scheduled learning rate."""
    lr = spec.lr_at(step)
    if spec.name == "adamw":
        new, exp_avg, exp_avg_sq = adamw_update(
            param, grad, slots["exp_avg"], slots["exp_avg_sq"], step=step, lr=lr,
            beta1=spec.betas[0], beta2=spec.betas[1], eps=spec.eps,
            weight_decay=spec.weight_decay,
        )
        return new, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    new, buffer = sgd_update(
        param, grad, slots.get("momentum_buffer"), lr=lr, momentum=spec.momentum,
        nesterov=spec.nesterov, weight_decay=spec.weight_decay,
    )
    return new, ({} if buffer is None else {"momentum_buffer": buffer})
