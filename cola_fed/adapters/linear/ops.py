"""The Linear family's torch operations: ``g(x) = x W^T (+ b)``, its VJP and ``delta W = W``."""

from __future__ import annotations

import torch

from cola_fed.adapters.base import Adapter, Params


class LinearAdapter(Adapter):

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        out = x @ params["weight"].T
        return out + params["bias"] if "bias" in params else out

    def vjp(self, params: Params, x: torch.Tensor, d: torch.Tensor) -> Params:
        grads = {"weight": d.T @ x}
        if "bias" in params:
            grads["bias"] = d.sum(0)
        return grads

    def vjp_weight(self, params: Params, g: torch.Tensor, g_bias: torch.Tensor) -> Params:
        return {"weight": g, **({"bias": g_bias} if "bias" in params else {})}

    def delta_weight(self, params: Params) -> tuple[torch.Tensor, torch.Tensor | None]:
        return params["weight"], params.get("bias")
