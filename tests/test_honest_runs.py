"""Runs end honestly: nothing `cola-fed simulate` starts outlives it, even a SIGKILL of it; a
resume that another live server's lock refuses exits non-zero and prints no numbers; a lock
left by a server that is gone is recognised as such and taken over with a warning.

The real-process tests run `cola-fed simulate` as a user does (the console script, in its own
process) with its own TMPDIR, so that every process of the run is found by that folder (in the
environment, as the run's FLWR_HOME, or on the command line), never by name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cola_fed.errors import ConfigError
from cola_fed.federation.checkpoint import Checkpoint

LOCK_FILE = ".lock"  # the checkpoint's record of who holds it (docs/operations.md)

BIN = Path(sys.executable).parent


def process_start(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat, field 22)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
#: digits on 2 nodes, rounds that take about a second: room to kill it in round 2
RUN_TOML = """num-server-rounds = 6
task.name = "digits"
task.batch-size = 32
task.eval-batches = 2
adapter.kind = "lowrank"
adapter.rank = 4
strategy.min-available-nodes = 2
strategy.evaluate-every = 3
edge.graphs = false
"""

HOLD_LOCK = """
import os, sys, time
from cola_fed.federation.checkpoint import Checkpoint
Checkpoint(sys.argv[1]).lock()
print("locked", flush=True)
touch = sys.argv[2:]
while True:  # an orphaned run goes on writing its results
    for path in touch:
        os.utime(path)
    time.sleep(0.3)
"""


def hold_lock(folder: Path, *touch: Path) -> subprocess.Popen:
    """Another live server: a process that holds ``folder``'s lock (and keeps ``touch``
    fresh, as a run left going keeps writing its metrics)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), *map(str, touch)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------------------------------
# the lock, alone


def test_a_live_holder_is_refused_and_named(tmp_path):
    holder = hold_lock(tmp_path / "checkpoint")
    try:
        with pytest.raises(ConfigError, match=rf"another server is writing .*process "
                                              rf"{holder.pid} .*kill {holder.pid}"):
            Checkpoint(tmp_path / "checkpoint").lock()
        assert Checkpoint(tmp_path / "checkpoint").holder().pid == holder.pid
    finally:
        stop(holder)
    assert Checkpoint(tmp_path / "checkpoint").holder() is None  # it went with its process


def test_a_lock_left_by_a_dead_server_is_taken_over_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "checkpoint"
    holder = hold_lock(folder)
    stop(holder)  # SIGKILL: no unlock, its record stays
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == holder.pid
    checkpoint = Checkpoint(folder)
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        checkpoint.lock()
    try:
        assert f"taking over the lock of server process {holder.pid}, which is no longer " \
               "running" in caplog.text
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        checkpoint.unlock()
    assert (folder / LOCK_FILE).read_bytes() == b""  # a clean end leaves no holder's record


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path, caplog):
    """The record names a pid that runs, but a process that started at another time: the
    server that wrote it is gone and its pid was reused."""
    folder = tmp_path / "checkpoint"
    folder.mkdir(mode=0o700)
    other = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start(other.pid)
        (folder / LOCK_FILE).write_text(json.dumps(
            {"pid": other.pid, "start": start - 1, "boot": ""}))
        (folder / LOCK_FILE).chmod(0o600)
        assert Checkpoint(folder).holder() is None
        with caplog.at_level(logging.WARNING, logger="cola_fed"):
            Checkpoint(folder).lock()
        assert f"server process {other.pid}, which is no longer running (its pid now " \
               "belongs to another process)" in caplog.text
    finally:
        stop(other)


