"""cola-fed watch OUTPUT_DIR: a running run followed from another process, read-only, from
the metrics.json its server replaces after every round; that file read as hostile input."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from federation_runs import run_with_state

from cola_fed.cli import main
from cola_fed.progress import TerminalBar
from cola_fed.watch import MAX_METRICS_BYTES, snapshot

TESTS = Path(__file__).resolve().parent
WATCH = [sys.executable, "-m", "cola_fed.cli", "watch"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The results folder of a real 2-round digits run over LocalGrid (a few seconds)."""
    out = tmp_path_factory.mktemp("watch") / "run"
    run_with_state(out, run_id=3, nodes=2, rounds=2)
    return out


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*"))}


def test_once_shows_rounds_nodes_loss_and_that_the_run_finished(finished, capsys):
    before = tree(finished)
    assert main(["watch", str(finished), "--once"]) == 0
    shown = capsys.readouterr().out
    metrics = json.loads((finished / "metrics.json").read_text())
    last = metrics["rounds"][-1]
    assert "round 2/2 (100%)" in shown and "2 nodes (0 failed)" in shown
    assert f"loss {last['train-loss']:.4f}" in shown
    assert f"accuracy {last['accuracy-mean']:.4f}" in shown and "finished" in shown
    assert tree(finished) == before, "watching wrote something"


def test_a_running_round_shows_an_eta(finished, tmp_path):
    """metrics.json as the server leaves it after round 1 of 2: ETA from the rounds' pace."""
    metrics = json.loads((finished / "metrics.json").read_text())
    ended = metrics["round-ended-at"]
    assert set(ended) == {"0", "1", "2"}
    metrics.update({"ended": False, "last-round": 1, "round-ended-at":
                    {"0": 100.0, "1": 130.0}, "rounds": metrics["rounds"][:2]})
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    snap = snapshot(tmp_path, now=140.0)
    assert snap.state == "running" and snap.last_round == 1 and snap.total_rounds == 2
    assert snap.eta == pytest.approx(20.0)  # one 30 s round left, 10 s of it gone


def test_no_run_yet_is_said_clearly(tmp_path, capsys):
    assert main(["watch", str(tmp_path / "nothing"), "--once"]) == 1
    assert "no such folder yet" in capsys.readouterr().out
    assert main(["watch", str(tmp_path), "--once"]) == 1
    assert "no run yet" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["partial", "not-json", "not-a-run", "huge", "fifo",
                                 "symlink-to-fifo"])
