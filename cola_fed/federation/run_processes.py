"""The processes of one run, and making sure none outlives it.

``cola-fed simulate`` starts a tree of processes it does not fully control: the SuperLink, the
SuperExec the SuperLink starts (in a session of its own), the simulation process the SuperExec
starts, and the Ray processes of that simulation (GCS, raylet, dashboard, agents, workers).
Flower's ``--parent-pid`` makes each Flower process follow its parent, but only while every
link of the chain is reaped in time; a ``kill -9`` of ``cola-fed simulate`` used to leave the
SuperLink, the SuperExec and a finished simulation behind.

So every run is marked, and stopped by its mark:

- each process of the run has the run's ``FLWR_HOME`` in its environment (inherited from the
  processes ``cola-fed simulate`` starts), or one of the run's folders on its command line
  (Ray's agents, which get a cleaned environment but name their session folder, in a Ray
  folder of the run's own through ``RAY_TMPDIR``): :func:`run_processes` finds them, never by
  name;
- the processes ``cola-fed simulate`` starts itself get the parent-death signal
  (:func:`die_with_parent`, Linux ``PR_SET_PDEATHSIG``);
- a guard process (:class:`Guard`, ``python -m cola_fed.federation.run_processes``) waits on a
  pipe that only ``cola-fed simulate`` holds open: when that closes, because the run ended or
  because its process died (even by SIGKILL), the guard stops every process of the run
  (SIGTERM, then SIGKILL), removes the run's folder if its owner died, and exits.

Also: a process's identity as ``(pid, start time)`` (:func:`process_start`), so that a pid
the kernel has since given to another process is not taken for the one recorded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cola_fed.federation.failures import printable
from cola_fed.federation.node_store import STATE_DIR_ENV
from cola_fed.wire.identity import KNOWN_SERVERS_ENV

PR_SET_PDEATHSIG = 1  # linux/prctl.h
GRACE_S = 5.0
"""How long the processes of a run get between SIGTERM and SIGKILL."""


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22):
    with the pid, it names one process, even after the pid is reused. None when there is no
    such process (or no ``/proc``); a zombie counts as none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and ")"
    if len(fields) < 20 or fields[0] in ("Z", "X") or not fields[19].isdigit():
        return None
    return int(fields[19])


def boot_id() -> str:
    """This boot's id (start times compare only within one boot); empty where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:64]
    except OSError:
        return ""