@pytest.mark.parametrize("record", [
    b'{"pid": 1, "pid": 2, "start": null, "boot": ""}',     # duplicate key
    b'{"pid": true, "start": null, "boot": ""}',             # a bool is no pid
    b'{"pid": 5, "start": null, "boot": "", "more": 1}',     # a field too many
    b'[' * 5000,                                              # deep and large
    b'{"pid": 99999999999, "start": null, "boot": ""}',      # out of range
])
def test_a_hostile_lock_record_is_never_trusted(tmp_path, caplog, record):
    folder = tmp_path / "checkpoint"
    folder.mkdir(mode=0o700)
    (folder / LOCK_FILE).write_bytes(record)
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        Checkpoint(folder).lock()  # the kernel's lock is free: taken, with a warning
    assert "checkpoint lock" in caplog.text and "taking the lock over" in caplog.text
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_planted_link_as_lock_record_is_refused_and_the_lock_released(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir(mode=0o700)
    (folder / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    for _ in range(2):  # the second try meets the link again, not a lock left held
        with pytest.raises(ConfigError, match="is a symbolic link"):
            Checkpoint(folder).lock()
    assert not (tmp_path / "elsewhere").exists()
    assert Checkpoint(folder).holder() is None


def test_a_checkpoint_folder_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path):
    """Someone who could write the results folder links ``checkpoint`` to a folder of the
    user's: the server refuses it, rather than lock, prune or move aside the files there."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "round-3.json").write_text("the user's own file")
    (tmp_path / "checkpoint").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        Checkpoint(tmp_path / "checkpoint").lock()
    assert sorted(p.name for p in target.iterdir()) == ["round-3.json"]


# ------------------------------------------------------------------------------------------
# real runs


def processes_under(folder: Path) -> list[str]:
    """The processes whose environment or command line names ``folder`` (the run's TMPDIR:
    its FLWR_HOME, Ray's session folder, the app), as "pid command"."""
    mark = os.fsencode(str(folder))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        flwr_home = [w for w in environ.split(b"\0") if w.startswith(b"FLWR_HOME=")]
        if any(mark in w for w in flwr_home) or mark in cmdline:
            command = cmdline.replace(b"\0", b" ")[:120].decode(errors="replace")
            found.append(f"{entry.name} {command}")
    return found


def cola_fed(*args: str, tmpdir: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmpdir), "NO_COLOR": "1"}
    return subprocess.Popen([str(BIN / "cola-fed"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture(scope="module")
def killed_run():
    """`cola-fed simulate` killed with SIGKILL in round 2; yields (results folder, config,
    TMPDIR of the run, its processes a few seconds later)."""
    root = Path(tempfile.mkdtemp(prefix="ck", dir="/tmp"))  # short: Ray's socket paths
    tmpdir = root / "t"
    tmpdir.mkdir()
    config = root / "run.toml"
    config.write_text(RUN_TOML)
    out = root / "out"
    proc = cola_fed("simulate", str(config), "--out", str(out), tmpdir=tmpdir)
    pointer = out / "checkpoint" / "LATEST"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None and not (
            pointer.is_file() and pointer.read_text() == "round-1.json"):
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    left: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = processes_under(tmpdir)
        if not left:
            break
        time.sleep(0.25)
    yield out, config, tmpdir, left
    for line in processes_under(tmpdir):  # never leave them to the next test
        os.kill(int(line.split()[0]), signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_sigkilled_simulate_leaves_no_process_and_resumes(killed_run):
    out, config, tmpdir, left = killed_run
    assert left == [], f"processes of the killed run still alive 10 s later: {left}"
    assert list(tmpdir.iterdir()) == []  # its temporary folder went with it
    resumed = cola_fed("simulate", str(config), "--out", str(out), "--resume", tmpdir=tmpdir)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:] + stdout[-3000:]
    assert "taking over the lock of server process" in stdout  # the killed run's record
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(7))
    assert processes_under(tmpdir) == []


@pytest.mark.slow
def test_a_resume_refused_by_a_live_lock_exits_non_zero_with_no_numbers(killed_run):
    """Another server holds the checkpoint and goes on writing metrics.json (a run left
    going): `--resume` says who holds it and exits 1, without any results."""
    out, config, tmpdir, _ = killed_run
    holder = hold_lock(out / "checkpoint", out / "metrics.json")
    try:
        resumed = cola_fed("simulate", str(config), "--out", str(out), "--resume",
                           tmpdir=tmpdir)
        stdout, stderr = resumed.communicate(timeout=600)
    finally:
        stop(holder)
    assert resumed.returncode != 0, stdout[-2000:]
    assert f"another server is writing {out / 'checkpoint'}: process {holder.pid}" in stderr
    assert "held-out accuracy" not in stdout and "results:" not in stdout
    assert processes_under(tmpdir) == []


def test_a_second_simulate_in_the_same_folder_is_refused_at_once(tmp_path):
    """A ``--resume`` typed twice: the first holds ``.simulate.lock`` from its start (its
    ServerApp takes the checkpoint's lock only tens of seconds later), so the second is refused
    in a second, naming the folder, before it starts Flower; the lock goes with its holder."""
    from cola_fed.errors import ColaError
    from cola_fed.federation.simulate import one_simulate_per_folder, simulate

    out = tmp_path / "run"
    with one_simulate_per_folder(out):
        started = time.monotonic()
        with pytest.raises(ColaError, match="another cola-fed simulate is running"):
            simulate("digits", output_dir=out, resume=True, stream=False)
        assert time.monotonic() - started < 30  # no Flower started
        assert not (out / "node-state").exists() and not (out / "metrics.json").exists()
    with one_simulate_per_folder(out):  # released when its holder ends
        pass
    (out / ".simulate.lock").unlink()
    (out / ".simulate.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ColaError, match="a link or another user's file"), \
            one_simulate_per_folder(out):
        pass
    assert not (tmp_path / "elsewhere").exists()
