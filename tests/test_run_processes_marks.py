"""Finding a run's processes by their marks (cola_fed.federation.run_processes).

Seen in a user trial (issue 23): after ``kill -9`` of ``cola-fed simulate``, Ray's
``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` outlived the run by more than 40 s. They
had no ``FLWR_HOME`` in their environment and had retitled their command line, so neither mark
named them, though their environment held the run's own ``COLA_FED_KNOWN_SERVERS=<FLWR_HOME>/
known-servers.json``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cola_fed.federation.run_processes import command_line, run_processes, stop_run_processes


def start(env_extra: dict[str, str]) -> subprocess.Popen:
    """A real process whose command line names no folder and whose environment has no
    FLWR_HOME, as a retitled Ray agent's."""
    env = {k: v for k, v in os.environ.items() if k != "FLWR_HOME"}
    env.update(env_extra)
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)


def test_a_process_that_names_the_run_folder_only_in_its_environment_is_found(tmp_path):
    home = tmp_path / "cola-flwr-x"
    home.mkdir()
    proc = start({"COLA_FED_KNOWN_SERVERS": f"{home}/known-servers.json"})
    other = start({"COLA_FED_KNOWN_SERVERS": f"{tmp_path}/cola-flwr-xy/known-servers.json"})
    try:
        time.sleep(0.2)  # the environment is readable once exec is done
        found = run_processes(home)
        assert proc.pid in found
        assert other.pid not in found  # a folder whose name merely starts the same
        assert stop_run_processes(home, grace=2.0) == []  # SIGTERM was enough
        assert proc.wait(timeout=5) != 0
        assert other.poll() is None
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()


def test_a_command_line_in_a_message_hides_flowers_run_token():
    """A refused resume names the lock holder by its command line; the holder is Flower's
    flwr-simulation, whose ``--token`` authenticates the run: seen printed whole in a user
    trial (issue 23)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "--token", "0a297a0439f9", "--token=5e26fa6e68", "--keep", "me"])
    try:
        time.sleep(0.2)
        shown = command_line(proc.pid)
        assert "0a297a0439f9" not in shown and "5e26fa6e68" not in shown, shown
        assert "--token *** --token=*** --keep me" in shown
    finally:
        proc.kill()
        proc.wait()


def test_a_process_merely_started_inside_the_run_folder_is_not_the_runs(tmp_path):
    """A user's own ``less <folder>/superlink.log`` opened from inside the run's folder carries
    ``PWD=<folder>/...``: it names the folder in its environment, but in no variable the run
    sets, so it is left alone (an attacker review's case)."""
    home = tmp_path / "cola-flwr-x"
    (home / "logs").mkdir(parents=True)
    visitor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                               env={**os.environ, "PWD": f"{home}/logs",
                                    "LESSHISTFILE": f"{home}/logs/.less"},
                               cwd=home / "logs")
    try:
        time.sleep(0.2)
        assert visitor.pid not in run_processes(home)
    finally:
        visitor.kill()
        visitor.wait()
