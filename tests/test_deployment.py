"""Deployment on loopback with real processes: flower-superlink (SQLite), two flower-supernodes,
`flwr run`; insecure, with TLS and SuperNode authentication, and with SuperNodes from a second
virtual environment that has only the base install (``pip install .``: no torch).

It checks that the run completes, that every node's adapters changed, and that the SuperLink's
database holds none of the clients' text, neither as text nor as the token arrays a plaintext
batch would carry. In one more run, a SuperNode is SIGKILLed mid-run and comes back with its
state directory, and another connects after round 1. Every process is started in its own
session and stopped by PID.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cola_fed.federation.simulate import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Processes:
    """Background processes of one test, each in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root, self.started = root, []
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "HF_HUB_OFFLINE": "1"}

    def start(self, name: str, args: list[str], home: str,
              bin_dir: Path = BIN) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"  # its flwr-clientapp, too
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                env={**self.env, "FLWR_HOME": str(self.root / home),
                                     "PATH": path},
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def run(self, args: list[str], home: str, timeout: float = 600) -> str:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                                env={**self.env, "FLWR_HOME": str(self.root / home)},
                                check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    def stop(self) -> None:
        for proc in reversed(self.started):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)  # the process and the children it started
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the SuperLink exited early"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {port}")


def make_tls(folder: Path) -> None:
    """A CA and a SuperLink certificate for localhost / 127.0.0.1, generated here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cola-fed test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem))
    (folder / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_node_key(path: Path) -> None:
    """An ECDSA P-384 key pair in OpenSSH format, as `ssh-keygen -t ecdsa -b 384` writes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))


def client_data_patterns() -> tuple[list[bytes], bytes]:
    """Byte patterns a plaintext copy of the nodes' held-out batches (sent at hello) would
    contain, as text and as token arrays; and one such plaintext batch, to check the detector."""
    from cola_fed.config import TaskConfig
    from cola_fed.tasks.byte_lm import PAD, ByteLMTask
    from cola_fed.wire import encode_batch

    task = ByteLMTask(TaskConfig(name="byte-lm", max_length=32, eval_batches=1))
    patterns, plaintext = [], b""
    for partition in range(2):
        batch = task.client_data(partition, 2).eval_batches[0]
        plaintext = encode_batch(batch)
        for row in batch["input_ids"]:
            ids = row[row != PAD][:20]
            if len(ids) == 20:
                patterns += [ids.astype(np.uint8).tobytes(), ids.astype("<i8").tobytes()]
    return patterns, plaintext


