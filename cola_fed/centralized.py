"""ColA without a network: one server engine and one client learner in one process.

This is the whole algorithm in a few lines (compute adaptation data, take a Gradient Learning
step, repeat) and the baseline a federated run must reproduce.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cola_fed.adapters.spec import AdapterSpec

log = logging.getLogger("cola_fed")


@dataclass(frozen=True)
class DemoConfig:
    """The centralized MiniLM-L6 / Rotten Tomatoes fine-tune of ``make demo``.

    Parameters
    ----------
    steps : int
        Optimizer steps (one batch each).
    batch_size, max_length : int
        Reviews per batch and tokens per review (padded to this length).
    lr : float
        AdamW learning rate of the adapters.
    rank : int
        Rank of the Low Rank adapters on ``query`` and ``value``; the frozen, freshly initialised
        classification head gets a Linear adapter with bias.
    test_size : int
        Held-out reviews for the accuracy before and after.
    seed : int
        Seeds the split, the head and the adapters.
    log_every : int
        Steps between progress lines.
    """

    steps: int = 150
    batch_size: int = 32
    max_length: int = 64
    lr: float = 1e-3
    rank: int = 8
    test_size: int = 500
    seed: int = 0
    log_every: int = 25


@dataclass
class DemoResult:
    accuracy_before: float
    accuracy_after: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
                "losses": self.losses, "seconds": self.seconds}


def run_demo(config: DemoConfig = DemoConfig()) -> DemoResult:
    """Fine-tune MiniLM-L6 on Rotten Tomatoes with ColA, in process; accuracy before and after."""
    from cola_fed.gl.engine import ServerEngine
    from cola_fed.gl.learner import GradientLearner
    from cola_fed.tasks.text_classification import (
        encode,
        load_minilm_classifier,
        load_rotten_tomatoes,
        split,
    )

    train, test = split(load_rotten_tomatoes(), config.test_size, seed=config.seed)
    model, tokenizer = load_minilm_classifier(seed=config.seed)
    engine = ServerEngine(model, targets=["query", "value", "classifier"])
    spec = {"*": AdapterSpec(kind="lowrank", rank=config.rank),
            "classifier": AdapterSpec(kind="linear", bias=True)}
    learner = GradientLearner(engine.layout, spec, optimizer="adamw", lr=config.lr,
                              seed=config.seed)
    log.info("ColA demo: MiniLM-L6, %d adapted layers, %d training and %d test reviews",
             len(engine.layout), len(train), len(test))

    def accuracy() -> float:
        correct = 0
        for lo in range(0, len(test), 100):
            batch = encode(tokenizer, test.texts[lo:lo + 100], test.labels[lo:lo + 100],
                           config.max_length)
            logits = engine.predict(batch, learner.adapter_state(), spec=spec)
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
        return correct / len(test)

    result = DemoResult(accuracy_before=accuracy(), accuracy_after=float("nan"))
    log.info("accuracy before: %.3f", result.accuracy_before)
    start = time.perf_counter()
    for step in range(config.steps):
        lo = (step * config.batch_size) % (len(train) - config.batch_size)
        batch = encode(tokenizer, train.texts[lo:lo + config.batch_size],
                       train.labels[lo:lo + config.batch_size], config.max_length)
        data = engine.compute({"client": batch}, {"client": learner.adapter_state()},
                              specs={"client": spec})["client"]
        learner.fit(data)
        result.losses.append(data.loss)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            recent = result.losses[-config.log_every:]
            log.info("step %4d/%d  loss %.4f  %.1f s", step + 1, config.steps,
                     sum(recent) / len(recent), time.perf_counter() - start)
    result.seconds = time.perf_counter() - start
    result.accuracy_after = accuracy()
    log.info("accuracy after:  %.3f (%.0f s of training)", result.accuracy_after, result.seconds)
    return result
