"""Follow a run from its results folder, read-only: ``cola-fed watch OUTPUT_DIR``.

The server replaces ``metrics.json`` after every round (atomically, but the folder is anyone's:
the file may be missing, growing, huge, a FIFO, half written by something else or not JSON).
Everything here reads it as hostile input: bounded in size, opened without blocking, parsed
strictly, every field type-checked; what cannot be read is reported and retried, never
trusted. Nothing here writes, locks or creates anything. Torch-free.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cola_fed.federation.failures import printable

METRICS_FILE = "metrics.json"
MAX_METRICS_BYTES = 64 * 2**20
"""The largest metrics.json read (a run of 1,000 nodes and 1,000 rounds stays far below)."""
ETA_WINDOW = 5
"""Rounds whose durations the ETA averages (the latest ones)."""
GONE_AFTER = 10.0
"""Seconds a run's server must be seen gone before a watcher says so (it releases its
checkpoint a moment before its last write)."""


class MetricsUnreadable(Exception):
    """metrics.json exists but cannot be read as a run's metrics (yet)."""


@dataclass(frozen=True)
class Snapshot:
    """What a run's metrics.json says, at one moment.

    Parameters
    ----------
    state : str
        ``running``, ``finished`` (every round done and the final results written),
        ``stopped`` (ended early; ``stopped`` says why) or ``gone`` (its server ended without
        a final write: killed).
    last_round, total_rounds : int
        Rounds completed, and the run's ``num-server-rounds`` (0 when the file does not say).
    nodes, failed : int
        Nodes that trained in the last round, and sampled nodes that did not.
    members, quarantined : int
        Nodes that joined the run, and those quarantined.
    loss : float or None
        The last round's mean client training loss.
    score : tuple or None
        The latest held-out evaluation: ``(name, mean)``, e.g. ``("accuracy", 0.81)``.
    eta : float or None
        Seconds until the last round ends, from the latest rounds' durations.
    age : float
        Seconds since metrics.json was last written.
    errors : dict
        Partition id -> the last error of nodes that have one (and nodes refused at hello).
    stopped : str
        Why the run ended early (empty: it did not).
    """

    state: str
    last_round: int
    total_rounds: int
    nodes: int = 0
    failed: int = 0
    members: int = 0
    quarantined: int = 0
    loss: float | None = None
    score: tuple[str, float] | None = None
    eta: float | None = None
    age: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    stopped: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ("finished", "stopped", "gone")


def read_metrics(folder: str | Path, *, limit: int = MAX_METRICS_BYTES) -> tuple[dict, float]:
    """The run's metrics.json as a dict, and its modification time.

    Raises
    ------
    FileNotFoundError
        No metrics.json (yet).
    MetricsUnreadable
        It is not a regular file, larger than ``limit``, or not a JSON object (e.g. being
        replaced by something that does not replace atomically): try again later.
    """
    path = Path(folder) / METRICS_FILE
    try:  # O_NONBLOCK: a FIFO planted there must not hang the watcher
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise MetricsUnreadable(f"cannot open {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MetricsUnreadable(f"{path} is not a regular file")
        if info.st_size > limit:
            raise MetricsUnreadable(f"{path} is {info.st_size / 2**20:.0f} MiB, more than the "
                                    f"{limit / 2**20:.0f} MiB cola-fed watch reads")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while being read
        raise MetricsUnreadable(f"{path} grew past {limit / 2**20:.0f} MiB while being read")
    try:
        metrics = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise MetricsUnreadable(f"{path} is not valid JSON (yet?): {err}") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("rounds"), list):
        raise MetricsUnreadable(f"{path} is not a cola-fed run's metrics (no 'rounds' list)")
    return metrics, info.st_mtime


def snapshot(folder: str | Path, *, now: float | None = None) -> Snapshot:
    """The run's state from its results folder (see :func:`read_metrics` for what it
    raises)."""
    metrics, mtime = read_metrics(folder)
    now = time.time() if now is None else now
    rounds = [r for r in metrics["rounds"]
              if isinstance(r, dict) and _int(r.get("round")) is not None]
    last_round = _int(metrics.get("last-round"))
    if last_round is None:
        last_round = max((r["round"] for r in rounds if "nodes" in r), default=0)
    total = _int(metrics.get("num-server-rounds")) or 0
    trained = [r for r in rounds if "nodes" in r]
    last = trained[-1] if trained else {}
    nodes = metrics.get("nodes") if isinstance(metrics.get("nodes"), dict) else {}
    members = [n for n in nodes.values() if isinstance(n, dict)]
    # text from the file (node error reasons among it) is shown, never obeyed by a terminal
    errors = {printable(str(p)[:40]): printable(str(n["last-error"])[:200])
              for p, n in nodes.items() if isinstance(n, dict) and n.get("last-error")}
    refused = metrics.get("refused-at-hello")
    if isinstance(refused, dict):
        errors.update({printable(f"node {str(k)[:40]}"):
                       f"refused at hello: {printable(str(v)[:200])}"
                       for k, v in list(refused.items())[:20]})
    stopped = metrics.get("stopped-early")
    stopped = printable(str(stopped)[:500]) if stopped else ""
    ended = metrics.get("ended") is True or ("ended" not in metrics and bool(total)
                                             and last_round >= total)
    if ended and not stopped and total and last_round < total:  # e.g. its server was stopped
        stopped = f"the server ended after round {last_round} of {total}"
    state = "stopped" if stopped else "finished" if ended else "running"
    return Snapshot(
        state=state, last_round=last_round, total_rounds=total,
        nodes=_int(last.get("nodes")) or 0, failed=_int(last.get("failed")) or 0,
        members=len(members), quarantined=sum(n.get("quarantined") is True for n in members),
        loss=_number(last.get("train-loss")), score=_latest_score(rounds),
        eta=None if state != "running" else _eta(metrics, last_round, total, now),
        age=max(0.0, now - mtime), errors=errors, stopped=stopped)


