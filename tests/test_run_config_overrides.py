"""cola-fed simulate NAME --run-config "key=value ...": keys overridden as flwr run does it
(Flower's own parser, TOML values), checked like the simulation's file, form errors refused."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from cola_fed.cli import main
from cola_fed.errors import ConfigError
from cola_fed.federation.simulate import parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_values_are_typed_as_toml_and_equal_flowers_reading():
    text = ("num-server-rounds=5 optimizer.lr=0.01 edge.graphs=false task.name='digits' "
            'task.template="Q: {q} A:" adapter.rank=4')
    overrides = parse_overrides([text])
    assert overrides == parse_config_args([text])
    assert overrides == {"num-server-rounds": 5, "optimizer.lr": 0.01, "edge.graphs": False,
                         "task.name": "digits", "task.template": "Q: {q} A:",
                         "adapter.rank": 4}
    # repeated options are one document: both keys of a section hold
    assert parse_overrides(["adapter.rank=4", "adapter.kind='mlp'"]) == {
        "adapter.rank": 4, "adapter.kind": "mlp"}
    assert parse_overrides([]) == {}


def test_a_toml_file_of_keys(tmp_path):
    path = tmp_path / "over.toml"
    path.write_text("num-server-rounds = 2\n[adapter]\nrank = 2\n")
    assert parse_overrides([str(path)]) == {"num-server-rounds": 2, "adapter.rank": 2}
    with pytest.raises(ConfigError, match="cannot read it"):
        parse_overrides([str(tmp_path / "missing.toml")])


@pytest.mark.parametrize(("text", "says"), [
    ("task.name=digits", "a string needs quotes: task.name='digits'"),
    ("num-server-rounds 5", "expected space-separated key=value pairs, got 'num-server-rounds 5'"),
    ("num-server-rounds=5 oops", "got 'oops'"),
    ("adapter.rank=4 adapter.rank=8", "adapter.rank is given twice"),
    ("optimizer.lr=1e-3.5", "optimizer.lr=1e-3.5: the value is not a TOML value"),
])
def test_form_errors_are_refused_not_dropped(text, says):
    with pytest.raises(ConfigError) as refused:
        parse_overrides([text])
    assert says in str(refused.value)


@pytest.mark.parametrize(("text", "says"), [
    ("adapter.rnak=4", "adapter.rnak"),
    ("num-server-rounds='10'", "num-server-rounds"),
    ("logging.tensorboard=1", "logging.tensorboard"),
])
def test_keys_are_checked_like_the_simulation_file_before_flower_starts(text, says, tmp_path,
                                                                        capsys):
    started = time.monotonic()
    assert main(["simulate", "digits", "--out", str(tmp_path / "out"),
                 "--run-config", text]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert time.monotonic() - started < 10
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_a_simulation_runs_with_its_overrides_and_a_bar_on_a_terminal(tmp_path):
    """One real `cola-fed simulate digits` (2 rounds instead of the file's 60, 2 nodes, TensorBoard
    on) on a pseudo-terminal: the overrides reach the Flower processes, and the terminal shows a
    bar of the rounds with the run's log above it."""
    out = tmp_path / "out"
    env = {**os.environ, "COLA_FED_HOME": str(tmp_path / "home"), "TERM": "xterm",
           "COLUMNS": "160", "HF_HUB_OFFLINE": "1"}
    main_fd, child_fd = pty.openpty()
    command = [sys.executable, "-m", "cola_fed.cli", "simulate", "digits", "--out", str(out),
               "--run-config", "num-server-rounds=2 strategy.min-available-nodes=2",
               "-c", "strategy.evaluate-every=1 logging.tensorboard=true"]
    process = subprocess.Popen(command, stdin=child_fd, stdout=child_fd, stderr=child_fd,
                               env=env, cwd=tmp_path, start_new_session=True)
    os.close(child_fd)
    seen = bytearray()
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(main_fd, 65536)
                except OSError:  # the terminal's other side closed
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None:
                break
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main_fd)
    text = seen.decode("utf-8", "replace")
    assert code == 0, text[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num-server-rounds"] == 2 and metrics["last-round"] == 2
    assert len(metrics["nodes"]) == 2
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").rglob("*"))
    assert "2/2" in text and "rounds" in text  # the bar, complete
    assert "round 2/2" in text  # the server's log, relayed above it
    assert f"results: {out}" in text