@pytest.fixture(scope="session")
def base_install_venv(tmp_path_factory) -> Path:
    """A virtual environment with ``pip install .`` and nothing else: what an edge device runs."""
    venv = tmp_path_factory.mktemp("edge") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                             str(ROOT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "None", "the base install pulled in torch"
    return venv


@pytest.mark.parametrize("secure", [False, True], ids=["insecure", "tls-and-node-auth"])
def test_deployment_on_loopback(tmp_path, secure):
    metrics = deploy(tmp_path, secure=secure)
    assert {node["backend"] for node in metrics["nodes"].values()} == {"torch"}
    database = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    assert len(database) > 100_000  # the run's messages went through it
    patterns, plaintext = client_data_patterns()
    assert len(patterns) >= 20 and any(p in plaintext for p in patterns)  # the detector works
    assert [p for p in patterns if p in database] == []


def test_supernodes_without_torch(tmp_path, base_install_venv):
    """SuperLink and ServerApp from the full environment, both SuperNodes (and their ClientApp
    processes) from the base install: they choose the ONNX backend themselves."""
    texts = [line for doc in sorted((ROOT / "docs").glob("*.md"))
             for line in doc.read_text().splitlines() if len(line) > 20]  # local text
    node_config = []
    for i in range(2):
        (tmp_path / f"local{i}.txt").write_text("\n".join(texts[i::2]))
        node_config.append(f'data-path="{tmp_path / f"local{i}.txt"}" '
                           f'graph-cache="{tmp_path / f"cache{i}"}"')
    metrics = deploy(tmp_path, secure=False, node_bin=base_install_venv / "bin",
                     node_config=node_config)
    assert {node["backend"] for node in metrics["nodes"].values()} == {"onnx"}
    for i in range(2):  # each node checked and cached the graphs it trains with: from rows,
        # and from the parameter gradient that the default wire.form = "auto" sends
        assert len(list((tmp_path / f"cache{i}").glob("*.onnx"))) == 2


def deploy(tmp_path: Path, *, secure: bool, node_bin: Path = BIN,
           node_config: list[str] | None = None) -> dict:
    """Run a 2-node, 2-round tiny causal-LM federation on loopback; return its metrics."""
    procs = Processes(tmp_path)
    port = free_port()
    link_args = [str(BIN / "flower-superlink"), "--disable-runtime-dependency-installation",
                 "--host", "127.0.0.1", "--port", str(port),
                 "--database", str(tmp_path / "state.db")]
    node_security = ["--insecure"]
    connection = f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    if secure:
        make_tls(tmp_path)
        link_args += ["--ssl-ca-certfile", "ca.crt", "--ssl-certfile", "server.pem",
                      "--ssl-keyfile", "server.key", "--enable-supernode-auth"]
        connection = f'address = "127.0.0.1:{port}"\nroot-certificates = "{tmp_path}/ca.crt"\n'
    else:
        link_args.append("--insecure")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n[superlink.test]\n{connection}')
    run_config = tmp_path / "run.toml"
    run_config.write_text(
        'task.name = "byte-lm"\nnum-server-rounds = 2\ntask.max-length = 32\n'
        'task.eval-batches = 1\nstrategy.min-available-nodes = 2\nstrategy.timeout = 300.0\n'
        f'output-dir = "{tmp_path / "out"}"\n')
    try:
        link = procs.start("superlink", link_args, home="link")
        wait_for_port(port, link)
        for i in range(2):
            if secure:
                make_node_key(tmp_path / f"auth{i}")
                procs.run([str(BIN / "flwr"), "supernode", "register",
                           str(tmp_path / f"auth{i}.pub"), "test"], home="cli")
                node_security = ["--root-certificates", str(tmp_path / "ca.crt"),
                                 "--auth-supernode-private-key", str(tmp_path / f"auth{i}")]
            extra = f" {node_config[i]}" if node_config else ""
            procs.start(f"node{i}", [str(node_bin / "flower-supernode"), *node_security,
                                     "--superlink", f"127.0.0.1:{port}",
                                     "--port", str(free_port()), "--node-config",
                                     f"partition-id={i} num-partitions=2{extra}"],
                        home=f"node{i}", bin_dir=node_bin)
        procs.run([str(BIN / "flwr"), "run", str(ROOT), "test", "--stream",
                   "--run-config", str(run_config)], home="cli")
    finally:
        procs.stop()

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [r["nodes"] for r in metrics["rounds"][1:]] == [2, 2]
    assert all(node["rounds-trained"] == 2 for node in metrics["nodes"].values())
    from cola_fed.wire import decode_adapter_state

    for path in (tmp_path / "out" / "adapters").glob("*.safetensors"):
        state = decode_adapter_state(path.read_bytes())
        assert any(np.abs(p["B"]).max() > 0 for p in state.values())  # B starts at zero
    return metrics


# ------------------------------------------------------------------------------------------------
# Nodes that come and go while a run goes on, in one run of the digits task (rounds of seconds;
# every ClientApp call still runs in a fresh flwr-clientapp process): a SuperNode killed and
# started again with its state directory, and a SuperNode that connects after round 1.
#
# What Flower 1.42 does here: a SuperNode without SuperNode authentication gets a new node id
# from the SuperLink at every start, so the restarted node joins as a newcomer and proves its
# identity. A SIGKILLed SuperNode says no goodbye: the SuperLink keeps its old node id online
# until its heartbeat expires (a heartbeat every ~24 s, each good for 2 x 30 s: 36 to 60 s
# after the kill), and the server waits for a message to it until then (the SuperLink answers
# for an offline node at once) or until ``strategy.timeout``. A timeout of 60 s costs nothing
# more, and leaves a newcomer's hello (which lives as long) time to be answered and collected.


class Federation:
    """A SuperLink (insecure, SQLite), SuperNodes started and killed at will, and one `flwr run`
    of the project in the background, all on loopback."""

    def __init__(self, tmp_path: Path, run_config: dict[str, object]) -> None:
        self.tmp, self.procs = tmp_path, Processes(tmp_path)
        self.out = tmp_path / "out"
        self.port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        (tmp_path / "cli").mkdir()
        (tmp_path / "cli" / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n[superlink.test]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        config = {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 1,
                  "edge.graphs": False, "strategy.evaluate-every": 1,
                  "output-dir": str(self.out), **run_config}
        (tmp_path / "run.toml").write_text("".join(
            f"{key} = {json.dumps(value)}\n" for key, value in config.items()))
        self.run: subprocess.Popen | None = None

    def __enter__(self) -> Federation:
        link = self.procs.start("superlink", [
            str(BIN / "flower-superlink"), "--disable-runtime-dependency-installation",
            "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(self.tmp / "state.db")], home="link")
        wait_for_port(self.port, link)
        return self

    def __exit__(self, *exc) -> None:
        self.procs.stop()

    def start_node(self, name: str, node_config: str, home: str | None = None) -> None:
        self.nodes[name] = self.procs.start(name, [
            str(BIN / "flower-supernode"), "--insecure", "--superlink",
            f"127.0.0.1:{self.port}", "--port", str(free_port()),
            "--node-config", node_config], home=home or name)

    def kill_node(self, name: str) -> None:
        """SIGKILL: no goodbye to the SuperLink, which keeps the node online until its
        heartbeat expires."""
        proc = self.nodes.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def start_run(self) -> None:
        self.run = self.procs.start("run", [
            str(BIN / "flwr"), "run", str(ROOT), "test", "--stream",
            "--run-config", str(self.tmp / "run.toml")], home="cli")

    def metrics(self) -> dict | None:
        try:
            return json.loads((self.out / "metrics.json").read_text())
        except FileNotFoundError:
            return None

    def wait_for_round(self, server_round: int, seconds: float = 180) -> dict:
        """The metrics once round ``server_round`` is done (results are written per round)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            metrics = self.metrics()
            if metrics is not None and metrics["last-round"] >= server_round:
                return metrics
            assert self.run.poll() is None, self.log("run")[-3000:]
            time.sleep(0.2)
        raise TimeoutError(f"round {server_round} not done in {seconds} s:\n"
                           + self.log("run")[-3000:])

    def finish(self, seconds: float = 300) -> dict:
        """Wait for `flwr run` to end; the final metrics."""
        try:
            self.run.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError("the run did not end:\n" + self.log("run")[-3000:]) from None
        metrics = self.metrics()
        assert metrics is not None, self.log("run")[-3000:]
        return metrics

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


CHURN_ROUNDS = 6


@dataclass
class Churn:
    metrics: dict  # the final metrics.json
    before: dict  # metrics.json after the round the SuperNode was killed in
    adapters_before: bytes  # partition 1's adapters then
    log: str  # the ServerApp's log, as `flwr run --stream` printed it
    nodes: dict[str, str]  # SuperNode name -> its log
    adapters: dict[str, bytes]  # the adapter files written, by name


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> Churn:
    """Nodes 0 and 1 start a run of three partitions; after round 1, node 1's SuperNode is
    SIGKILLed (with its ClientApp) and started again with the same state-dir, and a SuperNode
    for partition 2 connects for the first time."""
    tmp = tmp_path_factory.mktemp("churn")
    config = {"num-server-rounds": CHURN_ROUNDS, "strategy.min-available-nodes": 2,
              "strategy.timeout": 60.0, "strategy.wait-for-nodes": 120.0}
    nodes = [f'partition-id={i} num-partitions=3 state-dir="{tmp / f"state{i}"}"'
             for i in range(3)]
    with Federation(tmp, config) as fed:
        for i in range(2):
            fed.start_node(f"node{i}", nodes[i])
        fed.start_run()
        killed_in = fed.wait_for_round(1)["last-round"] + 1
        fed.kill_node("node1")  # in round 2, or between rounds 1 and 2
        fed.start_node("node1-restarted", nodes[1], home="node1")
        fed.start_node("node2", nodes[2])
        before = fed.wait_for_round(killed_in)  # the killed process can add nothing after
        adapters_before = (fed.out / "adapters" / "partition-1.safetensors").read_bytes()
        metrics = fed.finish()
        return Churn(metrics, before, adapters_before, fed.log("run"),
                     {name: fed.log(name) for name in ("node1", "node1-restarted", "node2")},
                     {p.name: p.read_bytes() for p in (fed.out / "adapters").iterdir()})


def node_id(log: str) -> int:
    """The node id the SuperLink gave a SuperNode, from the SuperNode's log."""
    [line] = [line for line in log.splitlines() if "SuperNode ID:" in line]
    return int(line.rsplit(":", 1)[1])


def round_after(log: str, text: str, rounds: int = CHURN_ROUNDS) -> int:
    """The round of the first round result (``round t/rounds: ...``) logged after the first line
    with ``text``."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if text in line)
    return next(int(line.split("round ", 1)[1].split("/", 1)[0]) for line in lines[start:]
                if f"/{rounds}: " in line)


def test_a_run_with_nodes_coming_and_going_completes_with_every_partition(churn):
    metrics = churn.metrics
    assert metrics["last-round"] == CHURN_ROUNDS and metrics["stopped-early"] is None
    assert sorted(metrics["nodes"]) == ["0", "1", "2"]  # none lost
    assert sorted(churn.adapters) == [f"partition-{p}.safetensors" for p in range(3)]
    assert metrics["nodes"]["0"]["rounds-trained"] == CHURN_ROUNDS  # never held up
    assert all(n["last-error"] == "" for n in metrics["nodes"].values())  # nothing refused
    assert metrics["refused-at-hello"] == {}
    assert metrics["rounds"][-1]["nodes"] == 3
    assert sum(r["nodes"] for r in metrics["rounds"][1:]) == sum(
        n["rounds-trained"] for n in metrics["nodes"].values())


def test_a_supernode_killed_mid_run_comes_back_with_its_state_dir(churn):
    """The restarted SuperNode gets a new node id, proves with the identity in its state-dir
    that it held partition 1, takes it back and trains in every round from then on."""
    old_id, new_id = (node_id(churn.nodes[n]) for n in ("node1", "node1-restarted"))
    assert new_id != old_id  # Flower gave the new process a new node id
    back = f"hello: partition 1 is back on node {new_id} (was node {old_id})"
    assert back in churn.log
    assert any(r["failed"] for r in churn.metrics["rounds"][1:])  # the rounds it missed
    trained_before = churn.before["nodes"]["1"]["rounds-trained"]
    trained = churn.metrics["nodes"]["1"]["rounds-trained"]
    assert trained_before >= 1  # it trained before it was killed
    assert trained == trained_before + CHURN_ROUNDS + 1 - round_after(churn.log, back)
    assert trained_before < trained < CHURN_ROUNDS
    assert churn.adapters["partition-1.safetensors"] != churn.adapters_before
    assert "hello: partition 1 goes on from its state" in churn.nodes["node1-restarted"]


def test_a_supernode_that_connects_after_round_one_joins_the_run(churn):
    """A SuperNode for a partition the run has not seen connects after round 1: it gets a hello
    at a later round, joins, and trains in every round from the one it joined in."""
    assert "nodes connected since the hello round; sending" in churn.log
    assert "hello: partition 2 joins on the torch backend" in churn.nodes["node2"]
    late = churn.metrics["nodes"]["2"]
    joined = late["history"][0]["round"]  # evaluated from the round it joined in
    assert 2 <= joined <= CHURN_ROUNDS
    assert late["rounds-trained"] == CHURN_ROUNDS + 1 - joined
