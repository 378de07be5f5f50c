"""Each round's metrics, recorded where users already look: TensorBoard event files
(``logging.tensorboard``) and an MLflow file store (``logging.mlflow``), in the run's
``output-dir``. Both are optional extras, imported only when asked for.

The values are exactly ``metrics.json``'s: every finite number of a round's record, under the
same name, with the round as the step. A resumed run goes on in the same places: TensorBoard
hides the events of the rounds it logs again (``purge_step``), MLflow continues the run of the
same lineage and skips the steps it already holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from cola_fed.config import LoggingConfig
from cola_fed.errors import ConfigError

log = logging.getLogger("cola_fed")

MLFLOW_EXPERIMENT = "cola-fed"
LINEAGE_TAG = "cola-fed.lineage"
# the extra that provides each sink, and the module it needs
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


class MetricSink(Protocol):
    """Somewhere rounds are recorded."""

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def close(self, ended: str) -> None: ...


def require(config: LoggingConfig) -> None:
    """Refuse, before anything runs, a sink whose package is not installed."""
    for key, (extra, module) in EXTRAS.items():
        if getattr(config, key) and not _installed(module):
            raise ConfigError(f"logging.{key} = true needs the {module} package, which is not "
                              f"installed: pip install 'cola-fed[{extra}]' (or set "
                              f"logging.{key} = false)")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: imports of it are blocked
        return False


def flat_params(config: Any) -> dict[str, Any]:
    """A :class:`~cola_fed.config.RunConfig` as its flat run config keys (``adapter.rank``),
    MLflow's params."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f.name.replace("_", "-")
        if dataclasses.is_dataclass(value):
            flat.update({f"{key}.{k}": v for k, v in flat_params(value).items()})
        else:
            flat[key] = value
    return flat


def round_values(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one round's record, as recorded: every finite int or float but the
    round itself."""
    return {k: float(v) for k, v in record.items()
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


class TensorBoardSink:
    """Scalars in ``folder`` (``tensorboard --logdir folder``), one tag per metric."""

    def __init__(self, folder: Path, *, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self, ended: str) -> None:
        self.writer.close()


class MlflowSink:
    """One MLflow run per cola-fed run (tagged with its lineage, so a resumed run continues
    it) in the file store at ``folder``, experiment ``cola-fed``."""

    def __init__(self, folder: Path, *, lineage: int, name: str,
                 params: dict[str, Any]) -> None:
        # MLflow 3 keeps the file store for those who ask for it (the store a results folder
        # can hold, and `mlflow ui --backend-store-uri` opens)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.client = MlflowClient(tracking_uri=folder.absolute().as_uri())
        found = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        experiment = (found.experiment_id if found
                      else self.client.create_experiment(MLFLOW_EXPERIMENT))
        earlier = self.client.search_runs([experiment], max_results=1,
                                          filter_string=f"tags.`{LINEAGE_TAG}` = '{lineage}'",
                                          order_by=["attributes.start_time DESC"])
        self._seen: dict[str, set[int]] = {}
        if earlier:  # a resumed run: go on in the same MLflow run
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self._seen = {key: {m.step for m in self.client.get_metric_history(self.run_id, key)}
                          for key in earlier[0].data.metrics}
        else:
            self.run_id = self.client.create_run(
                experiment, run_name=name, tags={LINEAGE_TAG: str(lineage)}).info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in values.items()
                   if step not in self._seen.get(k, ())]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, ended: str) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if ended else "FINISHED")


class RoundSinks:
    """The sinks a run config asks for, fed each round record once; created at the first
    rounds (when the run's lineage is known). A sink that fails mid-run is warned about and
    dropped: recording must not stop a run."""

    def __init__(self, out: Path, config: LoggingConfig, *, params: dict[str, Any],
                 resumed: bool) -> None:
        require(config)
        self.out, self.config, self.params, self.resumed = out, config, params, resumed
        self.sinks: dict[str, MetricSink] | None = None
        self.logged: set[int] = set()

    @property
    def enabled(self) -> bool:
        return self.config.tensorboard or self.config.mlflow

    def log(self, rounds: Iterable[dict[str, Any]], *, lineage: int) -> None:
        """Record every round not recorded yet."""
        if not self.enabled:
            return
        new = [r for r in rounds if isinstance(r.get("round"), int)
               and r["round"] not in self.logged]
        if not new:
            return
        if self.sinks is None:
            self.sinks = self._open(first=min(r["round"] for r in new), lineage=lineage)
        for record in new:
            values = round_values(record)
            for name, sink in list(self.sinks.items()):
                try:
                    sink.log(record["round"], values)
                except Exception as err:  # a full disk, a broken store: not the run's end
                    log.warning("logging.%s: recording round %d failed (%s: %s); no more "
                                "rounds go there in this run", name, record["round"],
                                type(err).__name__, err)
                    del self.sinks[name]
            self.logged.add(record["round"])

    def close(self, ended: str = "") -> None:
        """End every sink; ``ended`` says why the run stopped early (empty: it did not)."""
        for name, sink in (self.sinks or {}).items():
            try:
                sink.close(ended)
            except Exception as err:
                log.warning("logging.%s: closing failed (%s: %s)", name, type(err).__name__, err)
        self.sinks = {} if self.sinks is not None else None

    def _open(self, *, first: int, lineage: int) -> dict[str, MetricSink]:
        """The sinks asked for; one that cannot open (its folder is a file, a store someone
        else damaged, no space) is warned about and left out: recording must not stop a run."""
        sinks: dict[str, MetricSink] = {}
        if self.config.tensorboard:
            folder = self.out / "tensorboard"
            with self._opening("tensorboard", folder):
                sinks["tensorboard"] = TensorBoardSink(
                    folder, purge_step=first if self.resumed else None)
                log.info("TensorBoard: tensorboard --logdir %s", folder.resolve())
        if self.config.mlflow:
            folder = self.out / "mlruns"
            with self._opening("mlflow", folder):
                sinks["mlflow"] = MlflowSink(folder, lineage=lineage, name=self.out.name,
                                             params=self.params)
                log.info("MLflow: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri "
                         "%s", folder.resolve())
        return sinks

    @staticmethod
    @contextlib.contextmanager
    def _opening(name: str, folder: Path) -> Iterator[None]:
        try:
            yield
        except Exception as err:
            log.warning("logging.%s: cannot open %s (%s: %s); this run's rounds are not "
                        "recorded there", name, folder, type(err).__name__, err)
