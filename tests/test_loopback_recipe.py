"""The one-machine deployment recipe, run verbatim: examples/loopback/run.sh (issue 23, item 3).

The script is what docs/deployment.md shows (a test checks that the page's code block is the
file, byte for byte), and what a user who installed the package runs from the activated
environment. Here it runs as it is, with its own ports, WORK, FLWR_HOME and COLA_FED_HOME, on
the digits task for 2 rounds, insecure and with TLS; then its exit code, the run's results and
the processes it leaves (none) are checked. Also `cola-fed app --out DIR`, which the script uses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cola_fed.cli import main
from cola_fed.config import tomllib
from cola_fed.federation.simulate import free_port, write_app

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "loopback" / "run.sh"
DOC = ROOT / "docs" / "deployment.md"
BIN = Path(sys.executable).parent


def recipe_env(tmp_path: Path, path: str, **settings: str) -> dict[str, str]:
    """The environment of a user's shell for the script: PATH as given, and everything the
    script writes (WORK, FLWR_HOME, COLA_FED_HOME) and listens on (free ports) its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "COLA_FED"))}
    return {**env, "PATH": path, "HF_HUB_OFFLINE": "1",
            "WORK": str(tmp_path / "work"), "FLWR_HOME": str(tmp_path / "flwr-home"),
            "COLA_FED_HOME": str(tmp_path / "cola-fed-home"),
            "COLA_FED_CACHE": str(tmp_path / "cache"),
            "LINK_PORT": str(free_port()), "NODE_PORTS": f"{free_port()} {free_port()}",
            **settings}


def processes_of(session: int, marks: list[str]) -> list[str]:
    """Live processes in ``session``, or whose command line names one of ``marks`` (the WORK
    folder, the ports: Flower starts flower-superexec in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, _, _, sid = stat.rsplit(")", 1)[1].split()[:4]
        if state != "Z" and (int(sid) == session or any(m in args for m in marks)):
            found.append(f"{entry.name}: {args[:200]}")
    return found


def run_recipe(env: dict[str, str], timeout: float = 600) -> tuple[int, str, list[str]]:
    """Run the script as a user would (bash run.sh, in its own session); its exit code, its
    output and the processes it left behind."""
    proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd=Path(env["WORK"]).parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"the recipe did not end in {timeout} s:\n{output[-5000:]}") from None
    ports = [env["LINK_PORT"], *env["NODE_PORTS"].split()]
    left = processes_of(proc.pid, [env["WORK"], *(f":{port}" for port in ports)])
    for line in left:  # stopped here, so that one failure does not leak into other tests
        os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
    return proc.returncode, output, left


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_the_loopback_recipe_runs_verbatim(tmp_path, tls):
    lean = "task.batch-size=16 task.eval-batches=1 edge.graphs=false"  # every node has torch
    env = recipe_env(tmp_path, f"{BIN}{os.pathsep}{os.environ['PATH']}", ROUNDS="2",
                     TLS="1" if tls else "0", RUN_CONFIG=lean)
    code, output, left = run_recipe(env)
    assert code == 0, output[-5000:]
    assert left == [], f"processes left running: {left}\n{output[-3000:]}"
    rounds = [line for line in output.splitlines() if "round 1/2" in line]
    assert rounds and not any("\x1b" in line for line in rounds), rounds  # a pipe: no colour
    work = Path(env["WORK"])
    metrics = json.loads((work / "results" / "metrics.json").read_text())
    assert metrics["last-round"] == 2 and metrics["stopped-early"] is None
    assert [r["nodes"] for r in metrics["rounds"][1:]] == [2, 2]
    assert {p: n["rounds-trained"] for p, n in metrics["nodes"].items()} == {"0": 2, "1": 2}
    assert sorted(p.name for p in (work / "results" / "adapters").iterdir()) == [
        "partition-0.safetensors", "partition-1.safetensors"]
    link = f"127.0.0.1:{env['LINK_PORT']}"
    block = f"[superlink.cola-loopback]\naddress = \"{link}\"\n"
    assert block in output  # the config.toml block is shown
    assert ("root-certificates" if tls else "insecure = true") in output
    for i in range(2):  # each node pinned the server's key and kept its state
        assert list((work / f"state{i}").iterdir())
    assert ("TLS disabled" in (work / "superlink.log").read_text()) is not tls
    # the user's flwr config and cola-fed home are left alone
    assert not (tmp_path / "flwr-home").exists() and not (tmp_path / "cola-fed-home").exists()


@pytest.mark.slow
def test_the_recipe_stops_everything_it_started_when_it_is_stopped(tmp_path):
    """SIGTERM to the script while its run goes on: it exits 143 at once, with the SuperLink,
    the SuperNodes, flwr run and every process they started stopped."""
    env = recipe_env(tmp_path, f"{BIN}{os.pathsep}{os.environ['PATH']}", ROUNDS="50",
                     RUN_CONFIG="edge.graphs=false")
    Path(env["WORK"]).mkdir()
    output = Path(env["WORK"]) / "output.txt"
    with output.open("w") as sink:
        proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd=tmp_path, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "hello:" not in output.read_text():  # the ServerApp runs
            assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ports = [env["LINK_PORT"], *env["NODE_PORTS"].split()]
    left = processes_of(proc.pid, [env["WORK"], *(f":{port}" for port in ports)])
    for line in left:
        os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
    assert code == 143, output.read_text()[-3000:]
    assert left == [], f"processes left running: {left}"
    assert "stopped: " in output.read_text()


def test_the_recipe_refuses_to_start_outside_the_activated_environment(tmp_path):
    """Without the environment's bin on PATH, the SuperLink could not start the ServerApp:
    the script says so and starts nothing."""
    env = recipe_env(tmp_path, "/usr/bin:/bin")
    code, output, left = run_recipe(env, timeout=60)
    assert code == 1 and left == []
    assert "is not on PATH" in output and "source .venv/bin/activate" in output
    assert not (Path(env["WORK"]) / "superlink.log").exists()


def test_the_deployment_page_shows_the_script_as_it_is():
    """docs/deployment.md holds examples/loopback/run.sh in a bash block, unchanged."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert SCRIPT.read_text() in blocks
    assert os.access(SCRIPT, os.X_OK)