def process_alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` runs and, if ``start`` is known, is the one that started then."""
    if pid <= 0:
        return False
    seen = process_start(pid)
    if seen is not None:
        return start is None or seen == start
    if Path("/proc/self/stat").exists():  # /proc works: no such process (or a zombie)
        return False
    try:  # no /proc: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def command_line(pid: int, limit: int = 200) -> str:
    """Process ``pid``'s command line, shortened (for messages), the value of a ``--token``
    option hidden; empty if unknown."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    shown = [w.decode(errors="replace") for w in words if w]
    for i, word in enumerate(shown):  # Flower's run token (flwr-simulation --token) is a secret
        if word.startswith("--token="):
            shown[i] = "--token=***"
        elif word == "--token" and i + 1 < len(shown):
            shown[i + 1] = "***"
    text = " ".join(shown)
    text = printable(text)  # no escapes to a terminal
    return text if len(text) <= limit else text[:limit - 3] + "..."


#: the variables ``cola-fed simulate`` sets for the run's processes whose values lie in the
#: run's folders (simulate.py: known servers, node state, Ray's temp folder)
RUN_VARIABLES = tuple(name.encode() for name in (KNOWN_SERVERS_ENV, STATE_DIR_ENV, "RAY_TMPDIR"))


def die_with_parent() -> None:
    """``preexec_fn`` of a child that must die with the process that starts it, even when that
    one is killed with SIGKILL (Linux; elsewhere the :class:`Guard` alone stops it). The
    child gets SIGTERM, so that it can stop its own children on the way out."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def run_processes(folder: str | Path, *, also: tuple[str, ...] = (),
                  exclude: tuple[int, ...] = ()) -> list[int]:
    """PIDs of the processes of the run whose ``FLWR_HOME`` is ``folder``: this user's
    processes with ``FLWR_HOME=<folder>`` in their environment, or one of the variables the
    run sets for its own processes (:data:`RUN_VARIABLES`) pointing inside ``folder`` or a
    folder in ``also`` (the run's Ray folder), or such a folder on their command line. The
    variables catch Ray's agents, which may run without ``FLWR_HOME`` and retitle their command
    line (``ray::DashboardAgent``) but keep ``COLA_FED_KNOWN_SERVERS=<folder>/...``. Only
    these variables count: a process merely started from inside the folder (``PWD``, say: a
    user's ``less`` of a log there) is not the run's."""
    home = os.fsencode(str(Path(folder)))
    marks = (b"FLWR_HOME=" + home, )
    inside = [os.fsencode(str(Path(f))) + b"/" for f in (folder, *also)]
    owned = [name + b"=" + f for name in RUN_VARIABLES for f in inside]
    mine = {os.getpid(), *exclude}
    found: list[int] = []
    if not Path("/proc/self").is_dir():  # no /proc: the parent-death signal alone
        return found
    me = os.geteuid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            if entry.stat().st_uid != me:  # another user's (readable to root): never ours
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (any(word in marks for word in environ)
                or any(word.startswith(mark) for mark in owned for word in environ)
                or any(f in cmdline for f in inside)):
            found.append(int(entry.name))
    return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (any(word in marks for word in environ)
                or any(f in word for f in inside for word in environ)
                or any(f in cmdline for f in inside)):
            found.append(int(entry.name))
    return found


def stop_run_processes(folder: str | Path, *, also: tuple[str, ...] = (),
                       grace: float = GRACE_S, exclude: tuple[int, ...] = ()) -> list[int]:
    """Stop every process of the run in ``folder`` (:func:`run_processes`): SIGTERM, again
    for any that appear meanwhile, then SIGKILL after ``grace`` seconds. Returns the PIDs
    that needed SIGKILL."""
    signalled: dict[int, int | None] = {}
    deadline = time.monotonic() + grace
    while True:
        alive = run_processes(folder, also=also, exclude=exclude)
        for pid in alive:
            if pid not in signalled:
                signalled[pid] = process_start(pid)
                _signal(pid, signal.SIGTERM)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    killed = []
    for pid in run_processes(folder, also=also, exclude=exclude):
        _signal(pid, signal.SIGKILL)
        killed.append(pid)
    return killed


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Guard:
    """A process that stops every process of a run when the run's owner goes away.

    It reads a pipe whose writing end only this process holds: end of file means this process
    closed it (:meth:`close`, at the end of the run) or died, however. It runs in a session
    of its own, so that a Ctrl-C or a hang-up of the terminal does not stop it first.

    Parameters
    ----------
    folder : str or Path
        The run's ``FLWR_HOME`` (see :func:`run_processes`).
    also : tuple of str
        Other folders of the run (its Ray folder), found on command lines and, if the
        owner dies, removed with ``folder``.
    """

    def __init__(self, folder: str | Path, also: tuple[str, ...] = ()) -> None:
        self.folder = Path(folder)
        self.also = also
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cola_fed.federation.run_processes", str(os.getpid()),
             str(self.folder), *also],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "FLWR_HOME"})

    def close(self, timeout: float = GRACE_S + 10) -> None:
        """Stop the run's processes (the guard does it) and wait for that to finish."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            stop_run_processes(self.folder, also=self.also, grace=1.0)


def _guard(owner: int, folder: str, *also: str) -> None:
    """The guard's body: wait for end of file on stdin, then stop the run's processes."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # outlive the owner's terminal; SIGKILL still works
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    stop_run_processes(folder, also=also, exclude=(owner,))
    if os.getppid() != owner:  # the owner died: nobody else removes the run's folders
        for path in (folder, *also):
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    _guard(int(sys.argv[1]), *sys.argv[2:])
