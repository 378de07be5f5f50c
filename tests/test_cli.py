"""The ``cola-fed`` command line."""

import os
import stat
import subprocess
import sys

from cola_fed.wire.crypto import fingerprint
from cola_fed.wire.identity import KnownServers, identity_public_bytes, load_identity


def run(*args, cwd, home):
    """Run ``cola-fed ARGS`` in a fresh interpreter, with ``home`` as its COLA_FED_HOME."""
    env = {**os.environ, "COLA_FED_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "cola_fed.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def printed_fingerprint(key_path):
    return fingerprint(identity_public_bytes(load_identity(key_path)))


def test_keygen_writes_an_owner_only_identity_and_prints_its_fingerprint(tmp_path):
    home = tmp_path / "home"
    result = run("keygen", cwd=tmp_path, home=home)
    assert result.returncode == 0, result.stderr
    key_path = home / "server-identity.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    seen = printed_fingerprint(key_path)
    assert f"fingerprint:     {seen}" in result.stdout
    assert str(key_path) in result.stdout and f"{key_path}.pub" in result.stdout
    assert f"--node-config \"server-key-fingerprint='{seen}'\"" in result.stdout
    assert (home / "server-identity.pem.pub").read_text().strip() == \
        identity_public_bytes(load_identity(key_path)).hex()
    again = run("keygen", cwd=tmp_path, home=home)
    assert again.returncode == 1 and "--force" in again.stderr
    assert seen in again.stderr  # the existing key's fingerprint, to pin or compare
    assert printed_fingerprint(key_path) == seen
    forced = run("keygen", "--force", cwd=tmp_path, home=home)
    assert forced.returncode == 0, forced.stderr
    assert printed_fingerprint(key_path) != seen


def test_keygen_out_takes_a_file_or_an_existing_folder(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "keys").mkdir()
    into_folder = run("keygen", "--out", "keys", cwd=tmp_path, home=home)
    assert into_folder.returncode == 0, into_folder.stderr
    assert (tmp_path / "keys" / "server-identity.pem").is_file()
    as_file = run("keygen", "--out", "elsewhere/server.pem", cwd=tmp_path, home=home)
    assert as_file.returncode == 0, as_file.stderr
    assert (tmp_path / "elsewhere" / "server.pem.pub").is_file()
    printed_fingerprint(tmp_path / "elsewhere" / "server.pem")
    assert not home.exists()


def test_keygen_refuses_to_write_through_a_symlink(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "link.pem").symlink_to(target)
    result = run("keygen", "--out", "link.pem", "--force", cwd=tmp_path, home=tmp_path / "home")
    assert result.returncode == 1 and "symbolic link" in result.stderr
    assert target.read_text() == "keep"


def test_trust_list_and_forget(tmp_path):
    home = tmp_path / "home"
    known = KnownServers(home / "known-servers.json")
    known.check("lab-a", b"\x01" * 32)
    known.check("lab-b", b"\x02" * 32)
    listed = run("trust", "list", cwd=tmp_path, home=home)
    assert listed.returncode == 0, listed.stderr
    assert "lab-a  " + fingerprint(b"\x01" * 32) in listed.stdout
    assert "lab-b  " + fingerprint(b"\x02" * 32) in listed.stdout
    forgot = run("trust", "forget", "lab-a", cwd=tmp_path, home=home)
    assert forgot.returncode == 0, forgot.stderr
    assert known.entries() == {"lab-b": fingerprint(b"\x02" * 32)}
    missing = run("trust", "forget", "lab-a", cwd=tmp_path, home=home)
    assert missing.returncode == 1 and "not remembered" in missing.stderr


def test_trust_takes_another_known_servers_file(tmp_path):
    other = tmp_path / "other.json"
    KnownServers(other).check("lab", b"\x03" * 32)
    home = tmp_path / "home"
    empty = run("trust", "list", cwd=tmp_path, home=home)
    assert empty.returncode == 0 and "no servers remembered" in empty.stdout
    listed = run("trust", "list", "--known-servers", str(other), cwd=tmp_path, home=home)
    assert "lab" in listed.stdout
    forgot = run("trust", "forget", "lab", "--known-servers", str(other), cwd=tmp_path,
                 home=home)
    assert forgot.returncode == 0, forgot.stderr
    assert KnownServers(other).entries() == {}
    assert not home.exists()


def test_trust_reports_a_corrupt_file(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "known-servers.json").write_text("{oops")
    (home / "known-servers.json").chmod(0o600)
    result = run("trust", "list", cwd=tmp_path, home=home)
    assert result.returncode == 1 and "known-servers.json" in result.stderr
