"""The run config of the FedAvg-LoRA baseline: cola-fed's own keys plus a few of its own.

The baseline reads the very flat run config a cola-fed run reads (``task.*``, ``adapter.rank``,
``adapter.targets``, ``optimizer.*``, ``num-server-rounds``, ``strategy.fraction-train``,
``strategy.min-available-nodes``, ``strategy.min-train-nodes``, ``strategy.evaluate-every``,
``strategy.timeout``), so that both arms of a comparison are configured by one dict. The keys
below are the baseline's alone; they are split off before :meth:`RunConfig.from_flat`, which
refuses keys it does not know.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
from cola_fed.federation.protocol import Plan

OPTIMIZER_STATES = ("keep", "reset")


@dataclass(frozen=True)
class BaselineOptions:
    """The baseline's own run config keys (top level, kebab-case, as Flower's).

    Parameters
    ----------
    local_steps : int
        ``local-steps``: optimizer steps (one batch each) a client takes per round.
    optimizer_state : str
        ``optimizer-state``: ``keep`` (default) keeps each client's optimizer state (AdamW
        moments, SGD momentum) across rounds in its Flower ``context.state``, as a ColA client
        keeps its own; ``reset`` starts a fresh optimizer every round, as FlowerTune's
        per-round trainer does.
    results_file : str
        ``results-file``: where the ServerApp writes its results JSON; empty: nowhere (the
        in-process runner takes them from the server context instead).
    """

    local_steps: int = 1
    optimizer_state: str = "keep"
    results_file: str = ""

    def __post_init__(self) -> None:
        if (not isinstance(self.local_steps, int) or isinstance(self.local_steps, bool)
                or self.local_steps < 1):
            raise ConfigError(f"local-steps: expected a positive integer, got "
                              f"{self.local_steps!r}")
        if self.optimizer_state not in OPTIMIZER_STATES:
            raise ConfigError(f"optimizer-state: expected one of {', '.join(OPTIMIZER_STATES)}, "
                              f"got {self.optimizer_state!r}")
        if not isinstance(self.results_file, str):
            raise ConfigError(f"results-file: expected a path, got {self.results_file!r}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The run config keys of the baseline (``local-steps``, ...)."""
        return tuple(f.name.replace("_", "-") for f in dataclasses.fields(cls))


def parse_run_config(flat: dict[str, Any]) -> tuple[RunConfig, BaselineOptions]:
    """Split Flower's flat run config into cola-fed's :class:`RunConfig` and the baseline's
    :class:`BaselineOptions` (each validated, with clear errors)."""
    own = BaselineOptions.keys()
    options = BaselineOptions(**{k.replace("-", "_"): v for k, v in flat.items() if k in own})
    config = RunConfig.from_flat({k: v for k, v in flat.items() if k not in own})
    return config, options


def batch_seed(config: RunConfig, partition_id: int) -> int:
    """The seed of a node's batch stream: ColA's (``Plan.batch_seed``), so that node ``p``
    of both arms draws the same batches in the same order."""
    return Plan.batch_seed(types.SimpleNamespace(task=config.task), partition_id)


def adapter_seed(config: RunConfig, partition_id: int) -> int:
    """The seed of a node's initial adapters: ColA's (``Plan.adapter_seed``). The FedAvg
    global model starts from partition 0's."""
    return Plan.adapter_seed(types.SimpleNamespace(task=config.task), partition_id)
