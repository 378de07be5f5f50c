"""Run a ColA experiment on Flower's local simulation engine, cleanly.

``flwr run .`` starts a detached SuperLink that outlives the run. This wrapper gives each run
its own ``FLWR_HOME``, free ports and Ray folder, disables runtime dependency installation,
starts the SuperLink itself so that it dies with this process, and has a guard stop every
process of the run (found by its ``FLWR_HOME`` and folders, by PID, never by name) when this
process ends, even by SIGKILL (:mod:`cola_fed.federation.run_processes`): nothing is left
behind and parallel runs do not collide. It exits with an error, printing no results, when
Flower's run failed (``flwr run`` itself exits 0) or another live server holds the checkpoint.
Flower's output is passed on without colour codes unless it goes to a terminal.

It needs no source checkout: the experiments are the package's own (``cola_fed/simulations``) or
any TOML file, and the Flower app it runs is written for the run (:func:`write_app`), a
pyproject.toml whose components are the installed package's :mod:`cola_fed.apps`: the same
``[tool.flwr.app]`` as the checkout's pyproject.toml (the tests check).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import tomli_w
from flwr.common.config import parse_config_args, unflatten_dict

from cola_fed import __version__
from cola_fed.config import RunConfig, default_flat_config, flatten, tomllib
from cola_fed.errors import ColaError, ConfigError
from cola_fed.federation.checkpoint import Checkpoint
from cola_fed.federation.client import DATA_PATH_ENV, SKIP_INVALID_ROWS_ENV
from cola_fed.federation.flower_log import colour_wanted
from cola_fed.federation.node_store import STATE_DIR_ENV
from cola_fed.federation.preflight import preflight
from cola_fed.federation.run_processes import Guard, die_with_parent
from cola_fed.federation.sinks import require as require_sinks
from cola_fed.tasks.registry import ALLOW_TASKS_ENV, TASK_DIRS_ENV
from cola_fed.wire.identity import KNOWN_SERVERS_ENV

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"
"""The built-in simulation configs, shipped in the package: ``cola-fed simulate NAME``."""
PUBLISHER = "cola-fed"
COMPONENTS = {"serverapp": "cola_fed.apps:server_app", "clientapp": "cola_fed.apps:client_app"}
SUPERLINK_START_S = 60.0
"""How long the run's SuperLink may take to answer (Flower's own wait is 15 s; a loaded
machine needs more)."""
RAY_FOLDER_MAX = 36
"""The longest ``RAY_TMPDIR`` whose socket paths fit (Ray adds ``/ray/session_<date>_<time>_
<micro>_<pid>/sockets/plasma_store``: up to 71 bytes, for a 7-digit pid)."""


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


# flwr run --run-config's pairs (flwr.common.config.parse_config_args): key=value, a value
# quoted or up to the next space
OVERRIDE_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """``cola-fed simulate --run-config`` as ``flwr run --run-config`` reads it (Flower's own
    parser): space-separated ``key=value`` pairs whose values are TOML (``num-server-rounds=5
    task.name='digits'``), or one ``.toml`` file. The keys are checked where the simulation's
    file is (:meth:`RunConfig.from_flat`); here, the form: text that is no pair, a value that
    is no TOML, a key given twice are refused rather than dropped or silently replaced."""
    texts = [t for t in texts if t.strip()]
    if len(texts) == 1 and texts[0].strip().endswith(".toml"):
        try:
            return parse_config_args([str(Path(texts[0].strip()).expanduser())])
        except (OSError, UnicodeDecodeError, ValueError) as err:  # tomli's errors are these
            raise ConfigError(f"--run-config {texts[0].strip()}: cannot read it: {err}") from None
    text = " ".join(texts)  # one TOML document: a.b=1 and a.c=2 both hold
    stray = OVERRIDE_PAIR.sub(" ", text).split()
    if stray:
        raise ConfigError(f"--run-config: expected space-separated key=value pairs, got "
                          f"{' '.join(stray)!r} (e.g. --run-config \"num-server-rounds=5 "
                          f"task.name='digits'\")")
    seen: set[str] = set()
    for key, value in OVERRIDE_PAIR.findall(text):
        if key in seen:
            raise ConfigError(f"--run-config: {key} is given twice")
        seen.add(key)
        try:
            tomllib.loads(f"{key} = {value}")
        except tomllib.TOMLDecodeError:
            quoted = value[:1] in "'\""
            hint = ("" if quoted else f"; a string needs quotes: {key}='{value}'")
            raise ConfigError(f"--run-config: {key}={value}: the value is not a TOML value "
                              f"(a number, true/false or a quoted string){hint}") from None
    try:
        return parse_config_args([text]) if text else {}
    except Exception as err:  # Flower's click.ClickException, ValueError
        raise ConfigError(f"--run-config: {getattr(err, 'message', err)}") from None


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
             stream: bool = True, resume: bool = False,
             on_start: Callable[[Path, RunConfig], None] | None = None) -> Path:
    """Run simulation ``name`` (see :func:`resolve`); return its results folder (metrics.json,
    curve, adapters, checkpoint). Keys the file leaves out take the app's defaults
    (:func:`app_config`). With ``resume``, go on from the folder's checkpoint: the simulated
    nodes find their states in ``<results>/node-state`` (see docs/operations.md). ``overrides``
    replace the file's keys (:func:`parse_overrides` reads them from a command line);
    ``on_start(results, config)`` is called as Flower starts (a progress bar follows the
    results folder)."""
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
    require_sinks(config.logging)  # logging.tensorboard/mlflow: their extras installed
    if config.wire.server_key and not Path(config.wire.server_key).expanduser().is_file():
        raise ConfigError(f"wire.server-key: no file {config.wire.server_key!r} (a typo? create "
                          f"one with: cola-fed keygen --out {config.wire.server_key})")
    nodes = num_supernodes or config.strategy.min_available_nodes
    try:  # the model, data, columns, partitions and targets, checked before Flower starts
        preflight(config, nodes)
    except ConfigError as err:
        hint = (f" (this simulation has {nodes} nodes: cola-fed simulate --nodes N)"
                if "partition-by" in str(err) else "")
        raise ConfigError(f"{err}{hint}") from None
    with one_simulate_per_folder(out):
        node_state = out / "node-state"
        holder = Checkpoint(out / "checkpoint").holder()
        if holder is not None:  # refused before anything of that run is touched
            raise ColaError(f"cannot {'resume' if resume else 'start'} in {out}: "
                            f"{Checkpoint(out / 'checkpoint').refusal(holder)}")
        if resume and not Checkpoint(out / "checkpoint").exists():
            raise ConfigError(f"no checkpoint in {out / 'checkpoint'}: nothing to resume (run "
                              "without --resume to start afresh, or give the --out of the run "
                              "to resume)")
        if not resume and node_state.exists():  # a fresh run; the earlier one's kept aside
            aside = out / "node-state.previous"
            shutil.rmtree(aside, ignore_errors=True)
            node_state.rename(aside)
        started = time.time()
        if on_start is not None:
            on_start(out, config)
        colour = stream and colour_wanted(sys.stdout)
        with tempfile.TemporaryDirectory(prefix="cola-flwr-") as home:
            app = write_app(Path(home) / "app")
            run_config = Path(home) / "run-config.toml"
            run_config.write_text(tomli_w.dumps(values))
            http_port, control_port = free_port(), free_port()
            ray_dir = ray_folder(home)
            own_ray = ray_dir if ray_dir != home else ""  # a folder beside the run's
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
                   SKIP_INVALID_ROWS_ENV: "1" if config.task.skip_invalid_rows else "",
                   ALLOW_TASKS_ENV: config.task.name if ":" in config.task.name else "",
                   # ... in the working folder too (searched last: it shadows nothing)
                   TASK_DIRS_ENV: task_dirs,
                   # flwr starts flower-superlink and flwr-simulation from PATH
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   # Ray's session folder of its own: its processes are found by it
                   **({"RAY_TMPDIR": ray_dir} if ray_dir else {}),
                   # colours only for a terminal (https://no-color.org), in every process
                   **({} if colour else {"NO_COLOR": "1", "RAY_COLOR_PREFIX": "0"})}
            command = [str(Path(sys.executable).parent / "flwr"), "run", str(app),
                       "--stream", "--federation-config", f"num-supernodes={nodes}",
                       "--run-config", str(run_config)]
            guard = Guard(home, also=(own_ray,) if own_ray else ())  # stops every process of
            lines: list[str] = []  # this run when this one ends, however it ends
            try:
                start_superlink(home, http_port, control_port, env)
                code, timed_out = _run_relayed(command, env, timeout, colour,
                                               sys.stdout if stream else None, lines)
                status = "" if timed_out else run_status(env)
            finally:
                guard.close()
                if own_ray:
                    shutil.rmtree(own_ray, ignore_errors=True)
            metrics = out / "metrics.json"  # a stale file must not pass for this run
            failed = status.startswith("finished:") and status != "finished:completed"
            if (code != 0 or timed_out or failed or not metrics.is_file()
                    or metrics.stat().st_mtime < started):
                log_tail = "" if stream else "\n" + "".join(lines)[-3000:]
                why = (f"it did not finish within {timeout:.0f} s" if timed_out else
                       f"flwr run exited with {code}" if code else
                       f"the ServerApp failed (Flower's run status: {status}); its error is in the "
                       "log above" if failed else
                       "the ServerApp wrote no results; its error is in the log above")
                raise ColaError(f"simulation {path.stem!r} failed: {why}{log_tail}")
        return out


@contextlib.contextmanager
def one_simulate_per_folder(out: Path) -> Iterator[None]:
    """Hold ``<out>/.simulate.lock`` (an flock, released however this process ends) while a
    ``cola-fed simulate`` runs in ``out``: a second one (a ``--resume`` typed twice) is refused
    at once, before it starts Flower. The checkpoint's own lock is taken only when the run's
    ServerApp starts, tens of seconds later, so alone it would let both start."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".simulate.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | getattr(os, "O_NONBLOCK", 0), 0o600)
    except OSError as err:
        raise ColaError(f"cannot lock {path} ({err.strerror}): a link or another user's "
                        "file is in the way; remove it and run again") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ColaError(f"another cola-fed simulate is running in {out} (it holds {path}): "
                            "wait for it to end or stop it, then run again") from None
        yield
    finally:
        os.close(fd)  # the flock goes with it


