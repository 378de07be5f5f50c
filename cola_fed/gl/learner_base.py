"""One learner contract for every backend: what a client does with adaptation data. Torch-free.

Gradient Learning regresses each adapter onto "its current output minus the gradient":

    l_GL(w) = 1/2 sum_i || g(x_i; w) - stopgrad(g(x_i; w_t) - d_i) ||^2

whose gradient at ``w = w_t`` is ``sum_i d_i^T dg(x_i)/dw``, exactly the parameter gradient that
backpropagation through the full model would give (the adapter's closed-form VJP).

:class:`LearnerBase` owns everything that does not depend on how that VJP and the optimizer step
are computed: the seeded initial adapters, the checks of incoming chunks, the buffering of an
adaptation interval, unfolding convolution data into rows, global-norm clipping, and the state
with its checks and its one file format. A backend supplies :meth:`LearnerBase._step_layer`
only: the PyTorch :class:`~cola_fed.gl.learner.GradientLearner` and the ONNX Runtime
:class:`~cola_fed.edge.ort_learner.OrtLearner`. Their states are interchangeable, for every
optimizer setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cola_fed.adapters.init import initial_state as draw_initial_state
from cola_fed.adapters.init import state_shapes
from cola_fed.adapters.registry import family_of
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.errors import AdapterError, ConfigError, GradientError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layer_data import shape_error, to_rows
from cola_fed.gl.layout import Layout, SpecLike, assign_specs
from cola_fed.gl.learner_state import PARAM_PREFIX, state_from_bytes, state_to_bytes
from cola_fed.gl.optim_spec import OptimizerSpec
from cola_fed.gl.parameter_gradient import digest
from cola_fed.gl.weight_gradient import weight_gradient

Arrays = dict[str, np.ndarray]
#: what a backend's step returns for one layer: new parameters, new slots, gradient norm
LayerStep = tuple[Arrays, dict[str, Arrays], float]


@dataclass(frozen=True)
class Rows:
    """A layer's adaptation data for one step as adapter rows ``x [n, d_in]``, ``d [n,
    d_out]``."""

    x: np.ndarray
    d: np.ndarray


@dataclass(frozen=True)
class WeightGradient:
    """A layer's adaptation data for one step in weight-space form: ``G = d^T x [d_out, d_in]``
    and the sum of ``d``'s rows ``[d_out]`` (:mod:`cola_fed.gl.weight_gradient`)."""

    g: np.ndarray
    g_bias: np.ndarray


@dataclass(frozen=True)
class ParameterGradient:
    """A layer's adaptation data for one step as its adapter's own parameter gradient
    ``{param: array}``, computed by the server at this learner's current parameters
    (:mod:`cola_fed.gl.parameter_gradient`)."""

    grads: dict[str, np.ndarray]


LayerInputs = Rows | WeightGradient | ParameterGradient


