"""An experiment: one task, several arms, partitions and seeds, all from one TOML file.

``experiments/NAME.toml``::

    [experiment]
    description = "MiniLM-L6 on Rotten Tomatoes"
    nodes = 4              # federated nodes; central arms pool their samples
    rounds = 30            # one optimizer step per node per round, in every arm
    evaluate-every = 10    # rounds between evaluations on the server-held test set
    seeds = [0, 1, 2]
    partitions = ["iid", "dirichlet"]
    arms = ["peft-central", "cola-central", "cola-col", "cola-unmerged", "fedavg-lora",
            "local-lora"]
    lr-sweep = [1e-3, 3e-3, 1e-2]   # chosen once, applied to every arm (see runner)
    cost-rounds = 5        # rounds of the cost run (cola_fed.experiments.costs); 0: none

    [run-config]           # cola-fed's flat run config, shared by every arm
    "task.name" = "digits"
    "task.server-test-size" = 300
    ...

    [smoke]                # what CI runs: replaces keys of [experiment] and [run-config]
    rounds = 2
    "run-config" = { "task.batch-size" = 8 }

Every arm sees the same model, data, samples, steps, batch size, learning rate, initial
adapters and target modules; what differs is only who computes what.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
from cola_fed.experiments.costs import MIN_ROUNDS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

#: every arm, in the order tables show them
ARMS = ("peft-central", "cola-central", "cola-col", "cola-unmerged", "fedavg-lora", "local-lora")
#: what the arms mean, for tables and plots
ARM_LABELS = {
    "peft-central": "(A) PEFT LoRA, central, pooled samples",
    "cola-central": "(B) ColA, central, same batches",
    "cola-col": "(C) ColA on Flower, col mode (one shared model)",
    "cola-unmerged": "(C) ColA on Flower, personalised (unmerged)",
    "fedavg-lora": "(D) FedAvg-LoRA on Flower",
    "local-lora": "(E) LoRA on each node's own partition alone",
}
PARTITIONS = ("iid", "dirichlet")
#: where ``cola-fed experiment NAME`` looks for ``NAME.toml``
EXPERIMENTS_DIR = Path("experiments")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment, checked at load.

    Parameters
    ----------
    name : str
        The file's stem; results are written under it.
    run_config : dict
        cola-fed's flat run config every arm shares (task, model, adapters, optimizer).
    description : str
        One line for reports.
    nodes : int
        Federated nodes (the central arms pool the same nodes' samples).
    rounds : int
        Rounds; every node takes one optimizer step per round, in every arm (the central arms
        take ``nodes`` steps per round, one per node's batch).
    evaluate_every : int
        Rounds between evaluations on the server-held test set (and after the last).
    seeds : tuple of int
        ``task.seed`` of each repetition: partitions, batches, heads and adapters.
    partitions : tuple of str
        ``iid`` and/or ``dirichlet`` (label skew, ``task.dirichlet-alpha``).
    arms : tuple of str
        Which of :data:`ARMS` to run.
    lr_sweep : tuple of float
        Learning rates tried once (arm ``peft-central``, first seed, first partition); the best
        is applied to every arm. Empty: ``optimizer.lr`` of ``run_config``.
    cost_rounds : int
        Rounds of the cost run after the arms (:mod:`cola_fed.experiments.costs`: step time
        and peak memory of the server, a PyTorch node, an ONNX node and a FedAvg-LoRA client,
        each in a process of its own); 0 skips it.
    """

    name: str
    run_config: dict[str, Any]
    description: str = ""
    nodes: int = 4
    rounds: int = 20
    evaluate_every: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    partitions: tuple[str, ...] = PARTITIONS
    arms: tuple[str, ...] = ARMS
    lr_sweep: tuple[float, ...] = ()
    cost_rounds: int = 5

    def __post_init__(self) -> None:
        for key in ("nodes", "rounds", "evaluate_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"experiment {self.name!r}: {key.replace('_', '-')} must be a "
                                  f"positive integer, got {value!r}")
        if (not isinstance(self.cost_rounds, int) or isinstance(self.cost_rounds, bool)
                or not (self.cost_rounds == 0 or self.cost_rounds >= MIN_ROUNDS)):
            raise ConfigError(f"experiment {self.name!r}: cost-rounds must be 0 (no cost run) "
                              f"or at least {MIN_ROUNDS} (the first round is warm-up), got "
                              f"{self.cost_rounds!r}")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                     for s in self.seeds):
            raise ConfigError(f"experiment {self.name!r}: seeds must be non-negative integers")
        for what, values, known in (("arms", self.arms, ARMS),
                                    ("partitions", self.partitions, PARTITIONS)):
            unknown = [v for v in values if v not in known]
            if not values or unknown or len(set(values)) != len(values):
                raise ConfigError(f"experiment {self.name!r}: {what} must be distinct values "
                                  f"of {', '.join(known)}; got {list(values)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v) and v > 0 for v in self.lr_sweep):
            raise ConfigError(f"experiment {self.name!r}: lr-sweep must be positive numbers")
        checked = RunConfig.from_flat(self.arm_config(self.seeds[0], self.partitions[0]))
        if checked.task.server_test_size <= 0:
            raise ConfigError(f"experiment {self.name!r}: every arm is scored on the server-held "
                              "test set; set task.server-test-size in [run-config]")

    def arm_config(self, seed: int, partition: str, lr: float | None = None) -> dict[str, Any]:
        """The flat run config of one repetition: this seed, partition, rounds and nodes."""
        flat = {**self.run_config, "task.seed": seed, "task.partitioner": partition,
                "num-server-rounds": self.rounds, "strategy.min-available-nodes": self.nodes,
                "strategy.evaluate-every": self.evaluate_every}
        if lr is not None:
            flat["optimizer.lr"] = lr
        return flat

    @classmethod
    def load(cls, name_or_path: str | Path, *, smoke: bool = False) -> ExperimentConfig:
        """``experiments/NAME.toml`` (or a path), with its ``[smoke]`` overrides if asked."""
        path = Path(name_or_path)
        if path.suffix != ".toml":
            path = EXPERIMENTS_DIR / f"{name_or_path}.toml"
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as err:
            known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))
            raise ConfigError(
                f"no experiment {str(name_or_path)!r} ({err.strerror}: {path}); known in "
                f"{EXPERIMENTS_DIR.resolve()}/: {', '.join(known) or 'none'} (run from the "
                "repository root, or pass the path of a .toml file)") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: {err}") from None
        unknown = set(raw) - {"experiment", "run-config", "smoke"}
        if unknown:
            raise ConfigError(f"{path}: unknown tables {sorted(unknown)}; expected [experiment], "
                              "[run-config] and optionally [smoke]")
        experiment = dict(raw.get("experiment", {}))
        run_config = dict(raw.get("run-config", {}))
        for table in ("experiment", "run-config", "smoke"):
            if not isinstance(raw.get(table, {}), dict):
                raise ConfigError(f"{path}: [{table}] must be a table")
        if smoke:
            overrides = dict(raw.get("smoke", {}))
            smoke_run_config = overrides.pop("run-config", {})
            if not isinstance(smoke_run_config, dict):
                raise ConfigError(f'{path}: [smoke] "run-config" must be a table of run '
                                  "config keys")
            run_config.update(smoke_run_config)
            experiment.update(overrides)
        fields = {f.name.replace("_", "-"): f.name for f in dataclasses.fields(cls)}
        fields.pop("name"), fields.pop("run-config")
        unknown = set(experiment) - set(fields)
        if unknown:
            raise ConfigError(f"{path}: unknown [experiment] keys {sorted(unknown)}; known: "
                              f"{', '.join(sorted(fields))}")
        lists = {"seeds", "partitions", "arms", "lr-sweep"}
        for key in lists & set(experiment):
            if not isinstance(experiment[key], list):
                raise ConfigError(f"{path}: {key} must be a list, e.g. {key} = "
                                  f"[{experiment[key]!r}]")
        values = {fields[k]: tuple(v) if isinstance(v, list) else v
                  for k, v in experiment.items()}
        return cls(name=path.stem, run_config=run_config, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """The experiment a results file records (:meth:`to_dict`), checked again."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in values.items() if k in known})


__all__ = ["ARMS", "ARM_LABELS", "EXPERIMENTS_DIR", "PARTITIONS", "ExperimentConfig"]
