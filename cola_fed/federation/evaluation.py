"""Evaluation on the server: each node's held-out batches (and the server-held test set) through
the model that node trains through, the optional ROUGE-L, and the round's progress line."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
from cola_fed.federation.sessions import NodeSession
from cola_fed.tasks.base import Task
from cola_fed.tasks.scoring import score

log = logging.getLogger("cola_fed")


class Evaluation:
    """A part of ``ColaStrategy``: reads its ``config``, ``task``, ``engine``, ``members``,
    ``server_test`` and ``col_aggregate``; adds to ``rounds`` and each session's history."""

    def _init_evaluation(self, task: Task, config: RunConfig) -> None:
        """Refuses ``task.rouge-prompts`` for a task that does not generate text; takes the
        server-held test set (``task.server-test-size``)."""
        if config.task.rouge_prompts:
            if not hasattr(task, "rouge_examples"):
                raise ConfigError(f"task.rouge-prompts: the {task.name} task does not "
                                  "generate text; set it to 0")
            task.rouge_examples  # noqa: B018 - refuses now what could not be scored later
        self.server_test = task.server_test_batches() if config.task.server_test_size else []

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The task's metrics (accuracy, loss; perplexity and ROUGE-L for language models) on
        every node's held-out batches (and on the server-held test set when
        ``task.server-test-size`` is set) of the model that node trains through: its own
        adapters, or in ``col`` mode the collaborative model. Quarantined nodes are left out
        (of the collaborative model too); a node whose evaluation fails is left out of the
        round's figures."""
        every = self.config.strategy.evaluate_every
        last = server_round == self.config.num_server_rounds
        if server_round % every and not last and server_round != 0:
            return None
        active = [s for s in self.members.values() if not s.quarantined]
        held_out: dict[int, dict[str, float]] = {}
        server: dict[int, dict[str, float]] = {}
        for session in active:
            try:
                held_out[session.partition_id] = self._scores(session, session.eval_batches)
                if self.server_test:
                    server[session.partition_id] = self._scores(session, self.server_test)
            except Exception as err:
                held_out.pop(session.partition_id, None)
                server.pop(session.partition_id, None)
                log.warning("round %d: evaluation of %s failed: %s: %s", server_round,
                            session.node, type(err).__name__, err)
                continue
            if self.config.task.rouge_prompts and (server_round == 0 or last):
                try:  # an optional metric: its failure costs the others nothing
                    held_out[session.partition_id]["rouge-l"] = self._rouge(session)
                except Exception as err:
                    log.warning("round %d: ROUGE-L of %s failed: %s: %s", server_round,
                                session.node, type(err).__name__, err)
        if not held_out:
            return None
        metrics: dict[str, float] = {}
        for prefix, per_node in (("", held_out), ("server-", server)):
            for name in dict.fromkeys(n for scores in per_node.values() for n in scores):
                metrics.update(_spread(f"{prefix}{name}", [scores.get(name, math.nan)
                                                           for scores in per_node.values()]))
        for session in active:
            if session.partition_id not in held_out:
                continue
            entry = {"round": server_round, **held_out[session.partition_id]}
            entry.update({f"server-{k}": v for k, v in
                          server.get(session.partition_id, {}).items()})
            session.history.append(entry)
        if self.rounds and self.rounds[-1]["round"] == server_round:
            self.rounds[-1].update(metrics)
        elif server_round == 0:
            self.rounds.append({"round": 0, **metrics})
        self._progress(server_round, metrics)
        return MetricRecord(metrics)

    def _scores(self, session: NodeSession, batches: list[dict[str, np.ndarray]]
                ) -> dict[str, float]:
        """The task's metrics (accuracy, loss, ...) over ``batches``, of the model this node
        trains through: its own adapters, or in ``col`` mode the collaborative model (the mean
        delta W of all nodes outside quarantine)."""
        return score(self.task, batches, lambda batch: self._predict(session, batch),
                     self.engine.loss_fn)

    def _predict(self, session: NodeSession, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the model this node trains through."""
        if self.config.strategy.mode == "col":
            members = {n: s for n, s in self.members.items() if not s.quarantined}
            return self.engine.predict_col(
                batch, {str(n): s.adapters for n, s in members.items()},
                specs={str(n): s.specs for n, s in members.items()},
                aggregate=self.col_aggregate)
        return self.engine.predict(batch, session.adapters, spec=session.specs)

    def _rouge(self, session: NodeSession) -> float:
        """ROUGE-L of greedy generations on server-held test prompts, through this node's
        model."""
        return self.task.rouge_l(lambda batch: self._predict(session, as_torch(batch)))

    def _progress(self, server_round: int, metrics: dict[str, float]) -> None:
        which = "collaborative model" if self.config.strategy.mode == "col" else "personalised"
        parts = [f"{name} {metrics[f'{name}-mean']:.4g} ± {metrics[f'{name}-std']:.3g}"
                 for name in ("accuracy", "loss", "perplexity", "rouge-l")
                 if f"{name}-mean" in metrics]
        if "accuracy-mean" in metrics:
            parts[0] += (f" (min {metrics['accuracy-min']:.3f}, "
                         f"max {metrics['accuracy-max']:.3f})")
        server = [f"{name} {metrics[f'server-{name}-mean']:.4g}"
                  for name in ("accuracy", "perplexity") if f"server-{name}-mean" in metrics]
        log.info("round %d: held-out (%s, over nodes) %s%s%s", server_round, which,
                 "; ".join(parts), f"; server test set {', '.join(server)}" if server else "",
                 " (base model)" if server_round == 0 else "")


def _spread(name: str, values: Iterable[float]) -> dict[str, float]:
    """Mean, spread and range of a metric over nodes; a node whose value is not finite (its
    adapters blow the loss up) is left out of that metric, and with no finite value so is it."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return {}
    return {f"{name}-mean": statistics.fmean(values), f"{name}-std": statistics.pstdev(values),
            f"{name}-min": min(values), f"{name}-max": max(values)}


def as_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A batch held as numpy arrays, as tensors (sharing their memory)."""
    return {k: torch.as_tensor(v) for k, v in batch.items()}