@runtime_checkable
class Learner(Protocol):
    """What a client's learner offers, whatever computes its steps."""

    layout: Layout
    specs: dict[str, AdapterSpec]
    optimizer: OptimizerSpec
    interval: int
    step: int

    def fit(self, data: AdaptationData) -> dict[str, float]:
        """Buffer one chunk of adaptation data; every ``interval`` chunks, take one step."""

    def adapter_state(self) -> Mapping[str, Mapping[str, Any]]:
        """``{layer: {param: array}}``: the only thing a client ever returns."""

    def load_adapter_state(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the adapters' weights (shapes checked); optimizer state is kept."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` of either backend (checked before anything changes)."""

    def to_bytes(self) -> bytes:
        """``state_dict`` as one safetensors blob."""

    def load_bytes(self, blob: bytes) -> None:
        """Restore a ``to_bytes`` blob of either backend."""


class LearnerBase:
    """A client's auxiliary models and their optimizer state, trained from adaptation data.

    Parameters
    ----------
    layout : Layout
        The adapted layers.
    spec : AdapterSpec or mapping
        One adapter spec for every layer, or a mapping of layer selectors to specs (see
        :func:`cola_fed.gl.layout.assign_specs`); layers no selector picks are not adapted.
    optimizer : OptimizerSpec
        Optimizer, schedule and clipping.
    seed : int
        Seeds the adapters' initialisation (:func:`cola_fed.adapters.init.initial_state`): the
        same seed gives the same adapters on every backend.
    initial_state : mapping, optional
        ``{layer: {param: array}}``: adapters to start from instead of the seeded ones.
    interval : int
        Adaptation interval ``I``: buffer ``I`` chunks, then take one step on their
        concatenation (the sum of the per-chunk gradients at the stale weights).
    dtype : numpy dtype
        Of adapters, optimizer state and the rows a step sees.
    """

    def __init__(self, layout: Layout, spec: SpecLike, optimizer: OptimizerSpec, *,
                 seed: int = 0, initial_state: Mapping[str, Mapping[str, Any]] | None = None,
                 interval: int = 1, dtype: Any = np.float32) -> None:
        if not isinstance(optimizer, OptimizerSpec):
            raise ConfigError(f"optimizer: expected an OptimizerSpec, got {optimizer!r:.60}")
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ConfigError(f"interval: expected a positive integer, got {interval!r}")
        self.layout, self.optimizer, self.interval = layout, optimizer, interval
        self.specs: dict[str, AdapterSpec] = assign_specs(layout, spec)
        self.dtype = np.dtype(dtype)
        self.step = 0
        self._shapes = state_shapes(layout, self.specs)
        if initial_state is None:
            initial_state = draw_initial_state(layout, self.specs, seed)
        self._params: dict[str, Arrays] = self._checked_params(initial_state)
        self._slots: dict[str, dict[str, Arrays]] = {
            name: {p: {s: np.zeros_like(v) for s in optimizer.slots} for p, v in params.items()}
            for name, params in self._params.items()}
        self._buffer: list[AdaptationData] = []

    # ----------------------------------------------------------------------------------------
    # the contract

    def adapter_state(self) -> Mapping[str, Mapping[str, Any]]:
        """``{layer name: {param name: array}}``: the only thing a client ever returns."""
        return {n: {p: v.copy() for p, v in ps.items()} for n, ps in self._params.items()}

    def load_adapter_state(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the adapters' weights (shapes checked); optimizer state is kept. Refused
        while a buffered parameter gradient was computed at other weights."""
        params = self._checked_params(state)
        for chunk in self._buffer:
            self._check_chunk(chunk, params)
        self._params = params

    def fit(self, data: AdaptationData) -> dict[str, float]:
        """Buffer one chunk of adaptation data; every ``interval`` chunks, take one step.

        A chunk is refused whole (unknown layer, wrong shape, bad row index, non-finite value)
        before anything is kept. Returns metrics: ``stepped`` (1.0 when a step was taken),
        ``grad_norm`` (the global norm of the Gradient Learning gradient, before clipping),
        ``lr``, ``rows`` (adapter rows in this chunk) and ``loss``.
        """
        self._check_chunk(data)
        self._check_interval_forms(data)
        buffered = [*self._buffer, data]
        rows = sum(_array(data.grads[n]).size // self.layout[n].d_out for n in data.row_layers)
        metrics = {"stepped": 0.0, "rows": float(rows), "loss": float(data.loss)}
        if len(buffered) < self.interval:
            self._buffer = buffered
            return metrics
        metrics.update(self._take_step(buffered))  # changes nothing if it raises
        self._buffer = []
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer slots, step and buffered chunks, as numpy arrays."""
        return {"step": self.step, "params": dict(self.adapter_state()),
                "slots": {n: {p: {s: v.copy() for s, v in ss.items()} for p, ss in ps.items()}
                          for n, ps in self._slots.items()},
                "buffer": [_buffered(c) for c in self._buffer]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of either backend; checked before anything changes."""
        try:
            params = self._checked_params(state["params"])
            slots = self._checked_slots(state["slots"])
            step = state["step"]
            raw_buffer = list(state.get("buffer", []))
        except KeyError as err:
            raise AdapterError(f"learner state is missing {err}") from None
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or not (
                0 <= step < 2**53):
            raise AdapterError(f"learner state: step must be an integer in [0, 2^53), got "
                               f"{step!r:.40}")
        try:
            buffer = [_chunk(c) for c in raw_buffer]
        except (KeyError, TypeError, AttributeError):
            raise AdapterError("learner state: a buffered chunk is malformed") from None
        if len(buffer) >= self.interval:
            raise AdapterError(f"learner state: {len(buffer)} buffered chunks, but this "
                               f"learner steps every {self.interval}")
        for i, chunk in enumerate(buffer):
            try:
                self._check_chunk(chunk, params)
                self._check_interval_forms(chunk, buffer[:i])
            except GradientError as err:
                raise AdapterError(f"learner state: buffered chunk {i} does not fit the saved "
                                   f"adapters ({err})") from None
        self._params, self._slots, self.step, self._buffer = params, slots, int(step), buffer

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` as a safetensors blob (:mod:`cola_fed.gl.learner_state`)."""
        return state_to_bytes(self.state_dict())

    def load_bytes(self, blob: bytes) -> None:
        """Restore a :meth:`to_bytes` blob of either backend (checked as ``load_state_dict``)."""
        self.load_state_dict(state_from_bytes(blob))

    # ----------------------------------------------------------------------------------------
    # the one thing a backend supplies

    def _step_layer(self, name: str, inputs: LayerInputs, hyper: Mapping[str, float],
                    grad_scale: float) -> LayerStep:
        """One optimizer step of layer ``name`` on its adaptation data, :class:`Rows` or
        :class:`WeightGradient` or :class:`ParameterGradient` (in ``self.dtype``), its
        gradient scaled by ``grad_scale`` first.

        Returns the new parameters and slots, and the norm of the unscaled gradient. Must not
        change the learner: the base calls it a second time, at the clipping coefficient, when
        the global norm calls for clipping.
        """
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------
    # shared mechanics

    def _take_step(self, buffered: list[AdaptationData]) -> dict[str, float]:
        """One step on the buffered chunks: every layer at scale 1, which also gives the global
        norm; again at ``clip_grad_norm_``'s coefficient when that is below 1."""
        hyper = self.optimizer.hyper(self.step + 1)
        layers = [n for n in self._params if any(n in c.layer_names for c in buffered)]
        results = {n: self._step_layer(n, self._inputs(n, buffered), hyper, 1.0) for n in layers}
        norm = float(np.sqrt(sum(r[2] ** 2 for r in results.values())))
        coef = self.optimizer.clip_coefficient(norm)
        if coef < 1.0:
            results = {n: self._step_layer(n, self._inputs(n, buffered), hyper, coef)
                       for n in layers}
        for name, (params, slots, _) in results.items():
            self._params[name], self._slots[name] = params, slots
        self.step += 1
        return {"stepped": 1.0, "grad_norm": norm, "lr": hyper["lr"]}

    def _inputs(self, name: str, chunks: list[AdaptationData]) -> LayerInputs:
        """Layer ``name``'s data in ``chunks`` for one step, formed only now, so that a step's
        peak memory is the chunks plus one layer's: its rows gathered and (convolutions)
        unfolded; when any chunk carries the layer in weight-space form, the sum of every
        chunk's ``G`` and ``g_bias`` (rows turned into theirs), as concatenating rows would;
        or the sum of its parameter gradients (all taken at the current parameters)."""
        if any(name in c.param_grads for c in chunks):  # every chunk that carries it (checked)
            grads = [c.param_grads[name] for c in chunks if name in c.param_grads]
            return ParameterGradient({
                p: np.ascontiguousarray(sum(_array(g[p]).astype(np.float64) for g in grads),
                                        dtype=self.dtype) for p in self._params[name]})
        if not any(name in c.weight_grads for c in chunks):
            x, d = self._rows(name, chunks)
            return Rows(x, d)
        g, g_bias = 0.0, 0.0
        for chunk in chunks:
            if name in chunk.weight_grads:
                part = tuple(_array(a).astype(np.float64) for a in chunk.weight_grads[name])
            elif name in chunk.grads:
                part = weight_gradient(self.layout[name], *(_array(a).astype(np.float64)
                                                             for a in chunk.layer(name)))
            else:
                continue
            g, g_bias = g + part[0], g_bias + part[1]
        return WeightGradient(np.ascontiguousarray(g, dtype=self.dtype),
                              np.ascontiguousarray(g_bias, dtype=self.dtype))

    def _rows(self, name: str, chunks: list[AdaptationData]) -> tuple[np.ndarray, np.ndarray]:
        """Layer ``name``'s adapter rows in ``chunks``, gathered and (convolutions) unfolded."""
        info = self.layout[name]
        parts = [to_rows(info, *(_array(a) for a in c.layer(name)))
                 for c in chunks if name in c.grads]
        x = parts[0][0] if len(parts) == 1 else np.concatenate([x for x, _ in parts])
        d = parts[0][1] if len(parts) == 1 else np.concatenate([d for _, d in parts])
        return (np.ascontiguousarray(x, dtype=self.dtype),
                np.ascontiguousarray(d, dtype=self.dtype))

    def _check_chunk(self, data: AdaptationData, params: dict[str, Arrays] | None = None
                     ) -> None:
        """Refuse a chunk with unknown layers, wrong shapes, bad row indices or non-finite
        values, before anything is kept; a parameter gradient must have been computed at
        ``params`` (default: the current parameters)."""
        for name in data.layer_names:
            if name not in self._params:
                raise AdapterError(f"adaptation data for {name!r}, which this learner does not "
                                   f"adapt; it adapts {sorted(self._params)}")
        if len(data.layer_names) != len(set(data.layer_names)):
            raise GradientError("a layer is carried in more than one form")
        for name, pair in data.weight_grads.items():
            self._check_weight_gradient(name, pair)
        for name, grads in data.param_grads.items():
            self._check_parameter_gradient(name, grads, data.param_at.get(name),
                                           (params or self._params)[name])
        for name in data.row_layers:
            if data.input_of.get(name) not in data.inputs:
                raise GradientError(f"layer {name!r}: its input rows are missing")
            x, d = _array(data.inputs[data.input_of[name]]), _array(data.grads[name])
            rows = data.rows.get(name)
            error = shape_error(self.layout[name], x.shape, d.shape, has_rows=rows is not None)
            if error:
                raise GradientError(error)
            if rows is not None:
                rows = _array(rows)
                n = d.shape[0]
                if rows.shape != (n,) or rows.dtype.kind not in "iu" or (n and (
                        rows.min() < 0 or rows.max() >= x.shape[0])):
                    raise GradientError(f"layer {name!r}: row indices do not fit the shared rows")
        # values last, each array once (layers that share their input share the check)
        first_reader = {data.input_of[n]: n for n in reversed(data.row_layers)}
        checks = [("x", first_reader[g], data.inputs[g]) for g in first_reader]
        checks += [("d", n, data.grads[n]) for n in data.row_layers]
        checks += [(label, n, value) for n, pair in data.weight_grads.items()
                   for label, value in zip(("G", "g_bias"), pair)]
        checks += [(f"the gradient of {p}", n, value) for n, grads in data.param_grads.items()
                   for p, value in grads.items()]
        for label, name, value in checks:
            value = _array(value)
            bad = int(value.size - np.isfinite(value).sum())
            if bad:
                raise GradientError(f"layer {name!r}: {bad} non-finite values in {label}; the "
                                    "chunk was rejected and the learner is unchanged")

    def _check_interval_forms(self, data: AdaptationData,
                              buffer: list[AdaptationData] | None = None) -> None:
        """A layer's parameter gradient sums only with other parameter gradients: within one
        interval (``buffer``, default the current one, and ``data``) a layer comes in that form
        in every chunk that carries it, or in none."""
        for chunk in self._buffer if buffer is None else buffer:
            for name in data.layer_names:
                if name in chunk.layer_names and (
                        (name in chunk.param_grads) != (name in data.param_grads)):
                    raise GradientError(
                        f"layer {name!r}: its parameter gradient and another form of its "
                        "adaptation data in one interval; the chunk was rejected and the "
                        "learner is unchanged")

    def _check_parameter_gradient(self, name: str, grads: Any, at: str | None,
                                  params: Arrays) -> None:
        """A layer as its adapter's parameter gradient: a learner that takes it, the family's
        parameters and shapes, computed at ``params``."""
        if not self._takes_parameter_gradient(name):
            raise GradientError(f"layer {name!r}: this learner cannot step from a parameter "
                                "gradient (no graph for it); it needs rows")
        expected = self._shapes[name]
        if not isinstance(grads, Mapping) or set(grads) != set(expected) or any(
                tuple(_array(grads[p]).shape) != shape for p, shape in expected.items()):
            raise GradientError(f"layer {name!r}: expected the gradient of parameters "
                                f"{expected}")
        held = digest(params)
        if at != held:
            raise GradientError(
                f"layer {name!r}: the parameter gradient was computed at other adapters "
                f"({str(at)[:12]}...) than this learner holds ({held[:12]}...): a stale or "
                "replayed gradient, or the server and this node disagree about its state. The "
                "chunk was rejected and the learner is unchanged; a server that sends rows "
                '(wire.form = "rows") avoids the question')

    def _takes_parameter_gradient(self, name: str) -> bool:
        """Whether this learner can step layer ``name`` from its parameter gradient (a
        backend may need a graph for it)."""
        return True

    def _takes_weight_gradient(self, name: str) -> bool:
        """Whether this learner can step layer ``name`` from the weight-space form (a backend
        may need more than the family's consent, e.g. a graph)."""
        return bool(family_of(self.specs[name].kind).weight_gradient)

    def _check_weight_gradient(self, name: str, pair: Any) -> None:
        """A layer in weight-space form: a learner that takes it, ``G [d_out, d_in]`` and
        ``g_bias [d_out]``."""
        if not self._takes_weight_gradient(name):
            raise GradientError(f"layer {name!r}: this learner does not learn its "
                                f"{self.specs[name].kind!r} adapter from the weight-space "
                                "gradient; it needs rows")
        info = self.layout[name]
        if not isinstance(pair, tuple) or len(pair) != 2 or (
                _array(pair[0]).shape != (info.d_out, info.d_in)
                or _array(pair[1]).shape != (info.d_out,)):
            raise GradientError(f"layer {name!r}: expected G [{info.d_out}, {info.d_in}] and "
                                f"g_bias [{info.d_out}]")

    def _checked_params(self, state: Mapping[str, Mapping[str, Any]]) -> dict[str, Arrays]:
        """``state`` in this learner's dtype, refused unless it has exactly its layers and each
        family's parameter shapes."""
        if not isinstance(state, Mapping) or set(state) != set(self._shapes):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise AdapterError(f"adapter state has layers {got}, this learner adapts "
                               f"{sorted(self._shapes)}")
        checked = {}
        for name, expected in self._shapes.items():
            try:
                params = {p: np.array(_array(v), dtype=self.dtype)
                          for p, v in state[name].items()}
            except (AttributeError, TypeError, ValueError):
                raise AdapterError(f"layer {name!r}: the adapter state is not a mapping of "
                                   "parameter names to numeric arrays") from None
            got = {p: tuple(v.shape) for p, v in params.items()}
            if got != expected:
                raise AdapterError(f"layer {name!r}: a {self.specs[name].kind!r} adapter has "
                                   f"parameters {expected}, got {got}")
            if not all(np.isfinite(v).all() for v in params.values()):
                raise AdapterError(f"layer {name!r}: the adapter state is not finite")
            checked[name] = params
        return checked

    def _checked_slots(self, slots: Mapping[str, Any]) -> dict[str, dict[str, Arrays]]:
        """Optimizer state for every parameter, with exactly ``optimizer.slots`` of its shape.

        A state written before SGD always kept its momentum buffer has none for plain SGD;
        that buffer is zero (it is only ever read scaled by a momentum of 0).
        """
        names = set(self.optimizer.slots)
        checked: dict[str, dict[str, Arrays]] = {}
        for layer, shapes in self._shapes.items():
            checked[layer] = {}
            for param, shape in shapes.items():
                got = dict(slots.get(layer, {}).get(param, {})) if isinstance(slots, Mapping) \
                    else {}
                if not got and self.optimizer.name == "sgd" and self.optimizer.momentum == 0:
                    got = {"momentum_buffer": np.zeros(shape)}
                values = {s: np.array(_array(v), dtype=self.dtype) for s, v in got.items()}
                if set(values) != names or any(v.shape != shape for v in values.values()):
                    raise AdapterError(f"learner state: optimizer slots of {layer!r}/{param!r} "
                                       f"do not match a {self.optimizer.name!r} optimizer")
                if not all(np.isfinite(v).all() for v in values.values()) or (
                        "exp_avg_sq" in values and (values["exp_avg_sq"] < 0).any()):
                    raise AdapterError(f"learner state: optimizer slots of {layer!r}/{param!r} "
                                       "are not finite, or a second moment is negative")
                checked[layer][param] = values
        return checked


def _buffered(chunk: AdaptationData) -> dict[str, dict[str, np.ndarray]]:
    """One buffered chunk as saved: per layer its rows (``x``, ``d``), ``g``, ``gb``, or its
    parameter gradient (``pg.<param>``) and the digest it was computed at (``at``, bytes)."""
    saved = {n: dict(zip(("x", "d"), (_array(a) for a in chunk.layer(n))))
             for n in chunk.row_layers}
    saved.update({n: dict(zip(("g", "gb"), (_array(a) for a in pair)))
                  for n, pair in chunk.weight_grads.items()})
    for name, grads in chunk.param_grads.items():
        at = np.frombuffer(bytes.fromhex(chunk.param_at[name]), dtype=np.uint8)
        saved[name] = {"at": at, **{f"{PARAM_PREFIX}{p}": _array(v) for p, v in grads.items()}}
    return saved


def _chunk(saved: Mapping[str, Mapping[str, Any]]) -> AdaptationData:
    """The chunk :func:`_buffered` saved."""
    rows = {n: p for n, p in saved.items() if "x" in p}
    params = {n: p for n, p in saved.items() if "at" in p}
    return AdaptationData(
        {n: p["x"] for n, p in rows.items()}, {n: p["d"] for n, p in rows.items()},
        {n: n for n in rows},
        weight_grads={n: (p["g"], p["gb"]) for n, p in saved.items() if "g" in p},
        param_grads={n: {k[len(PARAM_PREFIX):]: v for k, v in p.items() if k != "at"}
                     for n, p in params.items()},
        param_at={n: _array(p["at"]).astype(np.uint8).tobytes().hex()
                  for n, p in params.items()})


def _array(value: Any) -> np.ndarray:
    """A numpy view of an array or a CPU/GPU torch tensor (duck-typed: no torch import)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
