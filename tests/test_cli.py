"""The ``cola-fed`` command line."""

import stat
import subprocess
import sys

from cola_fed.wire import fingerprint, load_private_key, public_bytes


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cola_fed.cli", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


def test_keygen_writes_an_owner_only_key_and_prints_its_fingerprint(tmp_path):
    result = run("keygen", "--out", "keys", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    key_path = tmp_path / "keys" / "server.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    printed = fingerprint(public_bytes(load_private_key(key_path)))
    assert f"fingerprint: {printed}" in result.stdout
    again = run("keygen", "--out", "keys", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr
    assert run("keygen", "--out", "keys", "--force", cwd=tmp_path).returncode == 0
