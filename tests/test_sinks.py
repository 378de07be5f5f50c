"""logging.tensorboard and logging.mlflow: a real digits run over LocalGrid records every
round's metrics.json values in TensorBoard event files and an MLflow file store, read back with
each tool's own reader; a resumed run goes on in the same places."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from federation_runs import run_with_state

from cola_fed.config import LoggingConfig, RunConfig
from cola_fed.errors import ConfigError
from cola_fed.federation.sinks import LINEAGE_TAG, MLFLOW_EXPERIMENT, require

LOGGING = {"logging.tensorboard": True, "logging.mlflow": True, "checkpoint.every": 1}


def expected(metrics: dict) -> dict[str, dict[int, float]]:
    """metrics.json's per-round numbers: name -> {round: value}."""
    values: dict[str, dict[int, float]] = {}
    for record in metrics["rounds"]:
        for name, value in record.items():
            if name != "round" and isinstance(value, (int, float)) and math.isfinite(value):
                values.setdefault(name, {})[record["round"]] = float(value)
    return values


def tensorboard_values(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, dict[int, float]] = {}
    for events in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, {}).update(
                {e.step: e.value for e in accumulator.Scalars(tag)})
    return values


def mlflow_runs(folder: Path) -> list:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=folder.absolute().as_uri())
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id])


def mlflow_values(client, run_id: str, names) -> dict[str, dict[int, float]]:
    values = {}
    for name in names:
        history = client.get_metric_history(run_id, name)
        values[name] = {m.step: m.value for m in history}
        assert len(history) == len(values[name]), f"{name}: a step logged twice"
    return values


def assert_close(seen: dict[str, dict[int, float]], want: dict[str, dict[int, float]]) -> None:
    assert set(seen) == set(want)
    for name in want:
        assert set(seen[name]) == set(want[name]), name
        for step, value in want[name].items():
            # TensorBoard keeps float32
            assert seen[name][step] == pytest.approx(value, rel=1e-6, abs=1e-6), (name, step)


@pytest.mark.slow
def test_each_round_is_recorded_as_metrics_json_says_and_a_resume_goes_on(tmp_path):
    """~15 s: 2 rounds, then 1 more resumed; every value of metrics.json, and nothing else,
    is in both stores at its round."""
    out = tmp_path / "run"
    run_with_state(out, run_id=7, nodes=2, rounds=2, overrides=LOGGING)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ended"] is True and metrics["num-server-rounds"] == 2
    want = expected(metrics)
    assert {"train-loss", "accuracy-mean", "bytes-down"} <= set(want)
    assert_close(tensorboard_values(out / "tensorboard"), want)
    client, runs = mlflow_runs(out / "mlruns")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["task.name"] == "digits"
    assert runs[0].data.tags[LINEAGE_TAG] == "7"
    assert_close(mlflow_values(client, runs[0].info.run_id, want), want)

    run_with_state(out, run_id=8, nodes=2, rounds=3, resume=True, overrides=LOGGING)
    metrics = json.loads((out / "metrics.json").read_text())
    want = expected(metrics)
    assert 3 in want["train-loss"]
    assert_close(tensorboard_values(out / "tensorboard"), want)
    client, runs = mlflow_runs(out / "mlruns")
    assert len(runs) == 1, "a resumed run goes on in the same MLflow run"
    assert_close(mlflow_values(client, runs[0].info.run_id, want), want)


def test_logging_is_off_by_default_and_typed():
    assert RunConfig.from_flat({}).logging == LoggingConfig(tensorboard=False, mlflow=False)
    with pytest.raises(ConfigError, match=r"^logging\.mlflow: "):
        RunConfig.from_flat({"logging.mlflow": "yes"})


def test_a_sink_not_installed_is_refused_with_the_extra_to_install(monkeypatch):
    """Where the packages cannot be imported (blocked as Python blocks them: None in
    sys.modules), the config is refused at once, naming the extra to install."""
    require(LoggingConfig(tensorboard=True, mlflow=True))  # installed here: accepted
    for key in ("tensorboard", "mlflow"):
        monkeypatch.setitem(sys.modules, key, None)
        with pytest.raises(ConfigError) as refused:
            require(LoggingConfig(**{key: True}))
        assert f"logging.{key} = true" in str(refused.value)
        assert f"pip install 'cola-fed[{key}]'" in str(refused.value)
    require(LoggingConfig())  # off: nothing needed


@pytest.mark.slow
def test_a_sink_that_cannot_open_is_warned_about_and_the_run_goes_on(tmp_path, caplog):
    """The results folder is anyone's: a file planted where the TensorBoard folder goes makes
    that sink fail to open, which is warned about; the run does every round all the same."""
    import logging

    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        strategy, _ = run_with_state(out, run_id=5, nodes=2, rounds=1,
                                     overrides={"logging.tensorboard": True})
    metrics = json.loads((out / "metrics.json").read_text())
    assert not strategy.stopped and not metrics.get("stopped-early"), strategy.stopped
    assert metrics["last-round"] == 1 and metrics["ended"] is True
    assert "logging.tensorboard" in caplog.text and "cannot open" in caplog.text
    assert (out / "tensorboard").read_text() == "not a folder"
