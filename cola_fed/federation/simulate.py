"""Run a ColA experiment on Flower's local simulation engine, cleanly.

``flwr run .`` starts a background SuperLink that outlives the run. This wrapper gives each run
its own ``FLWR_HOME`` and free ports, disables runtime dependency installation, and afterwards
stops exactly the processes that serve its ports (by PID; never by name), so nothing is left
behind and parallel runs do not collide.

It needs no source checkout: the experiments are the package's own (``cola_fed/simulations``) or
any TOML file, and the Flower app it runs is written for the run (:func:`write_app`), a
pyproject.toml whose components are the installed package's :mod:`cola_fed.apps`: the same
``[tool.flwr.app]`` as the checkout's pyproject.toml (the tests check).
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
from flwr.common.config import unflatten_dict

from cola_fed import __version__
from cola_fed.config import RunConfig, default_flat_config, flatten, tomllib
from cola_fed.errors import ColaError, ConfigError
from cola_fed.federation.checkpoint import Checkpoint
from cola_fed.federation.client import DATA_PATH_ENV
from cola_fed.federation.node_store import STATE_DIR_ENV
from cola_fed.tasks import get_task
from cola_fed.tasks.registry import ALLOW_TASKS_ENV, TASK_DIRS_ENV
from cola_fed.wire.identity import KNOWN_SERVERS_ENV

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"
"""The built-in simulation configs, shipped in the package: ``cola-fed simulate NAME``."""
PUBLISHER = "cola-fed"
COMPONENTS = {"serverapp": "cola_fed.apps:server_app", "clientapp": "cola_fed.apps:client_app"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def builtin_names() -> list[str]:
    """The names of the built-in simulations."""
    return sorted(p.stem for p in SIMULATIONS.glob("*.toml"))


def resolve(name: str) -> Path:
    """A simulation config: the path of a TOML file (any name ending in ``.toml``, or any path
    with a folder in it; relative to the working directory), else the name of a built-in one."""
    if name.endswith(".toml") or "/" in name or os.sep in name:
        path = Path(name).expanduser()
        if path.is_file():
            return path
        hint = (f" (for the built-in one, give its name: {path.stem!r})"
                if path.stem in builtin_names() else "")
        raise ConfigError(f"no simulation config file {path.absolute()}{hint}; built-in "
                          f"simulations: {', '.join(builtin_names())}")
    path = SIMULATIONS / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"no built-in simulation {name!r}; built-in simulations: "
                          f"{', '.join(builtin_names())} (or give the path of a .toml file)")
    return path


def app_config() -> dict[str, Any]:
    """The Flower app's run config: every key at its default (:func:`default_flat_config`), the
    keys the demo sets (``simulations/default.toml``) at the demo's values. pyproject.toml's
    ``[tool.flwr.app.config]`` is exactly this (tests/test_config.py checks it)."""
    demo = flatten(tomllib.loads((SIMULATIONS / "default.toml").read_text()))
    return {**default_flat_config(), **demo}


def write_app(folder: Path) -> Path:
    """Write the Flower app ``flwr run`` takes into ``folder``: only a pyproject.toml, whose
    components the installed package provides (Flower imports them from ``sys.path``), so no
    source checkout is needed. Returns ``folder``."""
    pyproject = {
        "project": {"name": "cola-fed", "version": __version__, "license": "Apache-2.0",
                    "description": "ColA on Flower, as cola-fed simulate runs it"},
        "tool": {"flwr": {"app": {"publisher": PUBLISHER, "components": COMPONENTS,
                                  "config": unflatten_dict(app_config())}}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    return folder


def simulate(name: str, *, output_dir: str | Path | None = None, num_supernodes: int | None = None,
             overrides: dict[str, Any] | None = None, timeout: float = 3600,
             stream: bool = True, resume: bool = False) -> Path:
    """Run simulation ``name`` (see :func:`resolve`); return its results folder (metrics.json,
    curve, adapters, checkpoint). Keys the file leaves out take the app's defaults
    (:func:`app_config`). With ``resume``, go on from the folder's checkpoint: the simulated
    nodes find their states in ``<results>/node-state`` (see docs/operations.md)."""
    path = resolve(name)
    try:
        chosen = flatten(tomllib.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read simulation config {path}: {err}") from None
    chosen.update(overrides or {})
    out = Path(output_dir or chosen.get("output-dir") or f"results/{path.stem}").resolve()
    values = {**app_config(), **chosen, "output-dir": str(out)}
    if resume:
        values["checkpoint.resume"] = True
    for key in ("task.data-path", "task.model"):  # the Flower processes run elsewhere
        local = Path(str(values.get(key) or "")).expanduser()
        if values.get(key) and local.exists():
            values[key] = str(local.resolve())
    task_dirs = os.getcwd() if ":" in str(values.get("task.name", "")) else ""
    if task_dirs:  # a plugin beside the config is found (searched last)
        os.environ[TASK_DIRS_ENV] = task_dirs
    config = RunConfig.from_flat(values)  # fail early, with a clear message
    if config.wire.server_key and not Path(config.wire.server_key).expanduser().is_file():
        raise ConfigError(f"wire.server-key: no file {config.wire.server_key!r} (a typo? create "
                          f"one with: cola-fed keygen --out {config.wire.server_key})")
    nodes = num_supernodes or config.strategy.min_available_nodes
    try:  # the model, data, columns and partitions, checked before Flower starts
        get_task(config.task).check(nodes)
    except ConfigError as err:
        hint = (f" (this simulation has {nodes} nodes: cola-fed simulate --nodes N)"
                if "partition-by" in str(err) else "")
        raise ConfigError(f"{err}{hint}") from None
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
        app = write_app(Path(home) / "app")
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
               KNOWN_SERVERS_ENV: str(Path(home) / "known-servers.json"),
               # each simulated node keeps its state in partition-<id> here, for --resume
               STATE_DIR_ENV: str(node_state),
               # the simulated nodes partition the run's data file, and may import its task
               DATA_PATH_ENV: config.task.data_path,
               ALLOW_TASKS_ENV: config.task.name if ":" in config.task.name else "",
               # ... in the working folder too (searched last: it shadows nothing)
               TASK_DIRS_ENV: task_dirs,
               # flwr starts flower-superlink and flwr-simulation from PATH
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        command = [str(Path(sys.executable).parent / "flwr"), "run", str(app),
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

