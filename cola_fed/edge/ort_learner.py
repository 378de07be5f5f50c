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

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from cola_fed.edge.graphs import GraphKey
from cola_fed.errors import AdapterError, ConfigError
from cola_fed.gl.layout import Layout, SpecLike
from cola_fed.gl.learner_base import (
    LayerInputs,
    LayerStep,
    LearnerBase,
    ParameterGradient,
    WeightGradient,
)
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

    A graph's session is created, and its inputs checked, when a step first needs it, not
    here: a round runs only the graphs of the forms its data came in (often one of three),
    and each session costs memory and time on a small device. Layers of one shape and
    family share one session.
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
        graph_of: dict[tuple[str, str], str] = {}  # (layer, form) -> graph name
        for name, layer_spec in self.specs.items():
            info = layout[name]
            for form in ("rows", "weight-gradient", "parameter-gradient"):
                key = GraphKey(layer_spec, info.d_in, info.d_out, optimizer.name,
                               optimizer.nesterov, form)
                if key.name not in graphs:
                    if form == "rows":
                        raise ConfigError(f"no train-step graph {key.name!r} for layer {name!r}")
                    continue  # this node then takes rows (or G) for the layer
                graph_of[name, form] = key.name
        used = {graph: graphs[graph] for graph in graph_of.values()}
        shapes = self._shapes  # not self: the learner and its sessions go with no cycle

        def make_session(layer: str, graph: str) -> Any:
            session = ort.InferenceSession(used[graph], options,
                                           providers=["CPUExecutionProvider"])
            _check_graph(layer, graph, session, shapes[layer])  # before the graph ever runs
            return session

        self._sessions = _LazySessions(graph_of, make_session)

    def _takes_weight_gradient(self, name: str) -> bool:
        return (name, "weight-gradient") in self._sessions

    def _takes_parameter_gradient(self, name: str) -> bool:
        return (name, "parameter-gradient") in self._sessions

    def _step_layer(self, name: str, inputs: LayerInputs, hyper: Mapping[str, float],
                    grad_scale: float) -> LayerStep:
        feeds = {k: np.asarray(v, dtype=np.float32) for k, v in hyper.items()}
        feeds["grad_scale"] = np.asarray(grad_scale, dtype=np.float32)
        if isinstance(inputs, ParameterGradient):  # checked at fit: this node has its graph
            session = self._sessions[name, "parameter-gradient"]
            feeds.update({f"grad.{p}": g for p, g in inputs.grads.items()})
        elif isinstance(inputs, WeightGradient):
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


def _check_graph(layer: str, graph: str, session: Any,
                 shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a graph whose parameter inputs are not the family's shapes for ``layer``."""
    expected = {p: list(shape) for p, shape in shapes.items()}
    got = {i.name: list(i.shape) for i in session.get_inputs() if i.name in expected}
    if got != expected:
        raise AdapterError(f"graph {graph!r}: parameter inputs {got}, layer {layer!r} "
                           f"needs {expected}")


class _LazySessions(Mapping[tuple[str, str], Any]):
    """``(layer, form) -> InferenceSession`` for the graphs a learner has, each session created
    by ``make(layer, graph)`` on first access and then shared by every key of its graph.
    ``key in sessions`` asks whether the graph exists and creates nothing."""

    def __init__(self, graph_of: Mapping[tuple[str, str], str],
                 make: Callable[[str, str], Any]) -> None:
        self._graph_of = dict(graph_of)
        self._make = make
        self._by_graph: dict[str, Any] = {}

    def __getitem__(self, key: tuple[str, str]) -> Any:
        graph = self._graph_of[key]
        if graph not in self._by_graph:  # a failed check caches nothing: it fails again
            self._by_graph[graph] = self._make(key[0], graph)
        return self._by_graph[graph]

    def __contains__(self, key: object) -> bool:
        return key in self._graph_of

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._graph_of)

    def __len__(self) -> int:
        return len(self._graph_of)
