"""Hand a trained ColA Low Rank adapter to the PEFT ecosystem as a LoRA adapter folder.

ColA Low Rank with rank r and scale 1 is LoRA with ``r = lora_alpha = r``; the folder this writes
loads with ``peft.PeftModel.from_pretrained(base_model, folder)`` and gives the same outputs as the
ColA-adapted model. A head adapted with a Linear adapter (the frozen, freshly initialised
classifier) is exported as PEFT's ``modules_to_save``: base head weights plus the adapter.

On an ``nn.Conv2d`` the Low Rank factors are stored as rows (``A [r, C_in*kh*kw]``,
``B [C_out, r]``), which are PEFT's LoRA Conv2d ``lora_A.weight [r, C_in, kh, kw]`` and
``lora_B.weight [C_out, r, 1, 1]`` flattened; they are reshaped back on export.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cola_fed.adapters.registry import infer_spec
from cola_fed.errors import AdapterError
from cola_fed.gl.targets import find_targets


def export_peft(
    model: nn.Module,
    adapters: Mapping[str, Mapping[str, Any]],
    out: str | Path,
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` for ``adapters``.

    ``model`` is the frozen base the adapters were trained on (its head's weights are needed for
    ``modules_to_save``). Every adapter must be Low Rank of one rank, or Linear (heads).
    ``task_type`` is PEFT's (``SEQ_CLS``, ``CAUSAL_LM``, ``SEQ_2_SEQ_LM``), which the
    ``AutoPeftModelFor...`` classes need; ``None`` for a base PEFT has no auto class for.
    :func:`cola_fed.export_bundle.export_node_adapters` adds the base, tokenizer and card.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    layout, modules = find_targets(model, list(adapters))
    lora_layers, heads, ranks = [], [], set()
    for name in adapters:
        spec = infer_spec({k: torch.as_tensor(v) for k, v in adapters[name].items()})
        if spec.kind == "lowrank":
            lora_layers.append(name)
            ranks.add(spec.rank)
        elif spec.kind == "linear":
            heads.append(name)
        else:
            raise AdapterError(f"layer {name!r}: only Low Rank (and Linear heads) export to PEFT, "
                               f"got {spec.kind!r}")
    if len(ranks) != 1:
        raise AdapterError(f"PEFT LoRA needs one rank for all layers, got {sorted(ranks)}")
    for name in lora_layers:
        if layout[name].is_conv2d and layout[name].dilation != (1, 1):
            # PEFT builds lora_A with the base kernel, stride and padding but not its dilation
            raise AdapterError(f"layer {name!r}: PEFT's LoRA Conv2d ignores dilation "
                               f"{layout[name].dilation}; it cannot reproduce this adapter")
    rank = ranks.pop()
    fan_in_fan_out = any(layout[n].module_type == "conv1d" for n in lora_layers)
    config = LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none",
        target_modules=lora_layers, modules_to_save=heads or None,
        fan_in_fan_out=fan_in_fan_out,
        base_model_name_or_path=base_model_name_or_path, task_type=task_type,
    )
    tensors: dict[str, torch.Tensor] = {}
    for name in lora_layers:
        params = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in adapters[name].items()}
        a, b = params["A"], params["B"]
        if layout[name].is_conv2d:
            a = a.reshape(rank, layout[name].in_channels, *layout[name].kernel_size)
            b = b.reshape(*b.shape, 1, 1)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    for name in heads:
        module = modules[name]
        params = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in adapters[name].items()}
        delta = params["weight"]  # [d_out, d_in], to the module's own weight layout
        if layout[name].module_type == "conv1d":
            delta = delta.T
        weight = module.weight.detach().float() + delta.reshape(module.weight.shape)
        tensors[f"base_model.model.{name}.weight"] = weight.contiguous()
        if "bias" in params and module.bias is None:
            raise AdapterError(f"layer {name!r} has no bias for its adapter's bias; PEFT's "
                               "modules_to_save cannot carry it")
        if module.bias is not None:
            bias = module.bias.detach().float() + params.get("bias", torch.zeros_like(module.bias))
            tensors[f"base_model.model.{name}.bias"] = bias.contiguous()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out
