"""The client side of ColA in PyTorch: adapters, optimizer state, and the Gradient Learning step.

Gradient Learning regresses each adapter onto "its current output minus the gradient":

    l_GL(w) = 1/2 sum_i || g(x_i; w) - stopgrad(g(x_i; w_t) - d_i) ||^2

whose gradient at ``w = w_t`` is ``sum_i d_i^T dg(x_i)/dw``, exactly the parameter gradient that
backpropagation through the full model would give. The learner computes that gradient in closed
form (the adapter's VJP) and takes one optimizer step per adaptation interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cola_fed.adapters.base import Adapter
from cola_fed.adapters.init import initial_state
from cola_fed.adapters.registry import build_adapter
from cola_fed.errors import AdapterError, ConfigError, GradientError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layout import Layout, SpecLike, assign_specs
from cola_fed.gl.learner_state import state_from_bytes, state_to_bytes
from cola_fed.gl.optim import apply_update, clip_coefficient, global_grad_norm, init_slots
from cola_fed.gl.optim_spec import OptimizerSpec

Tensor = torch.Tensor
NestedTensors = dict[str, dict[str, Tensor]]


class GradientLearner:
    """A client's auxiliary models and their optimizer, trained from adaptation data.

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
        Seeds the adapters' initialisation (:func:`cola_fed.adapters.init.initial_state`, shared
        with the ONNX Runtime learner): the same seed gives the same adapters.
    interval : int
        Adaptation interval ``I``: buffer ``I`` chunks of adaptation data, then take one step on
        their concatenation (the sum of the per-chunk gradients at the stale weights).
    dtype : torch.dtype
        Dtype of adapters and optimizer state (float32; float64 for exactness checks).
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
            self.optimizer = optimizer
        else:
            self.optimizer = OptimizerSpec(
                name=optimizer, lr=lr, weight_decay=weight_decay, **optimizer_options
            )
        if not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"interval: expected a positive integer, got {interval!r}")
        self.layout = layout
        self.specs = assign_specs(layout, spec)
        self.interval = interval
        self.dtype = dtype
        self.step = 0
        self._adapters: dict[str, Adapter] = {n: build_adapter(s) for n, s in self.specs.items()}
        self._params: NestedTensors = {
            name: {p: torch.from_numpy(v).to(dtype) for p, v in params.items()}
            for name, params in initial_state(layout, self.specs, seed).items()
        }
        self._slots: dict[str, dict[str, dict[str, Tensor]]] = {
            name: {p: init_slots(self.optimizer, t) for p, t in params.items()}
            for name, params in self._params.items()
        }
        self._buffer: list[dict[str, tuple[Tensor, Tensor]]] = []

    # ----------------------------------------------------------------------------------------

    def adapter_state(self) -> NestedTensors:
        """``{layer name: {param name: tensor}}``: the only thing a client ever returns."""
        return {name: {p: t.clone() for p, t in params.items()}
                for name, params in self._params.items()}

    def load_adapter_state(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the adapters' weights (shapes checked); optimizer state is kept."""
        new = self._checked_params(state)
        self._params = new

    def fit(self, data: AdaptationData) -> dict[str, float]:
        """Buffer one chunk of adaptation data; every ``interval`` chunks, take one step.

        Returns metrics: ``stepped`` (1.0 when a step was taken), ``grad_norm`` (the global norm
        of the Gradient Learning gradient, before clipping), ``lr``, ``rows`` and ``loss``.
        """
        chunk = self._checked_chunk(data)
        self._buffer.append(chunk)
        metrics = {"stepped": 0.0, "rows": float(sum(d.shape[0] for _, d in chunk.values())),
                   "loss": float(data.loss)}
        if len(self._buffer) < self.interval:
            return metrics
        grads = self._gl_gradient(self._buffer)
        self._buffer = []
        metrics.update(self._apply(grads))
        return metrics

    def gradient(self, data: AdaptationData) -> NestedTensors:
        """The Gradient Learning gradient of one chunk at the current weights (no step taken)."""
        return self._gl_gradient([self._checked_chunk(data)])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimizer slots, step and buffered chunks."""
        return {
            "step": self.step,
            "params": self.adapter_state(),
            "slots": {n: {p: {k: v.clone() for k, v in s.items()} for p, s in slots.items()}
                      for n, slots in self._slots.items()},
            "buffer": [{n: (x.clone(), d.clone()) for n, (x, d) in chunk.items()}
                       for chunk in self._buffer],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; shapes are checked before anything changes."""
        try:
            params = self._checked_params(state["params"])
            slots = {
                n: {p: {k: torch.as_tensor(v).to(self.dtype) for k, v in s.items()}
                    for p, s in state["slots"][n].items()}
                for n in self._params
            }
            step = int(state["step"])
            buffer = [dict(chunk) for chunk in state.get("buffer", [])]
        except KeyError as err:
            raise AdapterError(f"learner state is missing {err}") from None
        for name, layer_slots in slots.items():
            for pname, pslots in layer_slots.items():
                expected = init_slots(self.optimizer, params[name][pname])
                if set(pslots) != set(expected) or any(
                    pslots[k].shape != expected[k].shape for k in expected
                ):
                    raise AdapterError(
                        f"learner state: optimizer slots of {name!r}/{pname!r} do not match "
                        f"a {self.optimizer.name!r} optimizer"
                    )
        self._params, self._slots, self.step, self._buffer = params, slots, step, buffer

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` as a safetensors blob (:mod:`cola_fed.gl.learner_state`; the ONNX
        Runtime learner reads and writes the same format)."""
        state = self.state_dict()
        return state_to_bytes({
            "step": state["step"],
            "params": _to_numpy(state["params"]),
            "slots": {n: _to_numpy(ps) for n, ps in state["slots"].items()},
            "buffer": [{n: (x.numpy(), d.numpy()) for n, (x, d) in chunk.items()}
                       for chunk in state["buffer"]],
        })

    def load_bytes(self, blob: bytes) -> None:
        """Restore a :meth:`to_bytes` blob (shapes checked as in :meth:`load_state_dict`)."""
        state = state_from_bytes(blob)
        state["buffer"] = [{n: (torch.from_numpy(x), torch.from_numpy(d))
                            for n, (x, d) in chunk.items()} for chunk in state["buffer"]]
        self.load_state_dict(state)

    # ----------------------------------------------------------------------------------------

    def _gl_gradient(self, chunks: list[dict[str, tuple[Tensor, Tensor]]]) -> NestedTensors:
        grads: NestedTensors = {}
        for name, adapter in self._adapters.items():
            parts = [chunk[name] for chunk in chunks if name in chunk]
            if not parts:
                continue
            x = torch.cat([x for x, _ in parts]) if len(parts) > 1 else parts[0][0]
            d = torch.cat([d for _, d in parts]) if len(parts) > 1 else parts[0][1]
            grads[name] = adapter.vjp(self._params[name], x, d)
        return grads

    def _apply(self, grads: NestedTensors) -> dict[str, float]:
        self.step += 1
        norm = global_grad_norm(grads)
        if self.optimizer.max_grad_norm is not None:
            coef = clip_coefficient(norm, self.optimizer.max_grad_norm)
            grads = {n: {p: g * coef for p, g in layer.items()} for n, layer in grads.items()}
        for name, layer_grads in grads.items():
            for pname, grad in layer_grads.items():
                new, slots = apply_update(
                    self.optimizer, self._params[name][pname], grad,
                    self._slots[name][pname], step=self.step,
                )
                self._params[name][pname] = new
                self._slots[name][pname] = slots
        return {"stepped": 1.0, "grad_norm": float(norm),
                "lr": self.optimizer.lr_at(self.step)}

    def _checked_chunk(self, data: AdaptationData) -> dict[str, tuple[Tensor, Tensor]]:
        unknown = set(data.layer_names) - set(self._params)
        if unknown:
            raise AdapterError(
                f"adaptation data for layers this learner does not adapt: {sorted(unknown)}"
            )
        chunk = {}
        for name in data.layer_names:
            x, d = (_tensor(a).to(self.dtype) for a in data.layer(name))
            info = self.layout[name]
            if x.ndim != 2 or d.ndim != 2 or x.shape != (d.shape[0], info.d_in) or (
                d.shape[1] != info.d_out
            ):
                raise GradientError(
                    f"layer {name!r}: expected x [n, {info.d_in}] and d [n, {info.d_out}], "
                    f"got x {list(x.shape)} and d {list(d.shape)}"
                )
            for label, value in (("x", x), ("d", d)):
                bad = int((~torch.isfinite(value)).sum())
                if bad:
                    raise GradientError(
                        f"layer {name!r}: {bad} non-finite values in {label}; "
                        "the chunk was rejected and the learner is unchanged"
                    )
            chunk[name] = (x, d)
        return chunk

    def _checked_params(self, state: Mapping[str, Mapping[str, Any]]) -> NestedTensors:
        if set(state) != set(self._params):
            raise AdapterError(
                f"adapter state has layers {sorted(state)}, this learner adapts "
                f"{sorted(self._params)}"
            )
        new: NestedTensors = {}
        for name, adapter in self._adapters.items():
            info = self.layout[name]
            params = {p: torch.as_tensor(t).to(self.dtype).clone() for p, t in state[name].items()}
            adapter.check(params, info.d_in, info.d_out, f"layer {name!r}")
            new[name] = params
        return new


def _tensor(value: Any) -> Tensor:
    """A tensor of ``value``; read-only numpy views (decoded in place from the wire) are copied,
    as torch tensors must own writable memory."""
    if isinstance(value, np.ndarray) and not value.flags.writeable:
        return torch.from_numpy(value.copy())
    return torch.as_tensor(value)


def _to_numpy(nested: Mapping[str, Mapping[str, Tensor]]) -> dict[str, dict[str, Any]]:
    return {k: {p: t.detach().cpu().numpy() for p, t in v.items()} for k, v in nested.items()}
