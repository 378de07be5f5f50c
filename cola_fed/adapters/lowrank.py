"""Low Rank adapter: ``g(x) = x A^T B^T`` with ``A [r, d_in]``, ``B [d_out, r]``, scale 1.

Initialised as PEFT's LoRA (A kaiming-uniform, B zero), so ColA Low Rank with r = 8 is LoRA with
``r = 8, lora_alpha = 8``.
"""

from __future__ import annotations

import torch

from cola_fed.adapters.base import Adapter, Params


class LowRankAdapter(Adapter):
    kind = "lowrank"

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return (x @ params["A"].T) @ params["B"].T

    def vjp(self, params: Params, x: torch.Tensor, d: torch.Tensor) -> Params:
        u = x @ params["A"].T  # [n, r]
        return {"A": (d @ params["B"]).T @ x, "B": d.T @ u}

    def delta_weight(self, params: Params) -> tuple[torch.Tensor, torch.Tensor | None]:
        return params["B"] @ params["A"], None
