"""Export one Gradient Learning train step as a plain ONNX graph.

The graph is built from the same functional definitions the torch learner runs — the adapter's
closed-form VJP (``cola_fed.adapters``) and the optimizer update (``cola_fed.gl.optim``) — so the
two cannot drift apart. Contract (every hyper-parameter a graph input, so nothing is folded):

    inputs : params..., slots..., x [N, d_in], d [N, d_out],
             lr, step, beta1, beta2, eps, weight_decay, momentum, grad_scale   (float32 scalars)
    outputs: params'..., slots'..., grad_norm     (this layer's gradient norm, before grad_scale)

A weight-space graph (``GraphKey.form = "weight-gradient"``, for families that learn from it)
takes ``g [d_out, d_in]`` and ``g_bias [d_out]`` in place of ``x`` and ``d``; a parameter-gradient
graph (``"parameter-gradient"``) takes ``grad.<param>`` per parameter, the gradient itself, and
only updates. Both are otherwise the same.

Exported with ``torch.onnx.export(dynamo=True, optimize=False)``: the onnxscript optimizer's
``x + 0`` rule also removes ``+ 1e-8`` and so drops Adam's epsilon (see docs), hence no optimize.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable

import torch
from torch import nn

from cola_fed.adapters.registry import build_adapter
from cola_fed.edge.graphs import HYPER, GraphKey, content_hash, slot_names
from cola_fed.gl.optim import apply_update


class TrainStep(nn.Module):
    """One optimizer step of one adapter on one chunk of adaptation data."""

    def __init__(self, key: GraphKey) -> None:
        super().__init__()
        self.key = key
        self.adapter = build_adapter(key.spec)
        self.param_names = list(self.adapter.param_shapes(key.d_in, key.d_out))
        self.slots = slot_names(key.optimizer)
        self.form = key.form

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_params, n_slots = len(self.param_names), len(self.param_names) * len(self.slots)
        params = dict(zip(self.param_names, inputs[:n_params]))
        slots = inputs[n_params:n_params + n_slots]
        n_data = len(self.data_names())
        data = inputs[n_params + n_slots:n_params + n_slots + n_data]
        hyper = dict(zip(HYPER, inputs[n_params + n_slots + n_data:]))
        if self.form == "parameter-gradient":
            grads = dict(zip(self.param_names, data))
        elif self.form == "weight-gradient":
            grads = self.adapter.vjp_weight(params, *data)
        else:
            grads = self.adapter.vjp(params, *data)
        norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
        new_params, new_slots = [], []
        for i, name in enumerate(self.param_names):
            own = dict(zip(self.slots, slots[i * len(self.slots):(i + 1) * len(self.slots)]))
            new, updated = apply_update(self.key.optimizer, self.key.nesterov, params[name],
                                        grads[name] * hyper["grad_scale"], own, hyper)
            new_params.append(new)
            new_slots += [updated[s] for s in self.slots]
        return (*new_params, *new_slots, norm)

    def data_names(self) -> list[str]:
        """The adaptation data inputs of this graph's form."""
        if self.form == "parameter-gradient":
            return [f"grad.{p}" for p in self.param_names]
        return ["g", "g_bias"] if self.form == "weight-gradient" else ["x", "d"]

    def input_names(self) -> list[str]:
        slots = [f"{p}.{s}" for p in self.param_names for s in self.slots]
        return [*self.param_names, *slots, *self.data_names(), *HYPER]

    def output_names(self) -> list[str]:
        slots = [f"{p}.{s}" for p in self.param_names for s in self.slots]
        return [f"new.{n}" for n in [*self.param_names, *slots]] + ["grad_norm"]

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        shapes = self.adapter.param_shapes(self.key.d_in, self.key.d_out)
        params = [torch.zeros(shapes[n]) for n in self.param_names]
        slots = [torch.zeros(shapes[n]) for n in self.param_names for _ in self.slots]
        if self.form == "parameter-gradient":
            data = [torch.zeros(shapes[n]) for n in self.param_names]
        elif self.form == "weight-gradient":
            data = [torch.zeros(self.key.d_out, self.key.d_in), torch.zeros(self.key.d_out)]
        else:
            data = [torch.zeros(3, self.key.d_in), torch.zeros(3, self.key.d_out)]
        hyper = [torch.tensor(v, dtype=torch.float32)
                 for v in (1e-3, 1.0, 0.9, 0.999, 1e-8, 0.0, 0.0, 1.0)]
        return (*params, *slots, *data, *hyper)


@functools.lru_cache(maxsize=64)
def export_train_step(key: GraphKey) -> bytes:
    """The ONNX bytes of one train step, rows dynamic (deterministic; cached per process)."""
    import warnings

    step = TrainStep(key)
    example = step.example_inputs()
    rows = torch.export.Dim("rows", min=1)
    n_params = len(step.param_names) * (1 + len(step.slots))
    data = [{0: rows}, {0: rows}] if key.form == "rows" else [None] * len(step.data_names())
    dynamic = tuple([None] * n_params + data + [None] * len(HYPER))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(step, example, dynamo=True, optimize=False,
                                    input_names=step.input_names(),
                                    output_names=step.output_names(),
                                    dynamic_shapes=(dynamic,), verbose=False)
    program.save(buffer)
    return buffer.getvalue()


def export_graphs(keys: Iterable[GraphKey]) -> dict[str, bytes]:
    """``name -> ONNX bytes`` for every key."""
    return {key.name: export_train_step(key) for key in keys}


__all__ = ["TrainStep", "content_hash", "export_graphs", "export_train_step"]