def describe(snap: Snapshot, folder: str | Path = "") -> str:
    """One line (and one per failing node) for a terminal or a log."""
    total = f"/{snap.total_rounds}" if snap.total_rounds else ""
    parts = [f"{folder}: " if folder else "", f"round {snap.last_round}{total}"]
    if snap.total_rounds:
        parts.append(f" ({100 * min(snap.last_round / snap.total_rounds, 1):.0f}%)")
    parts.append(f"  {snap.nodes} nodes ({snap.failed} failed)")
    if snap.quarantined:
        parts.append(f", {snap.quarantined} quarantined")
    if snap.loss is not None:
        parts.append(f"  loss {snap.loss:.4f}")
    if snap.score is not None:
        parts.append(f"  {snap.score[0]} {snap.score[1]:.4f}")
    if snap.state == "running":
        parts.append(f"  ETA {format_seconds(snap.eta)}" if snap.eta is not None
                     else "  ETA after the next round")
        parts.append(f"  (updated {format_seconds(snap.age)} ago)")
    else:
        parts.append({"finished": "  finished", "stopped": "  stopped early",
                      "gone": "  its server is gone (killed?) without a final write"}
                     [snap.state])
    lines = ["".join(parts)]
    if snap.stopped:
        lines.append(f"  stopped early: {snap.stopped}")
    lines += [f"  partition {p}: {why}" if p.isdigit() else f"  {p}: {why}"
              for p, why in sorted(snap.errors.items())[:10]]
    return "\n".join(lines)


def format_seconds(seconds: float | None) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours
            else f"{rest // 60}:{rest % 60:02d}")


def server_gone(folder: str | Path) -> bool:
    """Whether the run's server has certainly ended without its final write: the record of
    who holds its checkpoint (read, never locked) names a process of this machine's boot that
    no longer runs. False where that cannot be told (no record, another machine's server, an
    unreadable record)."""
    from cola_fed.errors import ColaError
    from cola_fed.federation.checkpoint import Checkpoint
    from cola_fed.federation.run_processes import boot_id

    try:
        record = Checkpoint(Path(folder) / "checkpoint").holder_record()
    except (ColaError, OSError):
        return False
    return (record is not None and bool(record.boot) and record.boot == boot_id()
            and not record.alive())


def watch(folder: str | Path, *, once: bool = False, interval: float = 1.0,
          show: Callable[[str], None] = print, retries: int = 3) -> int:
    """Follow the run in ``folder`` until it ends (or, with ``once``, show one snapshot).
    Returns the exit status: 0 for a finished run (with ``once``: also one still running), 1
    for a run that stopped early or whose server is gone, and with ``once`` when there is
    nothing to show."""
    folder = Path(folder)
    said_waiting = said_unreadable = ""
    shown = ""
    gone_since: float | None = None
    tries = 0
    while True:
        try:
            snap = snapshot(folder)
        except FileNotFoundError:
            message = (f"{folder}: no run yet (no {METRICS_FILE}; the server writes it after "
                       "its first round)" if folder.is_dir() else
                       f"{folder}: no such folder yet (a run's --out / output-dir)")
            if once:
                show(message)
                return 1
            if message != said_waiting:
                show(message + "; waiting")
                said_waiting = message
            time.sleep(interval)
            continue
        except MetricsUnreadable as err:
            tries += 1
            if once and tries >= retries:
                show(f"{err}")
                return 1
            if not once and str(err) != said_unreadable and tries >= retries:
                show(f"{err}; retrying")
                said_unreadable = str(err)
            time.sleep(min(interval, 0.2) if tries < retries else interval)
            continue
        tries = 0
        if snap.state == "running" and server_gone(folder):
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since >= GONE_AFTER or once:
                snap = Snapshot(**{**snap.__dict__, "state": "gone", "eta": None})
        else:
            gone_since = None
        text = describe(snap, folder)
        first_line = text.splitlines()[0].split("  (updated")[0]
        if once or snap.ended or first_line != shown:
            show(text)
            shown = first_line
        failed = snap.state == "gone" or (snap.ended and snap.state != "finished")
        if once:  # a script can tell a dead or failed run by the status alone
            return 1 if failed else 0
        if snap.ended or snap.state == "gone":
            return 1 if failed else 0
        time.sleep(interval)


def _eta(metrics: dict[str, Any], last_round: int, total: int, now: float) -> float | None:
    """Seconds left: the mean duration of the latest rounds (end to end, this server process's
    rounds only) times the rounds left, less the time the current round has run."""
    ended = metrics.get("round-ended-at")
    if not total or not isinstance(ended, dict):
        return None
    times = sorted((int(k), t) for k, t in ((k, _number(v)) for k, v in ended.items())
                   if k.isascii() and k.isdigit() and len(k) < 10 and t is not None)
    gaps = [(t1 - t0) / (r1 - r0) for (r0, t0), (r1, t1) in itertools.pairwise(times)
            if r1 > r0]
    if not gaps:
        return None
    per_round = sum(gaps[-ETA_WINDOW:]) / len(gaps[-ETA_WINDOW:])
    since = max(0.0, now - times[-1][1])
    return max(0.0, per_round * max(0, total - last_round) - since)


def _latest_score(rounds: list[dict[str, Any]]) -> tuple[str, float] | None:
    """The latest held-out evaluation: accuracy where the task has it, else perplexity, else
    loss (the nodes' means)."""
    for record in reversed(rounds):
        for name in ("accuracy", "perplexity", "loss"):
            value = _number(record.get(f"{name}-mean"))
            if value is not None:
                return (name, value)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
