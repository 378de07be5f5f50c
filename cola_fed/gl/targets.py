"""Find the layers to adapt in a torch model, by name, suffix or pattern, as PEFT does."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from cola_fed.errors import TargetError
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.suggest import did_you_mean

#: how many layer names an unmatched target's error lists
SHOWN_NAMES = 12

#: Default targets per Hugging Face ``model_type``, following PEFT's LoRA defaults.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "bart": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
}

Targets = str | Sequence[str] | None


def _is_conv1d(module: nn.Module) -> bool:
    # Hugging Face's Conv1D (GPT-2): a linear layer whose weight is stored as [d_in, d_out].
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def layer_info(name: str, module: nn.Module) -> LayerInfo:
    """Describe one adaptable module, or raise :class:`TargetError` if it cannot be adapted."""
    if isinstance(module, nn.Linear):
        return LayerInfo(name, module.in_features, module.out_features, "linear",
                         module.bias is not None)
    if _is_conv1d(module):
        d_in, d_out = module.weight.shape
        return LayerInfo(name, int(d_in), int(d_out), "conv1d", module.bias is not None)
    if isinstance(module, nn.Conv2d):
        return _conv2d_info(name, module)
    raise TargetError(
        f"target {name!r} is a {type(module).__name__}; cola-fed adapts nn.Linear, nn.Conv2d "
        "and Hugging Face Conv1D modules. Choose targets that name such layers."
    )


def _conv2d_info(name: str, module: nn.Conv2d) -> LayerInfo:
    """Describe an ``nn.Conv2d``: adapters see it as rows of unfolded receptive fields, which
    only a dense (``groups=1``), zero-padded convolution is a plain matrix product of."""
    if module.groups != 1:
        raise TargetError(f"target {name!r} is an nn.Conv2d with groups={module.groups}; "
                          "cola-fed adapts only groups=1 convolutions")
    if module.padding_mode != "zeros":
        raise TargetError(f"target {name!r} is an nn.Conv2d with padding_mode="
                          f"{module.padding_mode!r}; cola-fed adapts only padding_mode='zeros'")
    kh, kw = module.kernel_size
    dilation = (int(module.dilation[0]), int(module.dilation[1]))
    if module.padding == "same":
        # torch pads total = dilation * (k - 1) per side pair; only an even total is symmetric
        totals = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
        if any(total % 2 for total in totals):
            raise TargetError(f"target {name!r}: padding='same' with kernel {(kh, kw)} and "
                              f"dilation {dilation} pads asymmetrically; cola-fed needs "
                              "symmetric padding (use an odd kernel or explicit padding)")
        padding = (totals[0] // 2, totals[1] // 2)
    elif module.padding == "valid":
        padding = (0, 0)
    else:
        padding = (int(module.padding[0]), int(module.padding[1]))
    return LayerInfo(name, module.in_channels * kh * kw, module.out_channels, "conv2d",
                     module.bias is not None, kernel_size=(int(kh), int(kw)),
                     stride=(int(module.stride[0]), int(module.stride[1])), padding=padding,
                     dilation=dilation)


def default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in DEFAULT_TARGETS:
        return list(DEFAULT_TARGETS[model_type])
    raise TargetError(
        f"no default targets for model_type {model_type!r}; set adapter.targets (or pass "
        f"targets=[...]) to the names of the layers to adapt, e.g. \"q_proj,v_proj\" "
        f"(defaults exist for {sorted(DEFAULT_TARGETS)})"
    )


def find_targets(model: nn.Module, targets: Targets = None) -> tuple[Layout, dict[str, nn.Module]]:
    """The adapted layers of ``model`` and their modules, in model order.

    ``targets`` is ``None`` (defaults by ``model.config.model_type``), a regular expression that
    must match the whole module name, or a list whose entries match a module name exactly or as a
    dotted suffix (``"query"`` matches ``"encoder.layer.0.attention.self.query"``).
    """
    if targets is None:
        targets = default_targets(model)
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        pattern = re.compile(targets)
        chosen = [n for n in names if pattern.fullmatch(n)]
        if not chosen:
            raise TargetError(f"target pattern {targets!r} matches no module of the model")
    else:
        targets = list(targets)
        if not targets:
            raise TargetError("targets is empty: name at least one layer to adapt")
        chosen = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
        modules = dict(model.named_modules())
        adaptable = [n for n in names if _adaptable(modules[n])]
        for target in targets:
            if not any(n == target or n.endswith("." + target) for n in chosen):
                raise TargetError(unmatched_target_message(target, adaptable or names))
    modules = dict(model.named_modules())
    layout = Layout(tuple(layer_info(name, modules[name]) for name in chosen))
    return layout, {name: modules[name] for name in chosen}


def _adaptable(module: nn.Module) -> bool:
    """Whether :func:`layer_info` accepts the module's type (nn.Linear, Conv1D, nn.Conv2d)."""
    return isinstance(module, (nn.Linear, nn.Conv2d)) or _is_conv1d(module)


def unmatched_target_message(target: str, names: Sequence[str]) -> str:
    """Why ``target`` (one entry of ``adapter.targets``) is refused: the closest names a target
    could give instead (difflib, over the modules' dotted suffixes as long as the target's),
    and the short names of the layers that can be adapted.

    Parameters
    ----------
    target : str
        The entry that matches no module.
    names : sequence of str
        Full module names to suggest from: the adaptable ones where the model has any.
    """
    parts = target.count(".") + 1
    suffixes = dict.fromkeys(".".join(n.split(".")[-parts:]) for n in names)
    hint = did_you_mean(target, suffixes, n=3)
    short = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
    shown = ", ".join(short[:SHOWN_NAMES]) + (f", ... ({len(short) - SHOWN_NAMES} more)"
                                              if len(short) > SHOWN_NAMES else "")
    return (f"adapter.targets: target {target!r} matches no module of the model{hint} "
            f"(layers it can adapt, by last name: {shown}; a target matches a module's full "
            "name or its last dotted parts)")
