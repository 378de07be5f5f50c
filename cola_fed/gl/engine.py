"""The server side of ColA: a frozen model that turns clients' batches into adaptation data.

The engine owns no trainable parameter. For a set of clients it runs ONE forward and backward
pass over their concatenated batches, routing every sample through its own client's adapter,
and captures at every adapted layer the input ``x`` and the gradient ``d = dL/dh`` of the loss at
the adapted output ``h = f(x) + g(x)``. Each client's loss is the mean over its own samples and
the pass backpropagates the sum of those losses, so each client receives exactly the ``d`` it
would get alone. An ``nn.Conv2d`` is adapted as rows of unfolded receptive fields; its ``x`` and
``d`` are captured 4-D and travel that way (the learner unfolds them).

Modes
-----
``unmerged`` (default)
    Adapters run inside the forward pass, per sample. Any adapter family; one pass for all clients.
``merged``
    Each client's ``delta W`` is added to the frozen weights for its own pass, then the original
    weights are restored bit for bit. Low Rank and Linear only; one pass per client.
``col``
    The mean ``delta W`` of all clients is merged once and every client's batch runs against it
    (the reference code's collaborative mode). Low Rank and Linear only. :class:`ColAggregate`
    picks a robust alternative to the mean (a coordinate-wise trimmed mean, a norm-clipped mean).
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cola_fed.adapters.base import Adapter, Params
from cola_fed.adapters.registry import build_adapter, infer_spec
from cola_fed.errors import AdapterError, ColaError, ConfigError, GradientError, TargetError
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layer_data import output_size
from cola_fed.gl.layout import LayerInfo, SpecLike, assign_specs
from cola_fed.gl.losses import LossFn, default_loss, logits_of
from cola_fed.gl.targets import Targets, find_targets

MODES = ("unmerged", "merged", "col")
COL_AGGREGATES = ("mean", "trimmed-mean", "clipped-mean")

Batch = Mapping[str, torch.Tensor]
AdapterState = Mapping[str, Mapping[str, Any]]
# per layer: the adapter family and its parameters, ready to run
PreparedAdapters = dict[str, tuple[Adapter, Params]]
# per layer: a weight delta and an optional bias delta, to merge into the frozen layer
Deltas = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class ColAggregate:
    """How ``col`` mode forms the shared ``delta W`` of a layer from the clients' own (after
    Flower's robust strategies: ``FedTrimmedAvg``'s ``beta``, the clipping of ``DPFedAvg``).

    Parameters
    ----------
    rule : str
        ``mean`` (the reference code's), ``trimmed-mean`` (per coordinate, the mean of the
        values left when ``int(trim_fraction * n)`` of the n clients' values are cut from each
        tail) or ``clipped-mean`` (each client's delta of the layer, weight and bias together,
        scaled down to at most ``clip_multiple`` times the median of the clients' norms of that
        layer, then the mean).
    trim_fraction : float
        ``trimmed-mean``: the fraction cut from each tail, in ``[0, 0.5)``.
    clip_multiple : float
        ``clipped-mean``: the multiple of the round's median norm a delta is clipped to, > 0.
    """

    rule: str = "mean"
    trim_fraction: float = 0.2
    clip_multiple: float = 1.0

    def __post_init__(self) -> None:
        if self.rule not in COL_AGGREGATES:
            raise ConfigError(f"col aggregate: expected one of {', '.join(COL_AGGREGATES)}, "
                              f"got {self.rule!r}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"col trim fraction: must be in [0, 0.5), got "
                              f"{self.trim_fraction}")
        if not 0.0 < self.clip_multiple < math.inf:
            raise ConfigError(f"col clip multiple: must be a finite number > 0, got "
                              f"{self.clip_multiple}")


@dataclass
class _Pass:
    """What the forward hooks need to know during one pass, and what they capture."""

    # per layer: (start, stop, adapter, params) of each client segment adapted at that layer
    routes: dict[str, list[tuple[int, int, Adapter, Params]]]
    capture: bool
    # per layer: (input x, adapted output h) of every call, in call order
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)


class ServerEngine:
    """A frozen model with adapted layers that computes adaptation data for many clients.

    Parameters
    ----------
    model : nn.Module
        The base model (a Hugging Face model or any torch module whose first positional or
        keyword inputs come from the batch). It is put in eval mode and frozen.
    targets : str, list of str or None
        Layers to adapt: ``None`` for the defaults of ``model.config.model_type``, a list of
        module names or dotted suffixes, or a regular expression matching whole module names.
    mode : str
        ``"unmerged"``, ``"merged"`` or ``"col"`` (see the module documentation).
    loss_fn : callable or None
        ``loss_fn(logits, labels) -> mean loss`` for one client's rows; ``None`` picks the loss the
        model's class computes (cross-entropy, MSE for one output, shifted for causal LMs).
    max_batch_size : int or None
        Most samples in one pass; clients are packed into passes whole. ``None``: no limit.
    col_aggregate : ColAggregate or None
        How ``col`` mode forms the shared ``delta W`` (``None``: the mean).
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Targets = None,
        *,
        mode: str = "unmerged",
        loss_fn: LossFn | None = None,
        max_batch_size: int | None = None,
        col_aggregate: ColAggregate | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ConfigError(f"max_batch_size: expected a positive integer, got {max_batch_size}")
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.mode = mode
        self.loss_fn = loss_fn or default_loss(model)
        self.max_batch_size = max_batch_size
        self.col_aggregate = col_aggregate or ColAggregate()
        self.layout, self._modules = find_targets(model, targets)
        self._pass: _Pass | None = None
        self._hooks = [
            module.register_forward_hook(functools.partial(self._on_forward, self.layout[name]))
            for name, module in self._modules.items()
        ]

    # ----------------------------------------------------------------------------------------
    # public API

    def compute(
        self,
        batches: Mapping[str, Batch],
        adapters: Mapping[str, AdapterState | None],
        *,
        specs: Mapping[str, SpecLike] | None = None,
        mode: str | None = None,
        collaborative: Deltas | None = None,
    ) -> dict[str, AdaptationData]:
        """Adaptation data of every client's batch at that client's current adapters.

        ``batches[c]`` is a dict of model keyword arguments including ``labels``; ``adapters[c]``
        is ``{layer name: {param name: tensor}}`` as returned by ``GradientLearner.adapter_state``
        (layers it omits are not adapted for that client). ``specs[c]`` (an ``AdapterSpec`` or
        a mapping of layer selectors to specs) is needed for MLP adapters with a non-default
        activation and for families a state does not reveal (a plugin's with options, or
        without an ``infer``); otherwise the family is read off the state.
        In ``col`` mode the collaborative model is the ``delta W`` of the clients in this
        call, aggregated as ``col_aggregate`` says (the mean by default), or ``collaborative``
        (from :meth:`collaborative_deltas`) when a round's clients are computed in several
        calls against one model.
        """
        mode = mode or self.mode
        if mode not in MODES:
            raise ConfigError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self._check_frozen()
        missing = set(batches) - set(adapters)
        if missing:
            raise AdapterError(f"no adapter state for clients {sorted(missing)}")
        prepared = {
            client: self._prepare(client, adapters[client], (specs or {}).get(client))
            for client in batches
        }
        sizes = {client: _batch_size(client, batch) for client, batch in batches.items()}
        for client, batch in batches.items():
            if "labels" not in batch:
                raise ConfigError(f"client {client!r}: the batch has no 'labels'")
        results: dict[str, AdaptationData] = {}
        if mode == "merged":
            for client in batches:
                with self._merged(_delta_weights(client, prepared[client])):
                    results.update(self._run_pass([client], batches, sizes, {}))
        elif mode == "col":
            with self._merged(collaborative or _aggregate_delta_weights(prepared,
                                                                        self.col_aggregate)):
                for group in self._pack(batches, sizes):
                    results.update(self._run_pass(group, batches, sizes, {}))
        else:
            for group in self._pack(batches, sizes):
                results.update(self._run_pass(group, batches, sizes, prepared))
        return {client: results[client] for client in batches}

    def collaborative_deltas(self, adapters: Mapping[str, AdapterState], *,
                             specs: Mapping[str, SpecLike] | None = None,
                             aggregate: ColAggregate | None = None) -> Deltas:
        """The ``col`` mode model of ``adapters``: per layer, the ``delta W`` (and bias) of
        the clients that adapt it, aggregated as ``aggregate`` (default: ``col_aggregate``)
        says."""
        return _aggregate_delta_weights(
            {c: self._prepare(c, state, (specs or {}).get(c)) for c, state in adapters.items()},
            aggregate or self.col_aggregate)

    @torch.no_grad()
    def predict(
        self, batch: Batch, adapter: AdapterState | None = None, *, spec: SpecLike | None = None
    ) -> torch.Tensor:
        """Logits of the adapted model for one client's batch (``labels`` is ignored)."""
        prepared = self._prepare("predict", adapter, spec)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        size = _batch_size("predict", inputs)
        self._pass = _Pass(_routes([("predict", 0, size)], {"predict": prepared}), capture=False)
        try:
            return logits_of(self.model(**inputs))
        finally:
            self._pass = None

    @torch.no_grad()
    def predict_col(
        self,
        batch: Batch,
        adapters: Mapping[str, AdapterState],
        *,
        specs: Mapping[str, SpecLike] | None = None,
        aggregate: ColAggregate | None = None,
    ) -> torch.Tensor:
        """Logits of the collaborative model: the base with the ``delta W`` of all clients
        merged, aggregated as ``aggregate`` (default: ``col_aggregate``) says (what ``col``
        mode trains through)."""
        deltas = self.collaborative_deltas(adapters, specs=specs, aggregate=aggregate)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with self._merged(deltas):
            return logits_of(self.model(**inputs))

    def close(self) -> None:
        """Remove the engine's hooks; the model behaves as the plain base model again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    # ----------------------------------------------------------------------------------------
    # one pass

    def _run_pass(
        self,
        clients: list[str],
        batches: Mapping[str, Batch],
        sizes: Mapping[str, int],
        prepared: Mapping[str, PreparedAdapters],
    ) -> dict[str, AdaptationData]:
        segments, start = [], 0
        for client in clients:
            segments.append((client, start, start + sizes[client]))
            start += sizes[client]
        if len(clients) == 1:
            mixed = dict(batches[clients[0]])
        else:
            mixed = {k: torch.cat([batches[c][k] for c in clients]) for k in batches[clients[0]]}
        labels = mixed.pop("labels")
        self._pass = _Pass(_routes(segments, prepared), capture=True)
        try:
            with torch.enable_grad():
                logits = logits_of(self.model(**mixed))
                counts = [sizes[c] for c in clients]  # split, not slice: see _adapter_output
                losses = {
                    client: self.loss_fn(client_logits, client_labels)
                    for client, client_logits, client_labels
                    in zip(clients, logits.split(counts), labels.split(counts))
                }
            calls = self._pass.calls
        finally:
            self._pass = None
        stacked = torch.stack(list(losses.values()))
        values = dict(zip(losses, stacked.detach().tolist()))  # one synchronisation
        for client, start, stop in segments:
            if not math.isfinite(values[client]):
                raise GradientError(self._nonfinite_loss_message(client, losses[client], calls,
                                                                 start, stop))
        for name in self.layout.names:
            if not calls.get(name):
                raise TargetError(
                    f"layer {name!r} was not called in the forward pass; remove it from the "
                    "targets"
                )
        outputs = [out for name in self.layout.names for _, out in calls[name]]
        total = stacked.sum()
        wanted = [out for out in outputs if out.requires_grad]
        grads_list = (
            torch.autograd.grad(total, wanted, allow_unused=True) if total.requires_grad else []
        )
        grad_of = {id(out): g for out, g in zip(wanted, grads_list)}
        grads: dict[str, list[torch.Tensor]] = {}
        for name in self.layout.names:  # an output the loss does not reach has d = 0
            found = [grad_of.get(id(out)) for _, out in calls[name]]
            grads[name] = [torch.zeros_like(out) if g is None else g
                           for (_, out), g in zip(calls[name], found)]
        with torch.no_grad():  # from here on nothing is differentiated: record no graph
            # which rows carry gradient, and whether any is not finite: the whole pass at once
            extremes = {name: [_row_extremes(g, self.layout[name]) for g in layer_grads]
                        for name, layer_grads in grads.items()}
            self._check_finite(segments, grads, extremes)
            live = {name: [high.ne(0) | low.ne(0) for high, low in pairs]
                    for name, pairs in extremes.items()}
            return {
                client: self._client_data(client, start, stop, calls, grads, live,
                                          values[client])
                for client, start, stop in segments
            }

    def _on_forward(
        self, layer: LayerInfo, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        """Forward hook of every adapted layer: route through adapters, capture ``(x, h)``."""
        active = self._pass
        if active is None:
            return None
        if not args or not isinstance(args[0], torch.Tensor):
            raise TargetError(f"layer {layer.name!r} must receive its input as a positional tensor")
        x = args[0]
        routes = active.routes.get(layer.name)
        if routes:
            output = output + _adapter_output(layer, routes, x, output)
        if not active.capture:
            return output
        if x.shape[0] != output.shape[0]:
            raise TargetError(f"layer {layer.name!r}: input and output batch sizes differ")
        if not output.requires_grad:  # the first adapted layer: start the graph here
            output = output.detach().requires_grad_(True)
        active.calls.setdefault(layer.name, []).append((x, output))
        return output

    # ----------------------------------------------------------------------------------------
    # helpers

    def _client_data(
        self,
        client: str,
        start: int,
        stop: int,
        calls: Mapping[str, list[tuple[torch.Tensor, torch.Tensor]]],
        grads: Mapping[str, list[torch.Tensor]],
        live: Mapping[str, list[torch.Tensor]],
        loss: float,
    ) -> AdaptationData:
        """Slice one client's rows out of the pass, drop zero-gradient rows, share inputs.

        A convolution's ``x`` and ``d`` stay 4-D (``[B, C, H, W]``, compact: the learner unfolds
        them), so its "rows" are samples: a sample whose ``d`` is all zero is dropped whole.

        Cheap by construction (it runs once per client and group of layers): ``live[name]``,
        which rows of each call carry gradient, was found once for the whole pass
        (:func:`_row_extremes`); rows are gathered with ``index_select`` (a boolean mask would
        count them again); and a group of layers that keeps every row reads the pass's own
        tensors, without a copy.
        """
        xs: dict[str, torch.Tensor] = {}
        ds: dict[str, torch.Tensor] = {}
        lives: dict[str, torch.Tensor] = {}
        signature: dict[str, tuple[Any, ...]] = {}
        for info in self.layout:
            layer_calls = calls[info.name]
            x_parts, d_parts, live_parts = [], [], []
            for (x, _), g, call_live in zip(layer_calls, grads[info.name], live[info.name]):
                per_sample = call_live.shape[0] // max(g.shape[0], 1)  # tokens, or 1
                live_parts.append(call_live[start * per_sample:stop * per_sample])
                if info.is_conv2d:
                    x_parts.append(x[start:stop])
                    d_parts.append(g[start:stop])
                else:
                    x_parts.append(x[start:stop].reshape(-1, info.d_in))
                    d_parts.append(g[start:stop].reshape(-1, info.d_out))
            if info.is_conv2d and len({tuple(x.shape[2:]) for x in x_parts}) > 1:
                raise TargetError(
                    f"layer {info.name!r} is called several times on inputs of different "
                    "spatial sizes; a convolution is adapted only if every call has one size"
                )
            xs[info.name] = torch.cat(x_parts) if len(x_parts) > 1 else x_parts[0]
            ds[info.name] = torch.cat(d_parts) if len(d_parts) > 1 else d_parts[0]
            lives[info.name] = torch.cat(live_parts) if len(live_parts) > 1 else live_parts[0]
            # layers share x only if they read the same tensors and keep x in the same form
            signature[info.name] = (info.is_conv2d, *(id(x) for x, _ in layer_calls))
        dtype = torch.promote_types(next(iter(xs.values())).dtype, torch.float32)
        data = AdaptationData({}, {}, {}, {}, loss=loss, num_samples=stop - start)
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name in self.layout.names:
            groups.setdefault(signature[name], []).append(name)
        for members in groups.values():
            key = members[0]
            union = functools.reduce(torch.logical_or, [lives[name] for name in members])
            kept = union.nonzero().squeeze(1)
            every_row = kept.numel() == union.numel()
            x = xs[key] if every_row else xs[key].index_select(0, kept)
            data.inputs[key] = _detached(x, dtype)
            for name in members:
                data.input_of[name] = key
                mask = lives[name][kept]  # this layer's rows among the group's
                rows = mask.nonzero().squeeze(1)
                if rows.numel() == mask.numel():
                    data.rows[name] = None
                    d = ds[name] if every_row else ds[name].index_select(0, kept)
                else:
                    data.rows[name] = rows
                    d = ds[name].index_select(0, kept[rows])
                data.grads[name] = _detached(d, dtype)
        return data

    def _check_finite(
        self,
        segments: list[tuple[str, int, int]],
        grads: Mapping[str, list[torch.Tensor]],
        extremes: Mapping[str, list[tuple[torch.Tensor, torch.Tensor]]],
    ) -> None:
        """Raise :class:`GradientError` for the first client and layer whose ``d`` holds NaN or
        Inf. NaN and Inf show in the rows' extremes, so one test of all of them (one
        synchronisation for the whole pass) clears the common case."""
        every = [t for pairs in extremes.values() for pair in pairs for t in pair]
        if bool(torch.isfinite(torch.cat(every)).all()):
            return
        for client, start, stop in segments:
            for name, layer_grads in grads.items():
                bad = sum(int((~torch.isfinite(g[start:stop])).sum()) for g in layer_grads)
                if bad:
                    raise GradientError(
                        f"client {client!r}, layer {name!r}: the adaptation gradient has "
                        f"{bad} non-finite values; check the inputs and the adapter"
                    )

    def _nonfinite_loss_message(
        self, client: str, loss: torch.Tensor, calls: Mapping[str, list], start: int, stop: int
    ) -> str:
        for name in self.layout.names:
            for _, out in calls.get(name, []):
                if not torch.isfinite(out[start:stop]).all():
                    return (
                        f"client {client!r}: the loss is {loss.item()}; the first adapted layer "
                        f"with a non-finite output is {name!r}. Check the adapter and the inputs."
                    )
        return (
            f"client {client!r}: the loss is {loss.item()} although every adapted layer's output "
            "is finite; check the labels and the loss function"
        )

    def _prepare(
        self, client: str, state: AdapterState | None, spec: SpecLike | None
    ) -> PreparedAdapters:
        """Check a client's adapter state against the layout and build its adapter families."""
        if not state:
            return {}
        specs = assign_specs(self.layout, spec) if spec is not None else {}
        device = next(self.model.parameters()).device
        checked: dict[str, tuple[Adapter, Params]] = {}
        for name, raw in state.items():
            if name not in self.layout:
                raise AdapterError(
                    f"client {client!r}: adapter for {name!r}, which is not an adapted layer; "
                    f"adapted layers: {self.layout.names}"
                )
            params = {k: torch.as_tensor(v) for k, v in raw.items()}
            adapter = build_adapter(specs.get(name) or infer_spec(params))
            info = self.layout[name]
            adapter.check(params, info.d_in, info.d_out, f"client {client!r}, layer {name!r}")
            checked[name] = (adapter, params)
        # where the state arrived (the CPU, from the wire), one test for all of it: no
        # synchronisation with the device per parameter
        if not _all_finite([v for _, params in checked.values() for v in params.values()]):
            for name, (_, params) in checked.items():
                for pname, value in params.items():
                    if not _all_finite([value]):
                        raise AdapterError(f"client {client!r}, layer {name!r}: parameter "
                                           f"{pname!r} is not finite")
        moved = _to_device([params for _, params in checked.values()], device)
        return {name: (adapter, params)
                for (name, (adapter, _)), params in zip(checked.items(), moved)}

    def _pack(self, batches: Mapping[str, Batch], sizes: Mapping[str, int]) -> list[list[str]]:
        """Group clients whose batches can be concatenated, at most ``max_batch_size`` a pass."""
        by_shape: dict[tuple, list[str]] = {}
        for client, batch in batches.items():
            key = tuple(sorted((k, tuple(v.shape[1:]), v.dtype) for k, v in batch.items()))
            by_shape.setdefault(key, []).append(client)
        passes: list[list[str]] = []
        for clients in by_shape.values():
            current: list[str] = []
            filled = 0
            for client in clients:
                if current and self.max_batch_size and filled + sizes[client] > self.max_batch_size:
                    passes.append(current)
                    current, filled = [], 0
                current.append(client)
                filled += sizes[client]
            passes.append(current)
        return passes

    @contextlib.contextmanager
    def _merged(
        self, deltas: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> Iterator[None]:
        """Fold ``delta W`` (and bias) into the frozen weights; restore them exactly afterwards.

        The sum is formed in at least fp32 and rounded once to the base dtype; the saved original
        tensors are copied back, so a bf16 base does not drift over any number of cycles.
        """
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for name, (dw, db) in deltas.items():
                    module, info = self._modules[name], self.layout[name]
                    if db is not None and module.bias is None:
                        raise AdapterError(
                            f"layer {name!r} has no bias to merge an adapter bias into; "
                            "use unmerged mode"
                        )
                    if info.module_type == "conv1d":
                        weight_delta = dw.T
                    elif info.is_conv2d:  # rows [C_out, C_in*kh*kw] are the kernel flattened
                        weight_delta = dw.reshape(module.weight.shape)
                    else:
                        weight_delta = dw
                    for target, delta in ((module.weight, weight_delta), (module.bias, db)):
                        if delta is None:
                            continue
                        saved.append((target, target.detach().clone()))
                        wide = torch.promote_types(target.dtype, torch.float32)
                        if wide == target.dtype:  # the same rounding, without a temporary
                            target.add_(delta.to(target.device, wide))
                        else:
                            target.copy_(target.to(wide) + delta.to(target.device, wide))
            yield
        finally:
            with torch.no_grad():
                for target, original in reversed(saved):
                    target.copy_(original)

    def _check_frozen(self) -> None:
        if not any(p.requires_grad for p in self.model.parameters()):  # no names: cheaper
            return
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if trainable:
            raise ColaError(
                f"the server model must be parameter-free, but {trainable[:3]} require grad; "
                "do not unfreeze the base model of a ServerEngine"
            )


def _routes(
    segments: list[tuple[str, int, int]], prepared: Mapping[str, PreparedAdapters]
) -> dict[str, list[tuple[int, int, Adapter, Params]]]:
    routes: dict[str, list[tuple[int, int, Adapter, Params]]] = {}
    for client, start, stop in segments:
        for name, (adapter, params) in prepared.get(client, {}).items():
            routes.setdefault(name, []).append((start, stop, adapter, params))
    return routes


def _adapter_output(
    layer: LayerInfo,
    routes: list[tuple[int, int, Adapter, Params]],
    x: torch.Tensor,
    output: torch.Tensor,
) -> torch.Tensor:
    """Every sample's own adapter output, in the base dtype (adapters compute in their own).

    One client: its adapter on the whole batch. Clients of one built-in family and spec with
    equal batch sizes (the usual federated round): one ``torch.func.vmap`` call over their
    stacked parameters, a batched matmul per product whatever their number: the loop's values
    up to float rounding (bit for bit on the CPUs measured), and on a GPU K times fewer kernel
    launches. Otherwise one call per client.
    """

    def run(adapter: Adapter, params: Params, rows: torch.Tensor) -> torch.Tensor:
        dtype = next(iter(params.values())).dtype
        if layer.is_conv2d:
            return _conv2d_adapter_output(layer, adapter, params, rows.to(dtype)).to(output.dtype)
        return adapter.forward(params, rows.to(dtype)).to(output.dtype)

    if len(routes) == 1 and routes[0][0] == 0 and routes[0][1] == x.shape[0]:
        _, _, adapter, params = routes[0]
        return run(adapter, params, x)
    if _batchable(layer, routes, x.shape[0]):
        # one batched call for every client (a batched matmul per product, whatever K is)
        # instead of K small ones and their K backward steps
        adapter, params = routes[0][2], routes[0][3]
        stacked = {k: torch.stack([route[3][k] for route in routes]) for k in params}
        dtype = next(iter(params.values())).dtype
        rows = x.reshape(len(routes), -1, *x.shape[1:]).to(dtype)
        out = torch.func.vmap(adapter.forward)(stacked, rows)
        return out.reshape(output.shape).to(output.dtype)
    # One split (whose backward is one concatenation) rather than a slice per client (whose
    # backward materialises a full-size gradient per client).
    sizes, adapters, cursor = [], [], 0
    for start, stop, adapter, params in routes:
        if start > cursor:
            sizes.append(start - cursor)
            adapters.append(None)
        sizes.append(stop - start)
        adapters.append((adapter, params))
        cursor = stop
    if cursor < x.shape[0]:
        sizes.append(x.shape[0] - cursor)
        adapters.append(None)
    pieces = [
        run(*chosen, rows) if chosen else output.new_zeros((rows.shape[0], *output.shape[1:]))
        for rows, chosen in zip(x.split(sizes), adapters)
    ]
    return torch.cat(pieces)


def _row_extremes(d: torch.Tensor, layer: LayerInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """The maximum and minimum of each row of a layer's ``d`` (a token of a linear layer, a
    sample of a convolution), in float32, for the whole pass at once.

    A row is all zero (``-0.0`` included) exactly when both are zero, and a NaN or Inf in a
    row shows in them, so these two reductions (no temporary as large as ``d``, unlike
    ``d.ne(0).any(1)``) tell both which rows to keep and whether ``d`` is finite.
    """
    flat = d.flatten(1) if layer.is_conv2d else d.reshape(-1, layer.d_out)
    return flat.amax(dim=1).float(), flat.amin(dim=1).float()


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every value of ``tensors`` is finite: one test (and one synchronisation) per
    device they live on."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.reshape(-1))
    return all(bool(torch.isfinite(torch.cat(flat)).all()) for flat in by_device.values())


def _to_device(groups: list[Params], device: torch.device) -> list[Params]:
    """``groups`` of tensors on ``device``: a tensor already there as it is, the others in one
    copy per source device and dtype, split into views. A client's adapters are dozens of
    small tensors, and a host-to-accelerator copy of each would cost a transfer's latency."""
    batches: dict[tuple[torch.device, torch.dtype], list[tuple[int, str, torch.Tensor]]] = {}
    for i, params in enumerate(groups):
        for k, v in params.items():
            if v.device != device:
                batches.setdefault((v.device, v.dtype), []).append((i, k, v))
    if not batches:
        return groups
    moved: dict[tuple[int, str], torch.Tensor] = {}
    for items in batches.values():
        flat = torch.cat([v.reshape(-1) for _, _, v in items]).to(device)
        for (i, k, v), part in zip(items, flat.split([v.numel() for _, _, v in items])):
            moved[i, k] = part.view(v.shape)
    return [{k: moved.get((i, k), v) for k, v in params.items()}
            for i, params in enumerate(groups)]


def _detached(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` detached from the graph, in ``dtype``, contiguous: a copy only where needed (a
    view of the pass's tensors otherwise, which nothing writes to once the pass is done)."""
    return t.detach().to(dtype).contiguous()


#: built-in families whose ``forward`` is plain tensor algebra, safe under ``torch.func.vmap``
#: (a plugin family's may not be: it keeps the loop over clients)
BATCHABLE_KINDS = frozenset({"lowrank", "linear", "mlp"})


def _batchable(
    layer: LayerInfo, routes: list[tuple[int, int, Adapter, Params]], batch: int
) -> bool:
    """Whether the clients tile the whole batch in equal segments, with adapters of one
    batchable family and spec and parameters of one shape and dtype: then they run as one."""
    if layer.is_conv2d or len(routes) < 2:
        return False
    size = routes[0][1] - routes[0][0]
    spec, params = routes[0][2].spec, routes[0][3]
    if spec.kind not in BATCHABLE_KINDS or size * len(routes) != batch:
        return False
    shapes = {k: (v.shape, v.dtype, v.device) for k, v in params.items()}
    return all(
        start == i * size and stop == start + size and adapter.spec == spec
        and {k: (v.shape, v.dtype, v.device) for k, v in other.items()} == shapes
        for i, (start, stop, adapter, other) in enumerate(routes)
    )


def _conv2d_adapter_output(
    layer: LayerInfo, adapter: Adapter, params: Params, x: torch.Tensor
) -> torch.Tensor:
    """An adapter on a convolution: ``g`` applied to every output position's unfolded receptive
    field (``F.unfold``'s order, as :func:`cola_fed.gl.layer_data.unfold`), folded back to
    ``[B, C_out, H', W']``. A mergeable family is linear in its rows, so it runs as one
    convolution by its ``delta W`` instead: the same function, without materialising the
    patches (``kh * kw`` copies of the input)."""
    if adapter.family.mergeable:
        dw, db = adapter.delta_weight(params)
        kernel = dw.reshape(layer.d_out, layer.in_channels, *layer.kernel_size)
        return F.conv2d(x, kernel, db, layer.stride, layer.padding, layer.dilation)
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                    stride=layer.stride)  # [B, C_in*kh*kw, H'*W']
    out = adapter.forward(params, cols.transpose(1, 2))  # [B, H'*W', C_out]
    h_out, w_out = output_size(layer, x.shape[2], x.shape[3])
    return out.transpose(1, 2).reshape(x.shape[0], layer.d_out, h_out, w_out)


def _delta_weights(
    client: str, prepared: PreparedAdapters
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    deltas = {}
    for name, (adapter, params) in prepared.items():
        if not adapter.spec.mergeable:
            raise AdapterError(
                f"client {client!r}, layer {name!r}: a {adapter.kind!r} adapter cannot be merged; "
                "use mode='unmerged'"
            )
        deltas[name] = adapter.delta_weight(params)
    return deltas


def _aggregate_delta_weights(
    prepared: Mapping[str, PreparedAdapters], aggregate: ColAggregate,
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per layer, the clients' ``delta W`` (and bias) aggregated over the clients that adapt
    it (``col`` mode): the mean, a coordinate-wise trimmed mean or a norm-clipped mean. A
    client without a bias delta counts as a zero one."""
    per_layer: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
    for client, adapters in prepared.items():
        for name, delta in _delta_weights(client, adapters).items():
            per_layer.setdefault(name, []).append(delta)
    out = {}
    for name, deltas in per_layer.items():
        dws = torch.stack([dw for dw, _ in deltas])
        biased = any(db is not None for _, db in deltas)
        dbs = torch.stack([db if db is not None else torch.zeros_like(
            next(b for _, b in deltas if b is not None)) for _, db in deltas]) if biased else None
        if aggregate.rule == "trimmed-mean":
            out[name] = (_trimmed_mean(dws, aggregate.trim_fraction),
                         _trimmed_mean(dbs, aggregate.trim_fraction) if biased else None)
            continue
        if aggregate.rule == "clipped-mean":
            squared = dws.flatten(1).double().square().sum(1)
            if biased:
                squared = squared + dbs.flatten(1).double().square().sum(1)
            norms = squared.sqrt()
            limit = aggregate.clip_multiple * float(statistics.median(norms.tolist()))
            # at most ``limit``; a delta of norm 0 stays 0 (and a zero limit zeroes them all)
            factors = (limit / norms.clamp_min(1e-300)).clamp(max=1.0)
            dws = dws * factors.to(dws.dtype).reshape(-1, *[1] * (dws.dim() - 1))
            if biased:
                dbs = dbs * factors.to(dbs.dtype).reshape(-1, *[1] * (dbs.dim() - 1))
        out[name] = (dws.mean(0), dbs.mean(0) if biased else None)
    return out


def _trimmed_mean(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per coordinate, the mean over dimension 0 after ``int(fraction * n)`` of the ``n``
    values are cut from each tail (as Flower's ``trim_mean``)."""
    n = values.shape[0]
    cut = int(fraction * n)
    if cut == 0:
        return values.mean(0)
    return values.sort(dim=0).values[cut:n - cut].mean(0)


def _batch_size(client: str, batch: Mapping[str, Any]) -> int:
    if not isinstance(batch, Mapping) or not batch:
        raise ConfigError(f"client {client!r}: a batch must be a non-empty dict of tensors")
    sizes = {k: int(v.shape[0]) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if len(sizes) != len(batch):
        raise ConfigError(f"client {client!r}: every batch value must be a tensor")
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"client {client!r}: batch tensors disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))
