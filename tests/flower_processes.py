"""Real Flower processes on loopback for tests (test helper, not library).

A SuperLink (`flower-superlink`) on a free port with its own FLWR_HOME and temporary files,
insecure or with TLS (a CA and a certificate for 127.0.0.1/localhost made here), optionally with
SuperNode authentication (node keys registered the way Flower 1.42 does it: `flwr supernode
register KEY.pub <connection>` over the Control API); SuperNodes as subprocesses: Python
`flower-supernode`, the JavaScript node (`js/node_modules/.bin/cola-fed-node`) or a JS script run
with the same flags (the echo fixture); `flwr run` of an app; every process in its own session,
stopped by PID.

Reused from tests/test_deployment.py: `Processes` (per-process log files and FLWR_HOME, own
session, stop by PID with SIGTERM then SIGKILL), `make_tls`, `make_node_key` (OpenSSH P-384, as
`ssh-keygen -t ecdsa -b 384`) and `wait_for_port`; and `free_port` from cola_fed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from test_deployment import BIN, ROOT, Processes, make_node_key, make_tls, wait_for_port

from cola_fed.federation.simulate import free_port

JS = ROOT / "js"
JS_NODE_BIN = JS / "node_modules" / ".bin" / "cola-fed-node"
ECHO_NODE = JS / "packages" / "node" / "dist-test" / "test" / "fixtures" / "echo-node.js"
CONNECTION = "test"  # the name of the SuperLink connection in the flwr CLI's config


@dataclass
class SuperLink:
    """A running SuperLink: where it listens and how nodes reach it."""

    port: int
    tls: bool
    node_auth: bool
    ca: Path | None  # the CA certificate nodes verify it with (TLS only)
    proc: subprocess.Popen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node_security_args(self) -> list[str]:
        """`--insecure`, or `--root-certificates CA` (the same for Flower's and the JS node)."""
        return ["--root-certificates", str(self.ca)] if self.tls else ["--insecure"]


class FlowerProcesses(Processes):
    """The processes of one test, under `root` (logs: `<name>.log`)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.superlink: SuperLink | None = None

    def start_superlink(self, *, tls: bool = False, node_auth: bool = False,
                        database: str | None = None) -> SuperLink:
        """Start `flower-superlink` on a free loopback port and write the flwr CLI's connection
        to it (FLWR_HOME `cli`). SuperNode authentication needs TLS, as in Flower. The state is
        an SQLite file under the root unless `database` names another (":flwr-in-memory-state:")."""
        if node_auth and not tls:
            raise ValueError("Flower's SuperNode authentication needs TLS")
        port = free_port()
        args = [str(BIN / "flower-superlink"), "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(port),
                "--database", database or str(self.root / "state.db")]
        ca = None
        if tls:
            make_tls(self.root)
            ca = self.root / "ca.crt"
            args += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(self.root / "server.pem"),
                     "--ssl-keyfile", str(self.root / "server.key")]
            connection = f'address = "127.0.0.1:{port}"\nroot-certificates = "{ca}"\n'
        else:
            args.append("--insecure")
            connection = f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        if node_auth:
            args.append("--enable-supernode-auth")
        (self.root / "cli").mkdir(exist_ok=True)
        (self.root / "cli" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n[superlink.{CONNECTION}]\n{connection}')
        proc = self.start("superlink", args, home="link")
        wait_for_port(port, proc)
        self.superlink = SuperLink(port, tls, node_auth, ca, proc)
        return self.superlink

    def register_node_key(self, name: str) -> Path:
        """A new OpenSSH P-384 key registered with the SuperLink (`flwr supernode register`);
        returns the private key's path (for `--auth-supernode-private-key`)."""
        key = self.root / f"{name}.key"
        make_node_key(key)
        self.run([str(BIN / "flwr"), "supernode", "register", str(key.with_suffix(".pub")),
                  CONNECTION], home="cli")
        return key

    def list_nodes(self) -> str:
        """`flwr supernode list` as JSON text (node ids and statuses)."""
        return self.run([str(BIN / "flwr"), "supernode", "list", CONNECTION, "--format", "json"],
                        home="cli")

    def start_js_node(self, name: str, *, node_config: str = "", key: Path | None = None,
                      script: Path | None = None, extra: list[str] | None = None
                      ) -> subprocess.Popen:
        """The JavaScript node against the SuperLink: the shipped `cola-fed-node`, or `script`
        (e.g. ECHO_NODE) run by node with the same flags."""
        link = self._link()
        command = [str(JS_NODE_BIN)] if script is None else ["node", str(script)]
        args = [*command, "--superlink", link.address, *link.node_security_args()]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        if node_config:
            args += ["--node-config", node_config]
        return self.start(name, [*args, *(extra or [])], home=name)

    def start_supernode(self, name: str, *, node_config: str = "",
                        key: Path | None = None) -> subprocess.Popen:
        """Flower's own `flower-supernode` against the SuperLink."""
        link = self._link()
        args = [str(BIN / "flower-supernode"), "--superlink", link.address,
                *link.node_security_args(), "--port", str(free_port())]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        if node_config:
            args += ["--node-config", node_config]
        return self.start(name, args, home=name)

    def flwr_run(self, app: Path, run_config: dict[str, object], timeout: float = 300) -> str:
        """`flwr run APP test --stream` with `run_config` written as a TOML file; its output."""
        return self.run(self._flwr_run_args(app, run_config), home="cli", timeout=timeout)

    def start_flwr_run(self, app: Path, run_config: dict[str, object]) -> subprocess.Popen:
        """`flwr run` as :meth:`flwr_run` does it, in the background (its output: `run.log`)."""
        return self.start("run", self._flwr_run_args(app, run_config), home="cli")

    def _flwr_run_args(self, app: Path, run_config: dict[str, object]) -> list[str]:
        path = self.root / "run-config.toml"
        path.write_text("".join(f"{key} = {toml_value(value)}\n"
                                for key, value in run_config.items()))
        return [str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream",
                "--run-config", str(path)]

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the process and the children it started (its own session): no goodbye to
        the SuperLink, which keeps the node online until its heartbeat expires."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def wait_for_log(self, name: str, text: str, seconds: float = 60,
                     proc: subprocess.Popen | None = None) -> str:
        """Wait until `<name>.log` holds `text`; return the log."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            log = self.log(name)
            if text in log:
                return log
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.returncode}) before logging "
                                     f"{text!r}:\n{log[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not log {text!r} in {seconds} s:\n"
                           + self.log(name)[-3000:])

    def interrupt(self, proc: subprocess.Popen, sig: int = signal.SIGINT,
                  timeout: float = 30) -> int:
        """Send `sig` to the process (by PID, not its group) and wait for its exit code."""
        os.kill(proc.pid, sig)
        return proc.wait(timeout=timeout)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _link(self) -> SuperLink:
        if self.superlink is None:
            raise RuntimeError("start the SuperLink first")
        return self.superlink

    def __enter__(self) -> FlowerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def toml_value(value: object) -> str:
    """A run-config value as TOML (str, bool, int, float)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
