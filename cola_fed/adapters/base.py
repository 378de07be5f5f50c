"""The torch operations every auxiliary-model family supplies.

An adapter is a pure function ``g(x; params)`` on rows ``x [n, d_in] -> [n, d_out]`` with:

- ``init``: initial parameters, such that ``g`` is identically zero (the adapted model starts
  as the base model);
- ``forward``: the output, also used inside the server's forward pass (unmerged mode);
- ``vjp``: the closed-form vector-Jacobian product ``sum_i d_i^T dg(x_i)/dparams``. With ``d`` the
  adaptation gradient dL/dh this *is* the Gradient Learning gradient, equal to backprop's;
- ``delta_weight`` (mergeable kinds only): the ``(dW [d_out, d_in], db | None)`` that folds ``g``
  into the frozen layer.

Parameters are plain ``{name: tensor}`` dicts so that they travel, serialise and export without
any ``nn.Module`` machinery.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from cola_fed.adapters.registry import family_of
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.errors import AdapterError

Params = dict[str, torch.Tensor]


class Adapter(ABC):
    """The torch operations of one auxiliary-model family, configured by an
    :class:`AdapterSpec`; shapes and initial values come from the family's torch-free
    description (:class:`cola_fed.adapters.family.AdapterFamily`)."""

    def __init__(self, spec: AdapterSpec) -> None:
        self.spec = spec
        self.family = family_of(spec.kind)
        self.kind = spec.kind

    def param_shapes(self, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter for a layer mapping ``d_in`` to ``d_out`` features."""
        return self.family.param_shapes(self.spec, d_in, d_out)

    def init(
        self, d_in: int, d_out: int, *, rng: np.random.Generator, dtype: torch.dtype
    ) -> Params:
        """Fresh parameters whose output is exactly zero (drawn by the family's torch-free
        ``init``, so both backends start alike)."""
        return {name: torch.from_numpy(value).to(dtype)
                for name, value in self.family.init(self.spec, d_in, d_out, rng).items()}

    @abstractmethod
    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``g(x)`` for ``x [..., d_in]``."""

    @abstractmethod
    def vjp(self, params: Params, x: torch.Tensor, d: torch.Tensor) -> Params:
        """``sum_i d_i^T dg(x_i)/dparams`` for rows ``x [n, d_in]`` and ``d [n, d_out]``."""

    def vjp_weight(self, params: Params, g: torch.Tensor, g_bias: torch.Tensor) -> Params:
        """The same gradient as :meth:`vjp`, from the weight-space gradient ``G = d^T x``
        (``[d_out, d_in]``) and the sum of ``d``'s rows; only for families that declare
        ``weight_gradient``."""
        raise AdapterError(f"a {self.kind!r} adapter does not learn from the weight-space "
                           "gradient; send it rows")

    def delta_weight(self, params: Params) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(dW, db)`` such that ``g(x) = x @ dW.T + db``; only for mergeable kinds."""
        raise AdapterError(
            f"a {self.kind!r} adapter is not linear in x and cannot be merged; "
            "use unmerged mode or a mergeable family such as 'lowrank' or 'linear'"
        )

    def check(self, params: Params, d_in: int, d_out: int, where: str) -> None:
        """Raise :class:`AdapterError` unless ``params`` has exactly this layer's shapes."""
        expected = self.param_shapes(d_in, d_out)
        if set(params) != set(expected):
            raise AdapterError(
                f"{where}: a {self.kind!r} adapter has parameters {sorted(expected)}, "
                f"got {sorted(params)}"
            )
        for name, shape in expected.items():
            got = tuple(params[name].shape)
            if got != shape:
                raise AdapterError(
                    f"{where}: parameter {name!r} of a {self.kind!r} adapter must have shape "
                    f"{shape} for a {d_in} -> {d_out} layer, got {got}"
                )