#: Third-party lines that say nothing to a cola-fed user, which no cola-fed code can filter where
#: they are made: Flower's simulation process logs them before it loads the ServerApp. Each
#: is matched whole (after colour codes are removed) and names its source.
FLOWER_NOISE = (
    # flwr/simulation/app.py, run_simulation_process: logged at WARNING on every run, though
    # cola-fed simulate always sets num-supernodes
    re.compile(r"WARNING\s*:\s*Since flwr 1\.32, default simulated SuperNodes changed from "
               r"10 to 2\.\s*"),
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def ray_folder(home: str) -> str:
    """A folder of the run's own for Ray's session (``RAY_TMPDIR``), whose paths stay within
    the 107 bytes of a Unix socket's name (Ray adds about 70): ``home`` if it is short enough,
    else a new short folder; empty (Ray's default) if none is."""
    if len(home) <= RAY_FOLDER_MAX:
        return home
    for parent in (None, "/tmp"):
        with contextlib.suppress(OSError):
            folder = tempfile.mkdtemp(prefix="cr-", dir=parent)
            if len(folder) <= RAY_FOLDER_MAX:
                return folder
            os.rmdir(folder)
    return ""


def start_superlink(home: str, http_port: int, control_port: int,
                    env: dict[str, str]) -> subprocess.Popen:
    """Start the run's SuperLink as ``flwr run`` would (``flwr.cli.local_superlink``), but as a
    child of this process that dies with it (:func:`die_with_parent`), not detached: ``flwr
    run`` then finds it on its port and starts none. Waits until it answers."""
    folder = Path(home) / "local-superlink"
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "flower-superlink"), "--insecure",
               "--simulation", "--isolation", "subprocess",
               "--control-api-address", f"127.0.0.1:{control_port}",
               "--host", "127.0.0.1", "--port", str(http_port),
               "--log-file", str(folder / "superlink.log"),
               "--database", str(folder / "state.db")]
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + SUPERLINK_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ColaError(f"the SuperLink of the simulation exited with {proc.returncode} "
                            f"before it answered; its log: {folder / 'superlink.log'}")
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{http_port}/health", timeout=0.5) as answer:
            if answer.status == 200:
                return proc
        time.sleep(0.2)
    raise ColaError(f"the SuperLink of the simulation did not answer within "
                    f"{SUPERLINK_START_S:.0f} s; its log: {folder / 'superlink.log'}")


