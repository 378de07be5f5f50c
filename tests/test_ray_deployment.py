"""The server's passes on a multi-node Ray cluster, in a real deployment (issue 26 item 7).

A Ray cluster of the test's own on loopback: a head (`ray start --head --block`) and a second
worker node process (`ray start --address ... --block`), each with one CPU, on free ports and a
short temporary folder of their own; a real SuperLink and two SuperNodes on loopback; two
`flwr run`s of the project on them, the first with `server.engine = "local"`, the second with
`server.engine = "ray"` and `server.ray-address` naming the cluster. The Ray run must end with
the same adapters, bit for bit, with its two pass workers on the two Ray nodes (one CPU each:
two one-CPU actors cannot share a node).

Every process the test started is stopped by PID: the SuperLink and SuperNodes by their
sessions (tests/flower_processes.py), the Ray nodes by their `ray start --block` PIDs and then
every process whose session is one of theirs or whose command line names the cluster's
temporary folder (Ray's daemons and workers all carry it). Never `ray stop`: it kills Ray
processes by name, other people's too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from flower_processes import FlowerProcesses
from test_deployment import BIN, ROOT

from cola_fed.federation.simulate import free_port
from cola_fed.wire import decode_adapter_state

pytestmark = pytest.mark.slow

#: Ray's log line that names the actor a worker process runs
ACTOR_MARK = ":actor_name:PassWorker"


class RayCluster:
    """A two-node Ray cluster on loopback, one CPU a node, started and stopped by PID."""

    def __init__(self, logs: Path) -> None:
        # Ray's socket paths live under the temp folder and must stay short (<= 107 bytes)
        self.temp = Path(tempfile.mkdtemp(prefix="crt-", dir="/tmp"))
        self.logs, self.port = logs, free_port()
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _node_args(self) -> list[str]:
        """What both nodes share: one CPU, a small object store, every port of their own."""
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
                "--temp-dir", str(self.temp), "--object-store-memory", str(100 * 2**20),
                "--disable-usage-stats", "--block",
                "--node-manager-port", str(free_port()),
                "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--metrics-export-port", str(free_port())]

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen([str(BIN / "ray"), "start", *args, *self._node_args()],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        self.procs.append(proc)
        self._wait_for(name, proc)
        return proc

    def _wait_for(self, name: str, proc: subprocess.Popen, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            log = (self.logs / f"{name}.log").read_text(errors="replace")
            if "Ray runtime started" in log:
                return
            if proc.poll() is not None:
                raise AssertionError(f"ray {name} exited ({proc.returncode}):\n{log[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"ray {name} did not start in {seconds} s")

    def __enter__(self) -> RayCluster:
        try:
            self._start("ray-head", ["--head", "--port", str(self.port),
                                     "--include-dashboard", "false",
                                     "--ray-client-server-port", str(free_port())])
            self._start("ray-worker", ["--address", self.address])
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def actor_logs(self) -> list[Path]:
        """The worker log files of processes that ran a pass worker."""
        return [p for p in self.temp.rglob("worker-*.out")
                if ACTOR_MARK in p.read_text(errors="replace")]

    def stop(self) -> None:
        """SIGTERM each `ray start --block` (it stops its node's daemons), then SIGKILL by PID
        every process left in their sessions or naming the temporary folder."""
        sessions = {p.pid for p in self.procs}
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for _ in range(3):  # workers may still be exiting; what is left is killed
            left = self._leftovers(sessions)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(1)
        assert not self._leftovers(sessions), "Ray processes of the test outlived it"
        shutil.rmtree(self.temp, ignore_errors=True)

    def _leftovers(self, sessions: set[int]) -> list[int]:
        """PIDs in the Ray nodes' sessions, or whose command line names the temp folder, and
        their descendants (Ray's workers rename themselves ``ray::...``: their parent, the
        raylet, names the folder)."""
        mine = str(self.temp).encode()
        table: dict[int, tuple[int, bool]] = {}  # pid -> (parent, ours by session or folder)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            state, parent, session = fields[0], int(fields[1]), int(fields[3])
            if state != "Z":
                table[int(entry.name)] = (parent, session in sessions or mine in cmdline)
        found = {pid for pid, (_, ours) in table.items() if ours}
        grew = True
        while grew:
            children = {pid for pid, (parent, _) in table.items()
                        if parent in found and pid not in found}
            found |= children
            grew = bool(children)
        return sorted(found)


def adapters(out: Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Every partition's final adapters from a results folder."""
    return {p.name: decode_adapter_state(p.read_bytes())
            for p in sorted((out / "adapters").glob("partition-*.safetensors"))}


def test_a_deployment_whose_passes_run_on_a_two_node_ray_cluster(tmp_path):
    config = {"task.name": "byte-lm", "num-server-rounds": 1, "task.max-length": 32,
              "task.eval-batches": 1, "strategy.min-available-nodes": 2,
              "strategy.timeout": 300.0, "edge.graphs": False, "checkpoint.every": 0}
    with RayCluster(tmp_path) as cluster, FlowerProcesses(tmp_path) as procs:
        procs.start_superlink()
        for i in range(2):
            procs.start_supernode(f"node{i}", node_config=f"partition-id={i} num-partitions=2")
        procs.flwr_run(ROOT, {**config, "output-dir": str(tmp_path / "local"),
                              "server.engine": "local"})
        output = procs.flwr_run(ROOT, {**config, "output-dir": str(tmp_path / "ray"),
                                       "server.engine": "ray", "server.workers": 2,
                                       "server.cpus-per-worker": 1.0,
                                       "server.ray-address": cluster.address})
        ran_actors = cluster.actor_logs()

    local, ray = adapters(tmp_path / "local"), adapters(tmp_path / "ray")
    assert sorted(local) == ["partition-0.safetensors", "partition-1.safetensors"], output
    assert local.keys() == ray.keys()
    for name in local:
        for layer, params in local[name].items():
            for param, value in params.items():
                assert np.array_equal(value, ray[name][layer][param]), (name, layer, param)
    # the two pass workers ran on the cluster (one CPU each: one on each of its nodes)
    assert len(ran_actors) >= 2, output[-3000:]
    assert any(np.abs(p["B"]).max() > 0 for state in ray.values() for p in state.values())
