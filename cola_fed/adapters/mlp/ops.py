"""The MLP family's torch operations; its VJP is the chain rule written out, with each
activation's derivative in closed form."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cola_fed.adapters.base import Adapter, Params

Activation = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


#: activation name -> (function, derivative), both of the pre-activation ``z``.
ACTIVATIONS: dict[str, Activation] = {
    "relu": (torch.relu, lambda z: (z > 0).to(z.dtype)),
    "gelu": (torch.nn.functional.gelu, _gelu_grad),
    "tanh": (torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2),
    "silu": (torch.nn.functional.silu, _silu_grad),
}


class MLPAdapter(Adapter):

    @property
    def _num_layers(self) -> int:
        return self.spec.depth + 1

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.spec.activation][0]
        h = x
        for i in range(self._num_layers):
            h = h @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
            if i < self._num_layers - 1:
                h = act(h)
        return h

    def vjp(self, params: Params, x: torch.Tensor, d: torch.Tensor) -> Params:
        act, act_grad = ACTIVATIONS[self.spec.activation]
        inputs, pre = [x], []  # input of each layer, pre-activation of each hidden layer
        h = x
        for i in range(self._num_layers - 1):
            z = h @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
            pre.append(z)
            h = act(z)
            inputs.append(h)
        grads: Params = {}
        delta = d
        for i in reversed(range(self._num_layers)):
            grads[f"fc{i}.weight"] = delta.T @ inputs[i]
            grads[f"fc{i}.bias"] = delta.sum(0)
            if i > 0:
                delta = (delta @ params[f"fc{i}.weight"]) * act_grad(pre[i - 1])
        return grads
