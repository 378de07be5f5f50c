"""PEFT LoRA on a cola-fed task: the model every FedAvg-LoRA client (and its server) holds.

What: the task's frozen base model (``get_task(config.task).build_model()``) wrapped by
``peft.get_peft_model`` with LoRA on the layers cola-fed adapts, the task's fresh head trained
as ``modules_to_save``; and the few operations a FedAvg client and server need on it: its
trainable weights as numpy (what travels), one local training loop, and the task's metrics.

Why these choices (so that the baseline differs from ColA in where it trains, not in what):

- ``r = lora_alpha = adapter.rank`` and no dropout: LoRA's scale ``alpha / r`` is 1, which is
  ColA Low Rank's ``g(x) = x A^T B^T`` (``cola_fed.adapters.lowrank``).
- ``target_modules``: exactly the layers ColA adapts (``task.adapted_targets`` resolved to full
  module names, matched as one anchored regular expression so that no other module with the
  same suffix is caught), minus the task's fresh head.
- the head: ``modules_to_save`` (PEFT trains a copy of it). ColA adapts the frozen, freshly
  initialised head with a Linear adapter with bias whose initial value is zero, i.e. it trains
  ``head + delta`` from ``head``: the same start and the same gradients. The two differ only
  under weight decay, which PEFT applies to the whole head and ColA to the delta.
- the initial ``A`` and ``B`` are ColA's seeded initial Low Rank adapters
  (:func:`cola_fed.adapters.init.initial_state`, the seed of the node's partition), copied in,
  so both arms start from the same adapters.
- the model stays in eval mode while it trains, as ColA's server runs its frozen model
  (dropout off), and the loss is the one ColA's server computes (``default_loss`` of the base
  model's class), so that one node's FedAvg-LoRA is exactly backprop through PEFT LoRA and
  exactly ColA's Gradient Learning (``tests/test_fedavg_lora.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cola_fed.adapters.init import initial_state
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
from cola_fed.gl.layout import Layout, assign_specs
from cola_fed.gl.losses import LossFn, default_loss, logits_of
from cola_fed.gl.optim_spec import OptimizerSpec
from cola_fed.tasks.base import Batch, Task
from cola_fed.tasks.scoring import score

#: PEFT's name of the one adapter (and of its modules_to_save copy)
ADAPTER = "default"
#: the prefix PEFT puts before the base model's module names
PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraTargets:
    """Which layers of a task's model the baseline trains, and how.

    ``lora``: full module names with LoRA; ``head``: the full name of the fresh head trained as
    ``modules_to_save`` (or None); ``layout``: ColA's layout of the same layers (LoRA layers
    and head), in model order, which names ColA's adapters.
    """

    lora: tuple[str, ...]
    head: str | None
    layout: Layout


def lora_targets(task: Task, model: nn.Module, config: RunConfig) -> LoraTargets:
    """The layers cola-fed adapts on ``model`` (``adapter.targets`` or the task's), split into
    LoRA layers and the task's fresh head."""
    from cola_fed.gl.targets import find_targets

    layout, _ = find_targets(model, task.adapted_targets(model, config.adapter.target_list))
    head = task.head
    heads = [n for n in layout.names if head and (n == head or n.endswith("." + head))]
    if len(heads) > 1:
        raise ConfigError(f"task {task.name!r}: its head {head!r} matches several layers "
                          f"{heads}; the baseline trains one head")
    lora = tuple(n for n in layout.names if n not in heads)
    if not lora:
        raise ConfigError(f"adapter.targets: no layer besides the head to put LoRA on "
                          f"({layout.names})")
    return LoraTargets(lora=lora, head=heads[0] if heads else None, layout=layout)


def cola_specs(targets: LoraTargets, config: RunConfig) -> dict[str, AdapterSpec]:
    """ColA's adapter spec of every layer, as its plan gives a node: Low Rank of
    ``adapter.rank`` everywhere, a Linear adapter with bias on the fresh head."""
    specs = {"*": config.adapter.spec_of_kind("lowrank")}
    if targets.head:
        specs[targets.head] = AdapterSpec(kind="linear", bias=True)
    return assign_specs(targets.layout, specs)


def build_lora_model(config: RunConfig, *, seed: int | None = None,
                     task: Task | None = None) -> nn.Module:
    """The task's frozen base model with PEFT LoRA (``r = lora_alpha = adapter.rank``, no
    dropout) on cola-fed's adapted layers and the fresh head as ``modules_to_save``, its
    adapters set to ColA's initial adapters for ``seed`` (default ``task.seed``: partition
    0's), in eval mode.

    ``adapter.kind`` is not read: the baseline is LoRA whatever the ColA arm uses.
    """
    import peft
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    task = task or get_task_of(config)
    model = task.build_model()
    targets = lora_targets(task, model, config)
    rank = config.adapter.rank
    pattern = "^(?:" + "|".join(re.escape(n) for n in targets.lora) + ")$"
    lora_config = peft.LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", target_modules=pattern,
        modules_to_save=[targets.head] if targets.head else None,
        fan_in_fan_out=any(targets.layout[n].module_type == "conv1d" for n in targets.lora),
    )
    peft_model = peft.get_peft_model(model, lora_config)
    got_lora = {n.removeprefix(PREFIX) for n, m in peft_model.named_modules()
                if isinstance(m, LoraLayer)}
    got_heads = {n.removeprefix(PREFIX) for n, m in peft_model.named_modules()
                 if isinstance(m, ModulesToSaveWrapper)}
    if got_lora != set(targets.lora) or got_heads != ({targets.head} - {None}):
        # PEFT matches modules_to_save by suffix alone: a second module ending in the head's
        # name would be trained too, and the arms would no longer train the same layers
        raise ConfigError(f"PEFT wrapped LoRA layers {sorted(got_lora)} and heads "
                          f"{sorted(got_heads)}; cola-fed adapts {list(targets.lora)} and "
                          f"head {targets.head!r}")
    peft_model.cola_targets = targets
    peft_model.cola_loss_fn = default_loss(model)
    peft_model.eval()
    load_lora_state(peft_model, lora_from_cola(
        peft_model, initial_adapters(targets, config, config.task.seed if seed is None else seed)))
    return peft_model


