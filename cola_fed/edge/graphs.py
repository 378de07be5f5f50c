"""Names and keys of the exported train-step graphs, and whether a run needs them. Torch-free:
shared by the exporter, the server and the ONNX Runtime learner."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cola_fed.adapters.registry import family_of
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.gl.layout import Layout, SpecLike, assign_specs
from cola_fed.gl.optim_spec import HYPER_PARAMETERS, OptimizerSpec, slot_names

if TYPE_CHECKING:
    from cola_fed.config import RunConfig

#: the scalar hyper-parameter inputs of every train-step graph, in order: the optimizer's
#: (``OptimizerSpec.hyper``), then ``grad_scale``, which multiplies the gradient before the
#: update (1 = as is; global-norm clipping sets it).
HYPER = (*HYPER_PARAMETERS, "grad_scale")
#: a graph's name ends in its form's suffix
FORM_SUFFIX = {"rows": "", "weight-gradient": "-g", "parameter-gradient": "-p"}


@dataclass(frozen=True)
class GraphKey:
    """What one graph is specialised for: adapter family and size, layer shape, optimizer.

    A convolution's graph is its rows' graph (``d_in = in_channels * kh * kw``): the learner
    unfolds the compact data before the graph runs.
    """

    spec: AdapterSpec
    d_in: int
    d_out: int
    optimizer: str  # "adamw" or "sgd"
    nesterov: bool = False
    #: the adaptation data the graph takes: "rows" (x, d), "weight-gradient" (g, g_bias) or
    #: "parameter-gradient" (grad.<param>, one per parameter)
    form: str = "rows"

    @property
    def name(self) -> str:
        size = family_of(self.spec.kind).graph_tag(self.spec)
        opt = self.optimizer + ("-nesterov" if self.nesterov else "")
        form = FORM_SUFFIX[self.form]
        return f"{self.spec.kind}-{size}-{self.d_in}x{self.d_out}-{opt}{form}"


def graph_keys(layout: Layout, specs: Iterable[SpecLike], optimizer: OptimizerSpec,
               *, form: str = "rows") -> dict[str, GraphKey]:
    """``name -> key`` of every graph needed to train ``layout`` under any of ``specs`` (one
    per kind of node: e.g. ``Plan.all_specs()``) from the forms of adaptation data that
    ``wire.form = form`` may send: rows always; the parameter gradient under ``auto`` and
    ``parameter-gradient``; ``G`` under ``weight-gradient``, and under ``auto`` where it is
    smaller than the parameters (families that learn from it). ``form="all"``: every graph a
    node may be offered."""
    keys = {}
    for spec in specs:
        for layer, layer_spec in assign_specs(layout, spec).items():
            info = layout[layer]
            for key_form in _graph_forms(form, layer_spec, info.d_in, info.d_out):
                key = GraphKey(layer_spec, info.d_in, info.d_out, optimizer.name,
                               optimizer.nesterov, key_form)
                if keys.setdefault(key.name, key) != key:
                    raise ValueError(f"adapter family {layer_spec.kind!r}: two specs share the "
                                     f"graph name {key.name!r}; its graph_tag must tell them "
                                     "apart")
    return dict(sorted(keys.items()))


def _graph_forms(form: str, spec: AdapterSpec, d_in: int, d_out: int) -> list[str]:
    family = family_of(spec.kind)
    forms = ["rows"]
    if form in ("auto", "parameter-gradient", "all"):
        forms.append("parameter-gradient")
    if family.weight_gradient:
        parameters = sum(math.prod(s) for s in family.param_shapes(spec, d_in, d_out).values())
        if form in ("weight-gradient", "all") or (
                form == "auto" and d_out * (d_in + 1) < parameters):
            forms.append("weight-gradient")
    return forms


def content_hash(model: bytes) -> str:
    """SHA-256 of a graph's bytes, hex: how graphs are named in manifests and caches."""
    return hashlib.sha256(model).hexdigest()


__all__ = ["FORM_SUFFIX", "HYPER", "GraphKey", "content_hash", "graph_keys", "slot_names"]


def graphs_wanted(config: RunConfig, *, deployment: bool) -> bool:
    """Whether the server exports and ships the train-step graphs (``edge.graphs``).

    ``true`` and ``false`` decide alone. ``"auto"`` (the default) exports them only when some
    node may train on ONNX Runtime, since the export takes seconds per graph at every start:

    - in a simulation, the nodes run in the server's own environment, where PyTorch is
      installed, so a node trains on ONNX Runtime only when ``edge.backends`` says so: the
      graphs are wanted when it names ``onnx``;
    - in a deployment, each node chooses its backend in its own node config, which the server
      never sees (a device without PyTorch chooses ONNX Runtime), so they always are.

    Parameters
    ----------
    config : RunConfig
        The run's config.
    deployment : bool
        The nodes are Flower SuperNodes the server does not control (anything but Flower's
        simulation engine).
    """
    from cola_fed.config import per_partition_values

    graphs = config.edge.graphs
    if graphs != "auto":
        return bool(graphs)
    if deployment:
        return True
    return "onnx" in per_partition_values("edge.backends", config.edge.backends)
