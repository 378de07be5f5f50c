"""Adaptation data: what the server sends a client for one batch. Torch-free.

For every adapted layer the client needs the rows ``x`` that entered the layer and the gradient
``d = dL/dh`` at its output. Two lossless savings are built into the shape:

- rows whose ``d`` is exactly zero (padding, or tokens the loss never sees) carry no gradient and
  are dropped;
- layers that read the same input tensor (BERT's ``query`` and ``value``) share one ``x``; each
  layer then names the rows of that shared ``x`` it uses.

A convolution's ``x`` and ``d`` are kept compact, 4-D (``[B, C_in, H, W]`` and
``[B, C_out, H', W']``, see :mod:`cola_fed.gl.layer_data`); its "rows" are then samples.

A layer whose adapter family learns from the weight-space gradient alone (Linear, Low Rank) may
instead carry ``G = d^T x`` (``[d_out, d_in]``) and the column sums of ``d`` (``[d_out]``): exact,
and smaller than the rows whenever there are more rows than ``d_in * d_out / (d_in + d_out)``
(:mod:`cola_fed.gl.weight_gradient`). Smaller still, and for every family, a layer may carry the
gradient of the node's own adapter parameters, computed by the server at the adapters it holds
and marked with their digest (:mod:`cola_fed.gl.parameter_gradient`).

Arrays are torch tensors on the server and numpy arrays after the wire; both index alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AdaptationData:
    """Per adapted layer ``(x [n, d_in], d [n, d_out])`` of one client's batch, stored compactly
    (a convolution's ``(x [B, C_in, H, W], d [B, C_out, H', W'])``, indexed by sample).

    Attributes
    ----------
    inputs : dict
        Shared input rows, keyed by the first layer (in model order) that reads them.
    grads : dict
        Per layer, the adaptation gradient rows ``d``.
    input_of : dict
        Per layer, the key of its rows in ``inputs``.
    rows : dict
        Per layer, integer indices into ``inputs[input_of[layer]]`` matching the rows of
        ``grads[layer]``, or ``None`` when the layer uses every shared row in order.
    loss : float
        The client's mean loss on this batch (at the adapters the server ran with).
    num_samples : int
        Number of samples of the client's batch.
    weight_grads : dict
        Per layer carried in weight-space form instead of rows, ``(G [d_out, d_in], g_bias
        [d_out])``: ``G = d^T x`` over the layer's rows and ``g_bias`` the sum of its ``d``.
    param_grads : dict
        Per layer carried as its adapter's parameter gradient, ``{param: array}``.
    param_at : dict
        Per layer in ``param_grads``, the digest of the adapter parameters the gradient was
        computed at (:func:`cola_fed.gl.parameter_gradient.digest`).
    """

    inputs: dict[str, Any]
    grads: dict[str, Any]
    input_of: dict[str, str]
    rows: dict[str, Any | None] = field(default_factory=dict)
    loss: float = float("nan")
    num_samples: int = 0
    weight_grads: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    param_grads: dict[str, dict[str, Any]] = field(default_factory=dict)
    param_at: dict[str, str] = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        """Every layer this chunk carries, in any form."""
        return [*self.grads, *self.weight_grads, *self.param_grads]

    @property
    def row_layers(self) -> list[str]:
        """The layers carried as rows ``(x, d)``."""
        return list(self.grads)

    def layer(self, name: str) -> tuple[Any, Any]:
        """``(x, d)`` of one layer, with the shared input rows gathered."""
        x = self.inputs[self.input_of[name]]
        rows = self.rows.get(name)
        return (x if rows is None else x[rows]), self.grads[name]

    def num_values(self) -> int:
        """Floats carried (the size that matters on the wire), whatever the arrays' ndim."""
        arrays = [*self.inputs.values(), *self.grads.values(),
                  *(a for pair in self.weight_grads.values() for a in pair),
                  *(a for grads in self.param_grads.values() for a in grads.values())]
        return sum(math.prod(int(n) for n in a.shape) for a in arrays)

    def num_rows(self, name: str) -> int:
        """Rows of ``d`` of one layer (samples, for a convolution)."""
        return int(self.grads[name].shape[0])
