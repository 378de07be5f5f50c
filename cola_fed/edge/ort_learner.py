"""The client side of ColA on plain ONNX Runtime: numpy and onnxruntime only, no torch.

Same behaviour and interface as :class:`cola_fed.gl.learner.GradientLearner`: the same initial
adapters for the same seed, interval I, learning-rate schedule, global-norm clipping, state
save/load in the same safetensors format, strict checks of incoming chunks. The optimizer step
itself is the exported train-step graph of each layer (``cola_fed.edge.export``).

Clipping needs the global gradient norm before any layer steps, while each graph both computes a
layer's gradient and steps. So a step runs every layer's graph at ``grad_scale = 1``, which also
returns each layer's norm; only when the global norm exceeds ``max_grad_norm`` does it run them
again at the clipping coefficient (a second pass, and only on the steps that clip).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cola_fed.adapters.init import initial_state as draw_initial_state
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.edge.graphs import HYPER, GraphKey, slot_names
from cola_fed.errors import AdapterError, ConfigError, GradientError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layout import Layout, SpecLike, assign_specs
from cola_fed.gl.learner_state import state_from_bytes, state_to_bytes
from cola_fed.gl.optim_spec import OptimizerSpec

Arrays = dict[str, np.ndarray]


class OrtLearner:
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

        if not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"interval: expected a positive integer, got {interval!r}")
        if graph_format not in ("onnx", "ort"):
            raise ConfigError(f"graph_format: expected 'onnx' or 'ort', got {graph_format!r}")
        self.layout, self.optimizer, self.interval = layout, optimizer, interval
        self.specs: dict[str, AdapterSpec] = assign_specs(layout, spec)
        self.step = 0
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # small devices: no pre-allocated arena, no memory-pattern planning across runs
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        # one format only: an ORT-format model among ONNX graphs would escape the graph checks
        options.add_session_config_entry("session.load_model_format", graph_format.upper())
        by_graph: dict[str, Any] = {}  # layers of one shape and kind share one session
        self._sessions = {}
        for name, layer_spec in self.specs.items():
            info = layout[name]
            key = GraphKey(layer_spec, info.d_in, info.d_out, optimizer.name, optimizer.nesterov)
            if key.name not in graphs:
                raise ConfigError(f"no train-step graph {key.name!r} for layer {name!r}")
            if key.name not in by_graph:
                by_graph[key.name] = ort.InferenceSession(graphs[key.name], options,
                                                          providers=["CPUExecutionProvider"])
            self._sessions[name] = by_graph[key.name]
        if initial_state is None:
            initial_state = draw_initial_state(layout, self.specs, seed)
        self._params = self._checked(initial_state)
        slots = slot_names(optimizer.name)
        self._slots = {n: {p: {s: np.zeros_like(v) for s in slots} for p, v in ps.items()}
                       for n, ps in self._params.items()}
        self._buffer: list[AdaptationData] = []

    def adapter_state(self) -> dict[str, Arrays]:
        """``{layer name: {param name: array}}``: the only thing a client ever returns."""
        return {n: {p: v.copy() for p, v in ps.items()} for n, ps in self._params.items()}

    def load_adapter_state(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the adapters' weights (shapes checked); optimizer state is kept."""
        self._params = self._checked(state)

    def fit(self, data: AdaptationData) -> dict[str, float]:
        """Buffer one chunk; every ``interval`` chunks, run one train step per layer.

        The chunk is kept as it came (shared input rows, row indices), and each layer's rows
        are gathered only while its graph runs: on a small device, the peak memory of a step is
        the chunk plus one layer's rows.
        """
        self._check(data)
        self._buffer.append(data)
        rows = sum(int(np.shape(data.grads[n])[0]) for n in data.layer_names)
        metrics = {"stepped": 0.0, "rows": float(rows), "loss": float(data.loss)}
        if len(self._buffer) < self.interval:
            return metrics
        buffered, self._buffer = self._buffer, []
        self.step += 1
        lr = self.optimizer.lr_at(self.step)
        hyper = {k: np.asarray(v, dtype=np.float32) for k, v in {
            "lr": lr, "step": float(self.step), "beta1": self.optimizer.betas[0],
            "beta2": self.optimizer.betas[1], "eps": self.optimizer.eps,
            "weight_decay": self.optimizer.weight_decay, "momentum": self.optimizer.momentum,
            "grad_scale": 1.0}.items()}
        layers = [n for n in self._sessions if any(n in c.grads for c in buffered)]
        outputs = {n: self._run(n, self._feeds(n, buffered, hyper)) for n in layers}
        norm = _global_norm(outputs)
        if self.optimizer.max_grad_norm is not None:  # clip_grad_norm_'s coefficient
            coef = min(1.0, self.optimizer.max_grad_norm / (norm + 1e-6))
            if coef < 1.0:  # run again from the same inputs, the gradients scaled
                hyper["grad_scale"] = np.asarray(coef, dtype=np.float32)
                outputs = {n: self._run(n, self._feeds(n, buffered, hyper)) for n in layers}
        for name, out in outputs.items():
            for p in self._params[name]:
                self._params[name][p] = out[f"new.{p}"]
                for s in self._slots[name][p]:
                    self._slots[name][p][s] = out[f"new.{p}.{s}"]
        return {**metrics, "stepped": 1.0, "grad_norm": norm, "lr": lr}

    def _check(self, data: AdaptationData) -> None:
        """Refuse a chunk with unknown layers, wrong shapes, bad row indices or non-finite
        values, before anything is kept."""
        for name in data.layer_names:
            if name not in self._params:
                raise AdapterError(f"adaptation data for {name!r}, which this learner does not "
                                   "adapt")
            x, d, rows = data.inputs[data.input_of[name]], data.grads[name], data.rows.get(name)
            info = self.layout[name]
            n = np.shape(d)[0] if np.ndim(d) == 2 else -1
            if np.ndim(x) != 2 or np.shape(x)[1] != info.d_in or np.ndim(d) != 2 or (
                    np.shape(d)[1] != info.d_out) or (rows is None and np.shape(x)[0] != n):
                raise GradientError(f"layer {name!r}: expected x [n, {info.d_in}] and d "
                                    f"[n, {info.d_out}], got {list(np.shape(x))} and "
                                    f"{list(np.shape(d))}")
            if rows is not None and (np.shape(rows) != (n,) or (n and (
                    np.min(rows) < 0 or np.max(rows) >= np.shape(x)[0]))):
                raise GradientError(f"layer {name!r}: row indices do not fit the shared rows")
        # values last, each array once (layers that share their input rows share the check)
        first_reader = {data.input_of[n]: n for n in reversed(data.layer_names)}
        checks = [("x", first_reader[g], data.inputs[g]) for g in first_reader]
        checks += [("d", n, data.grads[n]) for n in data.layer_names]
        for label, name, value in checks:
            if not np.isfinite(value).all():
                raise GradientError(f"layer {name!r}: non-finite values in {label}; the chunk "
                                    "was rejected and the learner is unchanged")

    def _feeds(self, name: str, buffered: list[AdaptationData],
               hyper: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs of layer ``name``'s graph: its rows of the buffered chunks, gathered."""
        parts = [_float32(c.layer(name)) for c in buffered if name in c.grads]
        feeds = dict(hyper)
        feeds["x"] = parts[0][0] if len(parts) == 1 else np.concatenate([x for x, _ in parts])
        feeds["d"] = parts[0][1] if len(parts) == 1 else np.concatenate([d for _, d in parts])
        for p, value in self._params[name].items():
            feeds[p] = value
            for s, slot in self._slots[name][p].items():
                feeds[f"{p}.{s}"] = slot
        return feeds

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[name]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer slots, step and buffered chunks (as ``GradientLearner``'s)."""
        return {"step": self.step, "params": self.adapter_state(),
                "slots": {n: {p: {s: v.copy() for s, v in ss.items()} for p, ss in ps.items()}
                          for n, ps in self._slots.items()},
                "buffer": [{n: _float32(c.layer(n)) for n in c.layer_names}
                           for c in self._buffer]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (either backend's); checked before anything changes."""
        try:
            params = self._checked(state["params"])
            slots = {n: {p: {s: np.ascontiguousarray(v, np.float32) for s, v in ss.items()}
                         for p, ss in state["slots"][n].items()} for n in params}
            step, buffer = int(state["step"]), list(state.get("buffer", []))
        except KeyError as err:
            raise AdapterError(f"learner state is missing {err}") from None
        names = set(slot_names(self.optimizer.name))
        for n, layer in params.items():
            for p, value in layer.items():
                got = slots[n].get(p, {})
                if set(got) != names or any(v.shape != value.shape for v in got.values()):
                    raise AdapterError(f"learner state: optimizer slots of {n!r}/{p!r} do not "
                                       f"match a {self.optimizer.name!r} optimizer")
        buffer = [AdaptationData({n: x for n, (x, _) in c.items()},
                                 {n: d for n, (_, d) in c.items()}, {n: n for n in c})
                  for c in buffer]
        for chunk in buffer:
            self._check(chunk)
        self._params, self._slots, self.step, self._buffer = params, slots, step, buffer

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` as a safetensors blob, in ``GradientLearner.to_bytes``'s format."""
        return state_to_bytes(self.state_dict())

    def load_bytes(self, blob: bytes) -> None:
        """Restore a :meth:`to_bytes` blob (shapes checked)."""
        self.load_state_dict(state_from_bytes(blob))

    def _checked(self, state: Mapping[str, Mapping[str, Any]]) -> dict[str, Arrays]:
        """``state`` as float32 arrays, refused unless it has exactly the graphs' parameters."""
        if set(state) != set(self._sessions):
            raise AdapterError(f"adapter state has layers {sorted(state)}, this learner adapts "
                               f"{sorted(self._sessions)}")
        slot_suffixes = tuple("." + s for s in slot_names(self.optimizer.name))
        checked = {}
        for name, session in self._sessions.items():
            expected = {i.name: list(i.shape) for i in session.get_inputs()
                        if i.name not in (*HYPER, "x", "d") and not i.name.endswith(slot_suffixes)}
            params = {p: np.ascontiguousarray(v, dtype=np.float32) for p, v in state[name].items()}
            if set(expected) != set(params) or any(
                    list(params[p].shape) != shape for p, shape in expected.items()):
                raise AdapterError(f"layer {name!r}: expected parameters {expected}, got "
                                   f"{ {p: list(v.shape) for p, v in params.items()} }")
            checked[name] = params
        return checked


def _float32(pair: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in pair)  # type: ignore[return-value]


def _global_norm(outputs: Mapping[str, Mapping[str, np.ndarray]]) -> float:
    """The global gradient norm from each layer's ``grad_norm`` output."""
    return sum(float(out["grad_norm"]) ** 2 for out in outputs.values()) ** 0.5
