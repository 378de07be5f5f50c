"""A progress bar with an ETA, on a terminal only, for ``cola-fed simulate`` and ``cola-fed
experiment`` (rich, which Flower already installs).

While the bar is shown, everything written to this process's stdout and stderr, its own log and
that of every process it starts (the Flower processes inherit the descriptors), goes through a
pipe and is printed above the bar, so that log lines and the bar never overwrite each other.
When stdout or stderr is not a terminal nothing changes: the runs' own lines (one per round,
one per experiment arm) are the plain progress.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from cola_fed.watch import MetricsUnreadable, format_seconds, snapshot

POLL_SECONDS = 0.5


def on_terminal() -> bool:
    """Whether a bar may be drawn: stdout and stderr are both a terminal that is not dumb."""
    try:
        return (sys.stdout.isatty() and sys.stderr.isatty()
                and os.environ.get("TERM", "") != "dumb")
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class TerminalBar:
    """One bar at the bottom of the terminal; the process's output scrolls above it. A no-op
    (``shown`` False) when :func:`on_terminal` says no.

    Parameters
    ----------
    description : str
        Shown before the bar.
    unit : str
        What is counted (``rounds``, ``runs``).
    """

    def __init__(self, description: str, unit: str) -> None:
        self.description, self.unit = description, unit
        self.shown = on_terminal()
        self._saved: tuple[int, int] | None = None
        self._relay: threading.Thread | None = None
        self.progress: Any = None

    def __enter__(self) -> TerminalBar:
        if not self.shown:
            return self
        import rich.progress as bars
        from rich.console import Console

        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        terminal = os.fdopen(os.dup(1), "w", buffering=1, errors="replace")
        self.progress = bars.Progress(
            bars.TextColumn("{task.description}"), bars.BarColumn(), bars.MofNCompleteColumn(),
            bars.TextColumn(self.unit), bars.TimeElapsedColumn(),
            bars.TextColumn("{task.fields[info]}"),
            console=Console(file=terminal, force_terminal=True), redirect_stdout=False,
            redirect_stderr=False, refresh_per_second=4)
        self.task = self.progress.add_task(self.description, total=None, info="")
        read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._relay = threading.Thread(target=self._forward, args=(read,), daemon=True,
                                       name="cola-fed-progress-relay")
        self._relay.start()
        self.progress.start()
        return self

    def update(self, completed: int, total: int | None, info: str = "",
               description: str | None = None) -> None:
        """Move the bar (``total`` None: not known yet)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, total=total, info=info,
                                 **({"description": description} if description else {}))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._saved is None:
            return
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(self._saved[0], 1)  # the pipe's last write ends are the children's, if any
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        if self._relay is not None:
            self._relay.join(timeout=2.0)  # what is still in the pipe, printed
        self.progress.stop()

    def _forward(self, fd: int) -> None:
        from rich.text import Text

        console = self.progress.console
        with os.fdopen(fd, "rb") as pipe:
            for raw in pipe:
                console.print(Text.from_ansi(raw.decode("utf-8", "replace").rstrip("\r\n")),
                              soft_wrap=True)


class RunProgress(TerminalBar):
    """A bar of a run's rounds, driven from its results folder (its metrics.json, as ``cola-fed
    watch`` reads it) on a thread of its own once :meth:`follow` names the folder."""

    def __init__(self, description: str) -> None:
        super().__init__(description, "rounds")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, out: Path, config: Any) -> None:
        """Start following ``out`` (``cola-fed simulate``'s ``on_start``)."""
        if not self.shown:
            return
        since = time.time() - 1.0  # an earlier run's metrics.json is not this run's
        self.update(0, config.num_server_rounds, "starting Flower")
        self._thread = threading.Thread(target=self._poll, args=(out, since), daemon=True,
                                        name="cola-fed-progress")
        self._thread.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        super().__exit__(kind, error, trace)

    def _poll(self, out: Path, since: float) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                if (out / "metrics.json").stat().st_mtime < since:
                    continue
                snap = snapshot(out)
            except (OSError, MetricsUnreadable):
                continue  # not written yet, or being replaced: the next poll reads it
            info = [f"{snap.nodes} nodes ({snap.failed} failed)"]
            if snap.loss is not None:
                info.append(f"loss {snap.loss:.4f}")
            if snap.score is not None:
                info.append(f"{snap.score[0]} {snap.score[1]:.3f}")
            if snap.state == "running":
                info.append(f"ETA {format_seconds(snap.eta)}")
            self.update(snap.last_round, snap.total_rounds or None, "  ".join(info))


class JobProgress(TerminalBar):
    """A bar of jobs of similar size (``cola-fed experiment``'s runs): the ETA is the mean
    time of the jobs done times the jobs left."""

    def __init__(self, description: str) -> None:
        super().__init__(description, "runs")
        self._started = time.monotonic()

    def step(self, done: int, total: int, label: str = "") -> None:
        """``done`` of ``total`` jobs are finished; ``label`` names the one now running."""
        if done == 0:
            self._started = time.monotonic()
        eta = ((time.monotonic() - self._started) / done * (total - done)) if done else None
        self.update(done, total, "  ".join(filter(None, [
            label, f"ETA {format_seconds(eta)}" if done < total else ""])))
