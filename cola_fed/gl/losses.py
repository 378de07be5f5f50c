"""Per-client mean losses computed from a slice of the mixed batch's outputs.

The server backpropagates the *sum* of the clients' mean losses, so each client's adaptation
gradient is exactly the one it would get alone. That needs each client's loss computed from its
own rows, which the model's built-in ``loss`` (a mean over the whole mixed batch) does not give.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: ``loss_fn(logits, labels) -> scalar`` for one client's rows: the mean over its own samples.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output (a tensor, a Hugging Face output or a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (per sample or per token; label -100 ignored), or MSE for one output."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if logits.shape[-1] == 1 and labels.is_floating_point():
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    if not (labels != -100).any():  # nothing to learn from (e.g. all prompt): no gradient
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the predicted tokens (label -100 ignored)."""
    return classification_loss(logits[:, :-1, :], labels[:, 1:])


def seq2seq_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy of an encoder-decoder LM over its decoder labels (-100 ignored).

    Not shifted: the batch's ``decoder_input_ids`` are the labels already shifted right, so
    the logits at position ``t`` predict ``labels[:, t]``. A batch whose labels are all
    ignored gives a zero loss that still has a graph (:func:`classification_loss`).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"decoder logits {tuple(logits.shape)} do not match the labels "
                         f"{tuple(labels.shape)}: the decoder inputs and the labels must have "
                         "the same length")
    return classification_loss(logits, labels)


#: class-name endings of encoder-decoder LMs (their logits are per decoder token)
SEQ2SEQ_LM_CLASSES = ("ForConditionalGeneration", "MTModel", "EncoderDecoderModel")


def default_loss(model: nn.Module) -> LossFn:
    """The loss a Hugging Face model of this class computes from ``labels``."""
    name = type(model).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return causal_lm_loss
    # decoder-only vision-language models are "...ForConditionalGeneration" too (shifted)
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    if encoder_decoder is True and name.endswith(SEQ2SEQ_LM_CLASSES):
        return seq2seq_lm_loss
    return classification_loss
