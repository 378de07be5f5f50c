"""SIGTERM to `cola-fed simulate` stops the run as Ctrl-C does (docs/operations.md, "Checkpoints
and resume"): every process it started is stopped and the command that resumes is printed, with
SIGTERM's exit status 143. Seen in a user trial (issue 23): it exited 143 in silence."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

RUN_TOML = """num-server-rounds = 30
task.name = "digits"
task.batch-size = 32
task.eval-batches = 1
adapter.kind = "lowrank"
adapter.rank = 4
strategy.min-available-nodes = 2
strategy.evaluate-every = 30
edge.graphs = false
"""


def processes_naming(folder: Path) -> list[str]:
    """Processes whose environment or command line names ``folder`` (the run's TMPDIR)."""
    mark = os.fsencode(str(folder))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if mark in text:
            found.append(f"{entry.name} {(entry / 'cmdline').read_bytes()[:100]!r}")
    return found


@pytest.mark.slow
def test_sigterm_stops_the_run_and_prints_the_command_that_resumes():
    root = Path(tempfile.mkdtemp(prefix="st", dir="/tmp"))  # short: Ray's socket paths
    tmpdir, out, config = root / "t", root / "out", root / "run.toml"
    tmpdir.mkdir()
    config.write_text(RUN_TOML)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "COLA_FED"))},
           "TMPDIR": str(tmpdir), "NO_COLOR": "1", "COLA_FED_HOME": str(root / "home")}
    proc = subprocess.Popen([str(BIN / "cola-fed"), "simulate", str(config), "--out", str(out)],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pointer = out / "checkpoint" / "LATEST"
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None and not (
                pointer.is_file() and pointer.read_text() == "round-1.json"):
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it was stopped: {proc.communicate()}"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 143, stderr[-3000:]
        assert "terminated; the run's checkpoint of its last round is kept" in stderr, stderr
        assert f"cola-fed simulate {config} --out {out} --resume" in stderr
        left: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (left := processes_naming(tmpdir)):
            time.sleep(0.25)
        assert left == [], f"processes of the stopped run still alive: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for line in processes_naming(tmpdir):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