def get_task_of(config: RunConfig) -> Task:
    """The run's task (server side; a node passes its allowed task paths itself)."""
    from cola_fed.tasks import get_task

    return get_task(config.task)


def initial_adapters(targets: LoraTargets, config: RunConfig, seed: int
                     ) -> dict[str, dict[str, np.ndarray]]:
    """ColA's initial adapters for ``seed``, float32, exactly as a ColA learner draws them
    (:func:`cola_fed.adapters.init.initial_state`, rounded once to float32)."""
    drawn = initial_state(targets.layout, cola_specs(targets, config), seed)
    return {layer: {p: v.astype(np.float32) for p, v in params.items()}
            for layer, params in drawn.items()}


# ----------------------------------------------------------------------------------------------
# the trainable weights, as they travel


def trainable(peft_model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters (LoRA ``A``, ``B`` and the head copy), in model order."""
    return [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]


def lora_state(peft_model: nn.Module) -> dict[str, np.ndarray]:
    """The trainable weights only, by PEFT parameter name, as float32 numpy copies: what a
    FedAvg-LoRA client receives and returns."""
    return {n: p.detach().cpu().float().numpy().copy() for n, p in trainable(peft_model)}


def load_lora_state(peft_model: nn.Module, state: Mapping[str, Any]) -> None:
    """Set the trainable weights from ``state`` (every name and shape must match)."""
    params = dict(trainable(peft_model))
    if set(state) != set(params):
        raise ConfigError(f"LoRA state: expected the parameters {sorted(params)}, got "
                          f"{sorted(state)}")
    with torch.no_grad():
        for name, param in params.items():
            value = torch.tensor(np.asarray(state[name]), dtype=param.dtype)
            if value.shape != param.shape:
                raise ConfigError(f"LoRA state: {name} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(param.shape)}")
            param.copy_(value)


def _head_module(peft_model: nn.Module, head: str) -> nn.Module:
    """The frozen original of the head that PEFT wraps."""
    return peft_model.get_submodule(PREFIX + head).original_module


def cola_adapters(peft_model: nn.Module, state: Mapping[str, Any] | None = None
                  ) -> dict[str, dict[str, np.ndarray]]:
    """A LoRA state (default: the model's) as ColA adapters: ``A [r, d_in]``, ``B [d_out, r]``
    per LoRA layer (a convolution's kernels flattened, as ColA stores them) and the head copy
    minus the frozen head as a Linear adapter (``weight [d_out, d_in]``, ``bias``)."""
    targets: LoraTargets = peft_model.cola_targets
    state = lora_state(peft_model) if state is None else state
    rank = peft_model.peft_config[ADAPTER].r
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in targets.lora:
        layer = targets.layout[name]
        a = np.asarray(state[f"{PREFIX}{name}.lora_A.{ADAPTER}.weight"], np.float32)
        b = np.asarray(state[f"{PREFIX}{name}.lora_B.{ADAPTER}.weight"], np.float32)
        out[name] = {"A": a.reshape(rank, layer.d_in), "B": b.reshape(layer.d_out, rank)}
    if targets.head:
        layer, base = targets.layout[targets.head], _head_module(peft_model, targets.head)
        weight = np.asarray(state[f"{PREFIX}{targets.head}.modules_to_save.{ADAPTER}.weight"],
                            np.float32) - base.weight.detach().float().numpy()
        if layer.module_type == "conv1d":  # Hugging Face Conv1D stores [d_in, d_out]
            weight = weight.T
        out[targets.head] = {"weight": weight.reshape(layer.d_out, layer.d_in)}
        key = f"{PREFIX}{targets.head}.modules_to_save.{ADAPTER}.bias"
        out[targets.head]["bias"] = (
            np.asarray(state[key], np.float32) - base.bias.detach().float().numpy()
            if key in state else np.zeros(layer.d_out, np.float32))
    return out


def lora_from_cola(peft_model: nn.Module, adapters: Mapping[str, Mapping[str, Any]]
                   ) -> dict[str, np.ndarray]:
    """ColA adapters (Low Rank on the LoRA layers, Linear with bias on the head) as this
    model's LoRA state: the inverse of :func:`cola_adapters`."""
    targets: LoraTargets = peft_model.cola_targets
    shapes = {n: tuple(p.shape) for n, p in trainable(peft_model)}
    state: dict[str, np.ndarray] = {}
    for name in targets.lora:
        for part in ("A", "B"):
            key = f"{PREFIX}{name}.lora_{part}.{ADAPTER}.weight"
            state[key] = np.asarray(adapters[name][part], np.float32).reshape(shapes[key])
    if targets.head:
        layer, base = targets.layout[targets.head], _head_module(peft_model, targets.head)
        delta = np.asarray(adapters[targets.head]["weight"], np.float32)
        if layer.module_type == "conv1d":
            delta = delta.T
        key = f"{PREFIX}{targets.head}.modules_to_save.{ADAPTER}.weight"
        state[key] = base.weight.detach().float().numpy() + delta.reshape(shapes[key])
        bias = np.asarray(adapters[targets.head].get("bias", np.zeros(layer.d_out)), np.float32)
        if base.bias is not None:
            state[key.replace(".weight", ".bias")] = base.bias.detach().float().numpy() + bias
        elif np.any(bias):
            raise ConfigError(f"the head {targets.head!r} has no bias: PEFT's modules_to_save "
                              "cannot carry the Linear adapter's bias")
    return state


def model_bytes(peft_model: nn.Module) -> int:
    """Bytes of every parameter and buffer a client holds: the frozen base model, the LoRA
    adapters and the head copy."""
    tensors = [*peft_model.parameters(), *peft_model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


# ----------------------------------------------------------------------------------------------
# training


def build_optimizer(peft_model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` or ``torch.optim.SGD`` over the trainable weights with the
    fields of cola-fed's :class:`OptimizerSpec` (lr, weight decay, betas, eps, momentum,
    Nesterov); the schedule and clipping are applied by :func:`train_steps`."""
    params = [p for _, p in trainable(peft_model)]
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                                 weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                           weight_decay=spec.weight_decay, nesterov=spec.nesterov)


def optimizer_state(optimizer: torch.optim.Optimizer, peft_model: nn.Module
                    ) -> dict[str, np.ndarray]:
    """The optimizer's per-parameter state (``<param name>/<slot>``: AdamW's ``step``,
    ``exp_avg``, ``exp_avg_sq``; SGD's ``momentum_buffer``) as numpy copies, e.g. for a
    client's ``context.state``."""
    out = {}
    for name, param in trainable(peft_model):
        for slot, value in optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor):
                out[f"{name}/{slot}"] = value.detach().cpu().numpy().copy()
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, peft_model: nn.Module,
                         state: Mapping[str, Any]) -> None:
    """Restore what :func:`optimizer_state` saved (into an optimizer over the same model)."""
    for name, param in trainable(peft_model):
        slots = {key.rpartition("/")[2]: value for key, value in state.items()
                 if key.rpartition("/")[0] == name}
        if slots:
            optimizer.state[param] = {slot: torch.tensor(np.asarray(value))
                                      for slot, value in slots.items()}


def to_torch(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def loss_fn_of(peft_model: nn.Module) -> LossFn:
    """The loss ColA's server computes for this base model (``default_loss``)."""
    return peft_model.cola_loss_fn


def train_steps(peft_model: nn.Module, batches: Iterable[Batch], optimizer_spec: OptimizerSpec,
                steps: int, *, optimizer: torch.optim.Optimizer | None = None,
                first_step: int = 1) -> list[float]:
    """``steps`` optimizer steps of backprop through the LoRA model, one batch of ``batches``
    each; the losses.

    The learning rate of step ``k`` (counted from ``first_step``, 1-based, over the node's whole
    run) follows ``optimizer_spec``'s warmup and linear decay (:meth:`OptimizerSpec.lr_at`);
    with ``max_grad_norm`` the global gradient norm is clipped as
    ``torch.nn.utils.clip_grad_norm_`` does (and ColA's learners). ``optimizer`` carries
    state across calls; without it a fresh one is built.
    """
    optimizer = optimizer or build_optimizer(peft_model, optimizer_spec)
    params = [p for _, p in trainable(peft_model)]
    loss_fn = loss_fn_of(peft_model)
    stream = iter(batches)
    losses = []
    for k in range(first_step, first_step + steps):
        batch = to_torch(next(stream))
        labels = batch.pop("labels")
        for group in optimizer.param_groups:
            group["lr"] = optimizer_spec.lr_at(k)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(logits_of(peft_model(**batch)), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {k}: the training loss is {float(loss)}")
        loss.backward()
        if optimizer_spec.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, optimizer_spec.max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def predict(peft_model: nn.Module, batch: Batch) -> torch.Tensor:
    """Logits of the LoRA model for one batch (``labels`` is ignored)."""
    inputs = {k: v for k, v in to_torch(batch).items() if k != "labels"}
    return logits_of(peft_model(**inputs))


def evaluate(peft_model: nn.Module, task: Task, batches: Iterable[Batch]) -> dict[str, float]:
    """The task's metrics (accuracy, loss; perplexity for language models) over ``batches``,
    scored exactly as ColA's server scores a node (:func:`cola_fed.tasks.scoring.score`)."""
    return score(task, batches, lambda batch: predict(peft_model, batch),
                 loss_fn_of(peft_model))