def test_a_hostile_metrics_file_is_reported_not_a_crash(bad, finished, tmp_path, capsys):
    path = tmp_path / "metrics.json"
    data = (finished / "metrics.json").read_bytes()
    if bad == "partial":  # something that does not replace atomically, caught mid-write
        path.write_bytes(data[: len(data) // 2])
    elif bad == "not-json":
        path.write_bytes(b"\xff\xfe" + b"[" * 100_000)
    elif bad == "not-a-run":
        path.write_text('{"rounds": 3}')
    elif bad == "huge":
        with path.open("wb") as f:
            f.truncate(MAX_METRICS_BYTES + 1)
    elif bad == "fifo":
        os.mkfifo(path)
    else:
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    started = time.monotonic()
    assert main(["watch", str(tmp_path), "--once", "--interval", "0.05"]) == 1
    shown = capsys.readouterr().out
    assert "metrics.json" in shown and "Traceback" not in shown
    assert time.monotonic() - started < 5


def test_text_from_the_file_reaches_the_terminal_without_escape_sequences(finished, tmp_path,
                                                                         capsys):
    """Node error reasons (and anything someone wrote into metrics.json) are shown, never
    obeyed: no ESC, BEL, carriage return or bidirectional override reaches the terminal."""
    metrics = json.loads((finished / "metrics.json").read_text())
    hostile = "\x1b]0;owned\x07\x1b[2J\rdisk \u202efull"
    metrics["nodes"]["0"]["last-error"] = f"round 1: error reply: {hostile}"
    metrics["nodes"][f"9{hostile}"] = {"last-error": hostile}
    metrics["refused-at-hello"] = {f"7{hostile}": hostile}
    metrics["stopped-early"] = hostile
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert main(["watch", str(tmp_path), "--once"]) == 1  # it stopped early
    shown = capsys.readouterr().out
    assert "disk" in shown and "full" in shown and "stopped early" in shown
    assert not {"\x1b", "\x07", "\r", "\u202e"} & set(shown), repr(shown)


def test_a_file_replaced_mid_watch_is_read_again(finished, tmp_path):
    """Following: a half-written file is retried, the real one read, and the finished run
    ends the watch with 0."""
    path = tmp_path / "metrics.json"
    data = (finished / "metrics.json").read_bytes()
    path.write_bytes(data[:100])
    watcher = subprocess.Popen([*WATCH, str(tmp_path), "--interval", "0.2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    assert watcher.poll() is None
    tmp = tmp_path / ".metrics.json.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    output, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, output
    assert "not valid JSON" in output and "round 2/2" in output and "finished" in output


@pytest.mark.slow
def test_following_a_live_run_from_another_process_until_it_ends(tmp_path):
    """A real server process (LocalGrid, 3 rounds, nodes slowed down) is followed by `cola-fed
    watch` started before the run: it waits for it, shows rounds as they end, exits 0 at the
    end. A second run is killed mid-way: the watcher says its server is gone and exits 1."""
    out = tmp_path / "run"
    watcher = subprocess.Popen([*WATCH, str(out), "--interval", "0.3"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    server = subprocess.Popen([sys.executable, str(TESTS / "federation_runs.py"), str(out),
                               "5", "2", "3", "0.5"], cwd=TESTS)
    try:
        output, _ = watcher.communicate(timeout=300)
    finally:
        watcher.kill()
    assert server.wait(timeout=60) == 0
    assert watcher.returncode == 0, output
    assert "no such folder yet" in output and "waiting" in output
    assert "round 1/3" in output and "ETA" in output and "round 3/3 (100%)" in output
    assert output.rstrip().splitlines()[-1].endswith("finished")

    shutil.rmtree(out)
    server = subprocess.Popen([sys.executable, str(TESTS / "federation_runs.py"), str(out),
                               "6", "2", "30", "0.5"], cwd=TESTS, start_new_session=True)
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            try:
                if snapshot(out).last_round >= 1:
                    break
            except Exception:
                pass
            time.sleep(0.3)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        started = time.monotonic()
        result = subprocess.run([*WATCH, str(out), "--interval", "0.5"], capture_output=True,
                                text=True, timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert result.returncode == 1, result.stdout
    assert "its server is gone" in result.stdout
    assert time.monotonic() - started < 30
    once = subprocess.run([*WATCH, str(out), "--once"], capture_output=True, text=True,
                          timeout=120)
    assert once.returncode == 1 and "its server is gone" in once.stdout  # scripts can tell


def test_no_bar_unless_on_a_terminal(capsys):
    with TerminalBar("x", "rounds") as bar:  # pytest's captured output is no terminal
        bar.update(1, 2, "info")
        print("plain")
    assert not bar.shown and capsys.readouterr().out == "plain\n"


def test_a_bar_on_a_terminal_keeps_every_line_of_the_process_and_its_children():
    """On a pseudo-terminal: the bar with its ETA, and the lines the process and a child
    process write, relayed above it."""
    code = ("import subprocess, sys\n"
            "from cola_fed.progress import JobProgress\n"
            "with JobProgress('experiment demo') as bar:\n"
            "    bar.step(0, 3, 'arm-a')\n"
            "    print('own line', flush=True)\n"
            "    subprocess.run([sys.executable, '-c', 'import sys; print(\"child out\"); "
            "print(\"child err\", file=sys.stderr)'])\n"
            "    bar.step(1, 3, 'arm-b')\n"
            "    bar.step(3, 3)\n"
            "print('after', flush=True)\n")
    main_fd, child_fd = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", code], stdin=child_fd, stdout=child_fd,
                               stderr=child_fd, env={**os.environ, "TERM": "xterm",
                                                     "COLUMNS": "120"})
    os.close(child_fd)
    seen = bytearray()
    while True:
        ready, _, _ = select.select([main_fd], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert process.wait(timeout=30) == 0
    text = seen.decode("utf-8", "replace")
    for line in ("own line", "child out", "child err", "after", "3/3", "runs",
                 "experiment demo"):
        assert line in text, (line, text)
