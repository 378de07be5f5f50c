"""Linear adapter: ``g(x) = x W^T (+ b)``, zero-initialised.

ColA Linear is full fine-tuning of the targeted matrices; with a bias it also adapts a frozen
task head.
"""

from __future__ import annotations

import torch

from cola_fed.adapters.base import Adapter, Params


class LinearAdapter(Adapter):
    kind = "linear"

    def param_shapes(self, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"weight": (d_out, d_in)}
        if self.spec.bias:
            shapes["bias"] = (d_out,)
        return shapes

    def init(
        self, d_in: int, d_out: int, *, generator: torch.Generator, dtype: torch.dtype
    ) -> Params:
        return {name: torch.zeros(shape, dtype=dtype) for name, shape in
                self.param_shapes(d_in, d_out).items()}

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        out = x @ params["weight"].T
        return out + params["bias"] if "bias" in params else out

    def vjp(self, params: Params, x: torch.Tensor, d: torch.Tensor) -> Params:
        grads = {"weight": d.T @ x}
        if "bias" in params:
            grads["bias"] = d.sum(0)
        return grads

    def delta_weight(self, params: Params) -> tuple[torch.Tensor, torch.Tensor | None]:
        return params["weight"], params.get("bias")