def test_cola_fed_app_writes_the_flower_app_of_the_installed_package(tmp_path, capsys):
    assert main(["app", "--out", str(tmp_path / "app")]) == 0
    written = (tmp_path / "app" / "pyproject.toml").read_text()
    assert written == (write_app(tmp_path / "same") / "pyproject.toml").read_text()
    flwr = tomllib.loads(written)["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "cola_fed.apps:server_app",
                                  "clientapp": "cola_fed.apps:client_app"}
    assert f"flwr run {tmp_path / 'app'} " in capsys.readouterr().out
    assert main(["app", "--out", str(tmp_path / "app")]) == 0  # its own folder: rewritten


@pytest.mark.parametrize("present", [{"notes.txt": "mine"},
                                     {"pyproject.toml": "[project]\nname = 'mine'\n"},
                                     {"pyproject.toml": "not toml ["}],
                         ids=["another-file", "another-project", "broken"])
def test_cola_fed_app_leaves_a_folder_with_other_content_alone(tmp_path, capsys, present):
    folder = tmp_path / "app"
    folder.mkdir()
    for name, text in present.items():
        (folder / name).write_text(text)
    assert main(["app", "--out", str(folder)]) == 1
    assert "give a new or empty folder" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in folder.iterdir()} == present


def test_cola_fed_app_never_writes_through_a_link(tmp_path, capsys):
    """A pyproject.toml planted as a link to another app's file (even one that parses as a
    cola-fed app), or --out itself a link: refused, the target untouched."""
    elsewhere = write_app(tmp_path / "elsewhere") / "pyproject.toml"
    before = elsewhere.read_text() + "# the user's own line\n"
    elsewhere.write_text(before)
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "pyproject.toml").symlink_to(elsewhere)
    assert main(["app", "--out", str(folder)]) == 1
    assert "link" in capsys.readouterr().err
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    assert main(["app", "--out", str(tmp_path / "linked")]) == 1
    assert elsewhere.read_text() == before