def _run_relayed(command: list[str], env: dict[str, str], timeout: float, colour: bool,
                 sink: IO[str] | None, lines: list[str]) -> tuple[int, bool]:
    """Run ``flwr run`` (dying with this process), pass its output on line by line to
    ``sink`` (None: keep it in ``lines`` only) without :data:`FLOWER_NOISE` and, unless
    ``colour``, without colour codes. Returns (exit code, whether it ran out of time)."""
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, preexec_fn=die_with_parent)
    expired = threading.Event()

    def out_of_time() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, out_of_time)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            plain = _ANSI.sub("", line)
            if any(noise.fullmatch(plain) for noise in FLOWER_NOISE):
                continue
            text = line if colour else plain
            lines.append(text)
            del lines[:-200]
            if sink is not None:
                sink.write(text)
                sink.flush()
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # an exception on the way (Ctrl-C): it goes too
            proc.kill()
            proc.wait()
    timed_out = expired.is_set()
    return code, timed_out


def run_status(env: dict[str, str]) -> str:
    """Flower's status of the run on this simulation's SuperLink (``finished:completed``,
    ``finished:failed``, ...; empty when it cannot tell): ``flwr run`` exits 0 whatever
    became of the ServerApp."""
    try:
        listing = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "ls", "--format", "json"], env=env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            check=False, preexec_fn=die_with_parent)
        runs = json.loads(listing.stdout[listing.stdout.find("{"):])["runs"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return ""
    if not isinstance(runs, list) or len(runs) != 1 or not isinstance(runs[0], dict):
        return ""
    return str(runs[0].get("status", ""))


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

