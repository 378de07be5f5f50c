"""The Low Rank family's torch operations: ``g(x) = x A^T B^T``, its VJP and ``delta W = B A``."""

from __future__ import annotations

import torch

from cola_fed.adapters.base import Adapter, Params


class LowRankAdapter(Adapter):

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return (x @ params["A"].T) @ params["B"].T

    def vjp(self, params: Params, x: torch.Tensor, d: torch.Tensor) -> Params:
        u = x @ params["A"].T  # [n, r]
        return {"A": (d @ params["B"]).T @ x, "B": d.T @ u}

    def vjp_weight(self, params: Params, g: torch.Tensor, g_bias: torch.Tensor) -> Params:
        return {"A": params["B"].T @ g, "B": g @ params["A"].T}

    def delta_weight(self, params: Params) -> tuple[torch.Tensor, torch.Tensor | None]:
        return params["B"] @ params["A"], None
