"""One way to score a model on the server-held test set, for every arm: the task's own metrics
(accuracy, loss; perplexity for language models), weighted over batches exactly as the ColA
strategy weighs them, so that arms differ only in how they trained."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from cola_fed.tasks.base import Task


def score(task: Task, batches: Iterable[dict[str, np.ndarray]],
          logits_of: Callable[[dict[str, Any]], Any],
          loss_of: Callable[[Any, Any], Any]) -> dict[str, float]:
    """The task's metrics over ``batches`` of the model ``logits_of(batch)`` (torch tensors in,
    logits out) with loss ``loss_of(logits, labels)``."""
    import torch

    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            tensors = {k: torch.as_tensor(v) for k, v in batch.items()}
            labels = tensors["labels"]
            logits = logits_of(tensors)
            loss = float(loss_of(logits, labels))
            for name, (value, weight) in task.metrics(logits, labels, loss).items():
                if weight:  # a batch with nothing to count (all padding) has no say
                    sums[name] = sums.get(name, 0.0) + value * weight
                    weights[name] = weights.get(name, 0.0) + weight
    return task.finish_metrics({name: sums[name] / weights[name] for name in sums})


__all__ = ["score"]
