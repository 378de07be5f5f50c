"""Names and keys of the exported train-step graphs. Torch-free: shared by the exporter and the
ONNX Runtime learner."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cola_fed.adapters.spec import AdapterSpec
from cola_fed.gl.layout import Layout, SpecLike, assign_specs
from cola_fed.gl.optim_spec import OptimizerSpec

#: the scalar hyper-parameter inputs of every train-step graph, in order. ``grad_scale``
#: multiplies the gradient before the update (1 = as is; global-norm clipping sets it).
HYPER = ("lr", "step", "beta1", "beta2", "eps", "weight_decay", "momentum", "grad_scale")


def slot_names(optimizer: str) -> tuple[str, ...]:
    """Optimizer state per parameter (SGD graphs always carry a momentum buffer)."""
    return ("exp_avg", "exp_avg_sq") if optimizer == "adamw" else ("momentum_buffer",)


@dataclass(frozen=True)
class GraphKey:
    """What one graph is specialised for: adapter family and size, layer shape, optimizer."""

    spec: AdapterSpec
    d_in: int
    d_out: int
    optimizer: str  # "adamw" or "sgd"
    nesterov: bool = False

    @property
    def name(self) -> str:
        s = self.spec
        size = {"lowrank": f"r{s.rank}", "linear": "bias" if s.bias else "nobias",
                "mlp": f"h{s.hidden}x{s.depth}g{s.growth}{s.activation}"}[s.kind]
        opt = self.optimizer + ("-nesterov" if self.nesterov else "")
        return f"{s.kind}-{size}-{self.d_in}x{self.d_out}-{opt}"


def graph_keys(layout: Layout, specs: Iterable[SpecLike],
               optimizer: OptimizerSpec) -> dict[str, GraphKey]:
    """``name -> key`` of every graph needed to train ``layout`` under any of ``specs`` (one
    per kind of node: e.g. ``Plan.all_specs()``)."""
    keys = {}
    for spec in specs:
        for layer, layer_spec in assign_specs(layout, spec).items():
            info = layout[layer]
            key = GraphKey(layer_spec, info.d_in, info.d_out, optimizer.name, optimizer.nesterov)
            keys[key.name] = key
    return dict(sorted(keys.items()))


def content_hash(model: bytes) -> str:
    """SHA-256 of a graph's bytes, hex: how graphs are named in manifests and caches."""
    return hashlib.sha256(model).hexdigest()
