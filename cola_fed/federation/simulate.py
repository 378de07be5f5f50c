"""Run a ColA experiment on Flower's local simulation engine, cleanly.

``flwr run .`` starts a background SuperLink that outlives the run. This wrapper gives each run
its own ``FLWR_HOME`` and free ports, disables runtime dependency installation, and afterwards
stops exactly the processes that serve its ports (by PID; never by name), so nothing is left
behind and parallel runs do not collide.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from cola_fed.config import RunConfig, flatten, tomllib
from cola_fed.errors import ColaError, ConfigError
from cola_fed.federation.checkpoint import Checkpoint
from cola_fed.federation.node_store import STATE_DIR_ENV

PROJECT = Path(__file__).resolve().parents[2]
SIMULATIONS = PROJECT / "simulations"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resolve(name: str) -> Path:
    """A simulation config by name (``simulations/NAME.toml``) or path."""
    path = Path(name)
    if path.suffix != ".toml":
        path = SIMULATIONS / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in SIMULATIONS.glob("*.toml"))
        what = f"file {path.resolve()}" if Path(name).suffix == ".toml" else repr(name)
        raise ConfigError(f"no simulation config {what}; known: {known}")
    return path


def simulate(name: str, *, output_dir: str | Path | None = None, num_supernodes: int | None = None,
             overrides: dict[str, Any] | None = None, timeout: float = 3600,
             stream: bool = True, resume: bool = False) -> Path:
    """Run simulation ``name``; return its results folder (metrics.json, curve, adapters,
    checkpoint). With ``resume``, go on from the folder's checkpoint: the simulated nodes find
    their states in ``<results>/node-state`` (see docs/operations.md)."""
    path = resolve(name)
    values = flatten(tomllib.loads(path.read_text()))
    values.update(overrides or {})
    out = Path(output_dir or values.get("output-dir") or f"results/{path.stem}").resolve()
    values["output-dir"] = str(out)
    if resume:
        values["checkpoint.resume"] = True
    config = RunConfig.from_flat(values)  # fail early, with a clear message
    if config.wire.server_key and not Path(config.wire.server_key).expanduser().is_file():
        raise ConfigError(f"wire.server-key: no file {config.wire.server_key!r} (a typo? create "
                          f"one with: cola-fed keygen --out {config.wire.server_key})")
    nodes = num_supernodes or config.strategy.min_available_nodes
    node_state = out / "node-state"
    if resume and not Checkpoint(out / "checkpoint").exists():
        raise ConfigError(f"no checkpoint in {out / 'checkpoint'}: nothing to resume (run "
                          "without --resume to start afresh, or give the --out of the run "
                          "to resume)")
    if not resume and node_state.exists():  # a fresh run; the earlier one's kept aside
        aside = out / "node-state.previous"
        shutil.rmtree(aside, ignore_errors=True)
        node_state.rename(aside)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cola-flwr-") as home:
        run_config = Path(home) / "run-config.toml"
        run_config.write_text(tomli_w.dumps(values))
        http_port, control_port = free_port(), free_port()
        env = {**os.environ, "FLWR_HOME": home,
               "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
               "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
               "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "HF_HUB_OFFLINE": "1",
               # simulated nodes trust the simulation's server on first use, and forget it
               # with the simulation: no trust state carries over to other runs or keys
               "COLA_FED_KNOWN_SERVERS": str(Path(home) / "known-servers.json"),
               # each simulated node keeps its state in partition-<id> here, for --resume
               STATE_DIR_ENV: str(node_state),
               # flwr starts flower-superlink and flwr-simulation from PATH
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        command = [str(Path(sys.executable).parent / "flwr"), "run", str(PROJECT),
                   "--stream", "--federation-config", f"num-supernodes={nodes}",
                   "--run-config", str(run_config)]
        try:
            result = subprocess.run(command, env=env, timeout=timeout, check=False,
                                    stdout=None if stream else subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        finally:
            stop_processes_on_ports(http_port, control_port)
        metrics = out / "metrics.json"  # a stale file must not pass for this run
        if result.returncode != 0 or not metrics.is_file() or metrics.stat().st_mtime < started:
            tail = "" if stream else f"\n{(result.stdout or '')[-3000:]}"
            why = (f"flwr run exited with {result.returncode}" if result.returncode else
                   "the ServerApp wrote no results; its error is in the log above")
            raise ColaError(f"simulation {path.stem!r} failed: {why}{tail}")
    return out


def flower_processes_on_ports(*ports: int) -> list[int]:
    """PIDs of Flower processes whose command line names one of ``ports`` (a run's SuperLink,
    its SuperExec and the simulation it spawned)."""
    marks = {str(p) for p in ports}
    mine = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == mine:
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = {w.decode(errors="ignore").rsplit(":", 1)[-1] for w in args}
        if words & marks and any(b"flwr" in a or b"flower" in a for a in args):
            pids.append(int(entry.name))
    return pids


def stop_processes_on_ports(*ports: int, grace: float = 5.0) -> list[int]:
    """Stop :func:`flower_processes_on_ports`: SIGTERM, then SIGKILL after ``grace`` seconds.
    Returns the PIDs that needed SIGKILL."""
    pids = flower_processes_on_ports(*ports)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.1)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True

