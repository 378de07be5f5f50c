"""The client side of ColA in PyTorch: a :class:`~cola_fed.gl.learner_base.LearnerBase` whose
step is each adapter's closed-form VJP and the functional optimizer update (``cola_fed.gl.optim``)
run eagerly in torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cola_fed.adapters.base import Adapter
from cola_fed.adapters.registry import build_adapter
from cola_fed.errors import ConfigError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layout import Layout, SpecLike
from cola_fed.gl.learner_base import (
    LayerInputs,
    LayerStep,
    LearnerBase,
    ParameterGradient,
    WeightGradient,
)
from cola_fed.gl.optim import apply_update
from cola_fed.gl.optim_spec import OptimizerSpec

Tensor = torch.Tensor
NestedTensors = dict[str, dict[str, Tensor]]


class GradientLearner(LearnerBase):
    """A client's auxiliary models and their optimizer, trained from adaptation data in torch.

    Parameters
    ----------
    layout : Layout
        The adapted layers (``ServerEngine.layout``).
    spec : AdapterSpec or mapping
        One adapter spec for every layer, or a mapping of layer selectors to specs (see
        :func:`cola_fed.gl.layout.assign_specs`); layers no selector picks are not adapted.
    optimizer : str or OptimizerSpec
        ``"adamw"`` or ``"sgd"``, configured by the keyword arguments below, or a full spec.
    lr, weight_decay : float
        Learning rate and weight decay (ignored when ``optimizer`` is an ``OptimizerSpec``).
    seed : int
        Seeds the adapters' initialisation (shared with the ONNX Runtime learner): the same seed
        gives the same adapters.
    interval : int
        Adaptation interval ``I``: buffer ``I`` chunks of adaptation data, then take one step on
        their concatenation (the sum of the per-chunk gradients at the stale weights).
    dtype : torch.dtype
        ``torch.float32`` or ``torch.float64`` (for exactness checks): of adapters, optimizer
        state and the rows a step sees.
    **optimizer_options
        Further :class:`OptimizerSpec` fields: ``betas``, ``eps``, ``momentum``, ``nesterov``,
        ``warmup_steps``, ``total_steps``, ``max_grad_norm``.
    """

    def __init__(
        self,
        layout: Layout,
        spec: SpecLike,
        optimizer: str | OptimizerSpec = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        seed: int = 0,
        interval: int = 1,
        dtype: torch.dtype = torch.float32,
        **optimizer_options: Any,
    ) -> None:
        if isinstance(optimizer, OptimizerSpec):
            if optimizer_options:
                raise ConfigError("pass optimizer options inside the OptimizerSpec, not both")
        else:
            optimizer = OptimizerSpec(name=optimizer, lr=lr, weight_decay=weight_decay,
                                      **optimizer_options)
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        super().__init__(layout, spec, optimizer, seed=seed, interval=interval,
                         dtype=np.float32 if dtype == torch.float32 else np.float64)
        self.torch_dtype = dtype
        self._adapters: dict[str, Adapter] = {n: build_adapter(s) for n, s in self.specs.items()}
        self._grads: dict[str, dict[str, Tensor]] = {}  # per layer, during one step only

    def adapter_state(self) -> NestedTensors:
        """``{layer name: {param name: tensor}}``: the only thing a client ever returns."""
        return {n: {p: torch.from_numpy(v) for p, v in ps.items()}
                for n, ps in super().adapter_state().items()}

    def gradient(self, data: AdaptationData) -> NestedTensors:
        """The Gradient Learning gradient of one chunk at the current weights (no step taken)."""
        self._check_chunk(data)
        return {name: self._gradient(name, self._inputs(name, [data]))
                for name in self._params if name in data.layer_names}

    def _gradient(self, name: str, inputs: LayerInputs) -> dict[str, Tensor]:
        if isinstance(inputs, ParameterGradient):
            return {p: _tensor(g) for p, g in inputs.grads.items()}
        params = {p: torch.from_numpy(v) for p, v in self._params[name].items()}
        if isinstance(inputs, WeightGradient):
            return self._adapters[name].vjp_weight(params, _tensor(inputs.g),
                                                   _tensor(inputs.g_bias))
        return self._adapters[name].vjp(params, _tensor(inputs.x), _tensor(inputs.d))

    def _take_step(self, buffered: list[AdaptationData]) -> dict[str, float]:
        try:
            return super()._take_step(buffered)
        finally:
            self._grads = {}

    def _step_layer(self, name: str, inputs: LayerInputs, hyper: Mapping[str, float],
                    grad_scale: float) -> LayerStep:
        if name not in self._grads:  # a clipping step asks twice; compute the gradient once
            self._grads[name] = self._gradient(name, inputs)
        grads = self._grads[name]
        norm = float(torch.sqrt(sum((g * g).sum() for g in grads.values())))
        params, slots = {}, {}
        for pname, grad in grads.items():
            if grad_scale != 1.0:
                grad = grad * grad_scale
            new, new_slots = apply_update(
                self.optimizer.name, self.optimizer.nesterov,
                torch.from_numpy(self._params[name][pname]), grad,
                {s: torch.from_numpy(v) for s, v in self._slots[name][pname].items()}, hyper)
            params[pname] = new.numpy()
            slots[pname] = {s: v.numpy() for s, v in new_slots.items()}
        return params, slots, norm


def _tensor(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory; read-only arrays (decoded in place from the wire)
    are copied, as torch tensors must own writable memory."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())
