"""The client side of ColA on plain ONNX Runtime: numpy and onnxruntime only, no torch.

A :class:`~cola_fed.gl.learner_base.LearnerBase` whose step is the exported train-step graph of
each layer (``cola_fed.edge.export``): the same initial adapters for the same seed, the same
interval, schedule, clipping, chunk checks and state format as the PyTorch learner, because they
are the same code.

A graph both computes a layer's gradient and steps, so clipping (which needs the global norm
before any layer steps) runs every graph at ``grad_scale = 1``, which also returns each layer's
norm, and runs them again at the clipping coefficient only on the steps that clip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cola_fed.edge.graphs import GraphKey
from cola_fed.errors import AdapterError, ConfigError
from cola_fed.gl.layout import Layout, SpecLike
from cola_fed.gl.learner_base import LayerInputs, LayerStep, LearnerBase, WeightGradient
from cola_fed.gl.optim_spec import OptimizerSpec


class OrtLearner(LearnerBase):
    """A client's adapters trained by exported train-step graphs in ONNX Runtime.

    Parameters
    ----------
    layout : Layout
        The adapted layers.
    spec : AdapterSpec or mapping
        As for ``GradientLearner``.
    optimizer : OptimizerSpec
        Optimizer, schedule and clipping.
    graphs : mapping
        ``GraphKey.name`` -> ONNX model bytes, for every (family, layer shape, optimizer) used.
    seed : int
        Seeds the adapters' initialisation exactly as ``GradientLearner``'s seed does.
    initial_state : mapping, optional
        ``{layer: {param: array}}``: adapters to start from instead of the seeded ones.
    interval : int
        Adaptation interval I.
    threads : int
        ONNX Runtime intra-op threads (1-2 on phones).
    graph_format : str
        ``"onnx"`` (default; what a federation ships and ``graph_check`` checks) or ``"ort"``
        for ORT-format graphs exported on the device's own side (``cola-fed export-edge
        --ort``). Sessions read only that format: bytes of the other never run.
    """

    def __init__(self, layout: Layout, spec: SpecLike, optimizer: OptimizerSpec,
                 graphs: Mapping[str, bytes], *, seed: int = 0,
                 initial_state: Mapping[str, Mapping[str, Any]] | None = None,
                 interval: int = 1, threads: int = 1, graph_format: str = "onnx") -> None:
        import onnxruntime as ort

        if graph_format not in ("onnx", "ort"):
            raise ConfigError(f"graph_format: expected 'onnx' or 'ort', got {graph_format!r}")
        super().__init__(layout, spec, optimizer, seed=seed, initial_state=initial_state,
                         interval=interval, dtype=np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # small devices: no pre-allocated arena, no memory-pattern planning across runs
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        # one format only: an ORT-format model among ONNX graphs would escape the graph checks
        options.add_session_config_entry("session.load_model_format", graph_format.upper())
        by_graph: dict[str, Any] = {}  # layers of one shape and kind share one session
        self._sessions: dict[tuple[str, str], Any] = {}  # (layer, form) -> session
        for name, layer_spec in self.specs.items():
            info = layout[name]
            for form in ("rows", "weight-gradient"):
                key = GraphKey(layer_spec, info.d_in, info.d_out, optimizer.name,
                               optimizer.nesterov, form)
                if key.name not in graphs:
                    if form == "rows":
                        raise ConfigError(f"no train-step graph {key.name!r} for layer {name!r}")
                    continue  # this node then takes rows only for the layer
                if key.name not in by_graph:
                    by_graph[key.name] = ort.InferenceSession(
                        graphs[key.name], options, providers=["CPUExecutionProvider"])
                    self._check_graph(name, key.name, by_graph[key.name])
                self._sessions[name, form] = by_graph[key.name]

    def _check_graph(self, layer: str, graph: str, session: Any) -> None:
        """Refuse a graph whose parameter inputs are not the family's shapes for ``layer``."""
        expected = {p: list(shape) for p, shape in self._shapes[layer].items()}
        got = {i.name: list(i.shape) for i in session.get_inputs() if i.name in expected}
        if got != expected:
            raise AdapterError(f"graph {graph!r}: parameter inputs {got}, layer {layer!r} "
                               f"needs {expected}")

    def _takes_weight_gradient(self, name: str) -> bool:
        return (name, "weight-gradient") in self._sessions

    def _step_layer(self, name: str, inputs: LayerInputs, hyper: Mapping[str, float],
                    grad_scale: float) -> LayerStep:
        feeds = {k: np.asarray(v, dtype=np.float32) for k, v in hyper.items()}
        feeds["grad_scale"] = np.asarray(grad_scale, dtype=np.float32)
        if isinstance(inputs, WeightGradient):  # checked at fit: this node has its graph
            session = self._sessions[name, "weight-gradient"]
            feeds["g"], feeds["g_bias"] = inputs.g, inputs.g_bias
        else:
            session = self._sessions[name, "rows"]
            feeds["x"], feeds["d"] = inputs.x, inputs.d
        for p, value in self._params[name].items():
            feeds[p] = value
            for s, slot in self._slots[name][p].items():
                feeds[f"{p}.{s}"] = slot
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(names, feeds)))
        params = {p: out[f"new.{p}"] for p in self._params[name]}
        slots = {p: {s: out[f"new.{p}.{s}"] for s in self._slots[name][p]}
                 for p in self._params[name]}
        return params, slots, float(out["grad_norm"])
