"""Deployment on loopback with real processes: flower-superlink (SQLite), two flower-supernodes,
`flwr run`; insecure, with TLS and SuperNode authentication, and with SuperNodes from a second
virtual environment that has only the base install (``pip install .``: no torch).

It checks that the run completes, that every node's adapters changed, and that the SuperLink's
database holds none of the clients' text, neither as text nor as the token arrays a plaintext
batch would carry. Every process is started in its own session and stopped by PID.
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
    from cola_fed.tasks.causal_lm import PAD, CausalLMTask
    from cola_fed.wire import encode_batch

    task = CausalLMTask(TaskConfig(name="causal-lm", max_length=32, eval_batches=1))
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
    for i in range(2):  # each node checked and cached the graphs it trains with
        assert len(list((tmp_path / f"cache{i}").glob("*.onnx"))) == 1


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
        'task.name = "causal-lm"\nnum-server-rounds = 2\ntask.max-length = 32\n'
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
