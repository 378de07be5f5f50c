"""The server's Ed25519 identity on disk, and the known-servers trust store (TOFU and pinning)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cola_fed.errors import ConfigError, UntrustedKeyError
from cola_fed.wire.crypto import fingerprint
from cola_fed.wire.identity import (
    KnownServers,
    cola_fed_home,
    default_identity_path,
    generate_identity,
    identity_public_bytes,
    load_identity,
    load_or_create_identity,
    save_identity,
)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Every test gets its own COLA_FED_HOME; the real home is never touched."""
    folder = tmp_path / "home"
    monkeypatch.setenv("COLA_FED_HOME", str(folder))
    return folder


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def public(seed: int) -> bytes:
    return bytes([seed]) * 32


# --------------------------------------------------------------------------------------------
# where things live


def test_home_follows_cola_fed_home_then_xdg_then_dot_config(monkeypatch, tmp_path, home):
    assert cola_fed_home() == home
    assert default_identity_path() == home / "server-identity.pem"
    monkeypatch.delenv("COLA_FED_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cola_fed_home() == tmp_path / "xdg" / "cola-fed"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cola_fed_home() == tmp_path / "user" / ".config" / "cola-fed"


# --------------------------------------------------------------------------------------------
# the identity key


def test_identity_round_trips_with_its_public_key_file(home):
    key = generate_identity()
    path = save_identity(key, home / "server-identity.pem")
    loaded = load_identity(path)
    assert identity_public_bytes(loaded) == identity_public_bytes(key)
    assert len(identity_public_bytes(key)) == 32
    assert mode(home) == 0o700
    pub = home / "server-identity.pem.pub"
    assert pub.read_text() == identity_public_bytes(key).hex() + "\n"
    assert [p.name for p in home.iterdir() if p.name.endswith(".tmp")] == []


def test_key_is_0600_from_creation_even_under_umask_0(home, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        if flags & os.O_CREAT and str(path).endswith(".tmp"):
            opened.append((flags, mode, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0)
    try:
        path = save_identity(generate_identity(), home / "server-identity.pem")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    key_tmp = opened[0]  # the private key's temp file: exclusive, no link, 0600 from the start
    required = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    assert key_tmp[0] & required == required
    assert key_tmp[1] == 0o600 and key_tmp[2] == 0o600


def test_existing_key_is_kept_unless_overwrite(home):
    path = save_identity(generate_identity(), home / "server-identity.pem")
    first = path.read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        save_identity(generate_identity(), path)
    assert path.read_bytes() == first
    replacement = generate_identity()
    save_identity(replacement, path, overwrite=True)
    assert identity_public_bytes(load_identity(path)) == identity_public_bytes(replacement)
    assert mode(path) == 0o600


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlink_at_the_key_path_is_refused_and_its_target_untouched(tmp_path, home, overwrite):
    target = tmp_path / "target"
    target.write_text("keep")
    home.mkdir()
    link = home / "server-identity.pem"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        save_identity(generate_identity(), link, overwrite=overwrite)
    assert target.read_text() == "keep" and link.is_symlink()


def test_loading_through_a_symlink_is_refused(tmp_path, home):
    real = save_identity(generate_identity(), tmp_path / "real.pem")
    home.mkdir()
    link = home / "server-identity.pem"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        load_identity(link)


def test_a_dangling_symlink_is_not_followed_to_create_a_file(tmp_path, home):
    home.mkdir()
    link = home / "server-identity.pem"
    link.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(ConfigError, match="symbolic link"):
        save_identity(generate_identity(), link)
    assert not (tmp_path / "elsewhere.pem").exists()


def test_group_readable_key_is_refused_with_a_chmod_hint(home):
    path = save_identity(generate_identity(), home / "server-identity.pem")
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        load_identity(path)


def test_a_folder_at_the_key_path_is_refused(home):
    (home / "server-identity.pem").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_identity(home / "server-identity.pem")


def test_an_old_x25519_key_is_refused_with_the_keygen_hint(home):
    home.mkdir()
    path = home / "server.key"
    pem = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="X25519") as caught:
        load_identity(path)
    assert "cola-fed keygen --force" in str(caught.value)
    assert "server-key-fingerprint" in str(caught.value)


def test_garbage_and_missing_keys_are_config_errors(home):
    home.mkdir()
    path = home / "server-identity.pem"
    with pytest.raises(ConfigError, match="cola-fed keygen"):
        load_identity(path)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_identity(path)


def test_load_or_create_creates_once_then_reuses(home, caplog):
    with caplog.at_level(logging.INFO, logger="cola_fed"):
        first = load_or_create_identity()
    seen = fingerprint(identity_public_bytes(first))
    path = default_identity_path()
    assert path.exists() and mode(path) == 0o600
    created = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert created and str(path) in created[0].getMessage() and seen in created[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cola_fed"):
        again = load_or_create_identity(path)
    assert fingerprint(identity_public_bytes(again)) == seen
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(seen in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# known servers


def test_trust_on_first_use_remembers_and_then_insists(home, caplog):
    known = KnownServers()
    assert known.path == home / "known-servers.json"
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        seen = known.check("lab-server", public(1))
    assert seen == fingerprint(public(1))
    assert "first use" in caplog.text and seen in caplog.text
    assert mode(known.path) == 0o600 and mode(known.lock_path) == 0o600
    stored = json.loads(known.path.read_text())
    assert stored == {"version": 1, "servers": {"lab-server": seen}}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        assert KnownServers().check("lab-server", public(1)) == seen
    assert "first use" not in caplog.text
    with pytest.raises(UntrustedKeyError) as caught:
        known.check("lab-server", public(2))
    message = str(caught.value)
    for part in (str(known.path), "'lab-server'", seen, fingerprint(public(2)),
                 "cola-fed trust forget lab-server", "server-key-fingerprint", "out of band"):
        assert part in message
    assert known.entries() == {"lab-server": seen}
    assert known.forget("lab-server") is True
    assert known.forget("lab-server") is False
    assert known.check("lab-server", public(2)) == fingerprint(public(2))


def test_a_first_look_refuses_a_changed_key_and_remembers_nothing(home):
    known = KnownServers()
    assert known.check("lab", public(1), remember=False) == fingerprint(public(1))
    assert not known.path.exists()
    known.check("lab", public(1))
    with pytest.raises(UntrustedKeyError, match="remembers"):
        known.check("lab", public(2), remember=False)
    assert known.entries() == {"lab": fingerprint(public(1))}


def test_pinned_mismatch_raises_and_writes_nothing(home):
    known = KnownServers()
    pinned = fingerprint(public(1)).replace(":", "").upper()
    assert known.check("lab", public(1), pinned=pinned) == fingerprint(public(1))
    with pytest.raises(UntrustedKeyError, match="pins"):
        known.check("lab", public(2), pinned=pinned)
    assert not known.path.exists() and not home.exists()


def test_pinned_overrides_a_remembered_key(home):
    known = KnownServers()
    known.check("lab", public(1))
    assert known.check("lab", public(2), pinned=fingerprint(public(2))) == fingerprint(public(2))
    assert known.entries() == {"lab": fingerprint(public(1))}


@pytest.mark.parametrize("name", ["", "a" * 129, "has space", "slash/name", "ünïcode", 7])
def test_bad_server_names_are_refused(home, name):
    with pytest.raises(ConfigError, match="server name"):
        KnownServers().check(name, public(1))


@pytest.mark.parametrize("content", [
    "{not json",
    "[]",
    '{"version": 2, "servers": {}}',
    '{"version": 1, "servers": []}',
    '{"version": 1, "servers": {"lab": 3}}',
    '{"version": 1, "servers": {"lab": "abcd"}}',
    '{"version": 1, "servers": {"bad name": "' + "ab" * 32 + '"}}',
    pytest.param('{"version": 1, "servers": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 id="nested-too-deeply"),  # not a RecursionError
])
def test_a_corrupt_file_is_an_error_naming_it_and_is_never_overwritten(home, content):
    home.mkdir()
    path = home / "known-servers.json"
    path.write_text(content)
    path.chmod(0o600)
    known = KnownServers(path)
    with pytest.raises(ConfigError, match=str(path)):
        known.check("lab", public(1))
    with pytest.raises(ConfigError, match=str(path)):
        known.entries()
    assert path.read_text() == content


def test_a_symlink_at_the_known_servers_path_is_refused(tmp_path, home):
    target = tmp_path / "target.json"
    original = json.dumps({"version": 1, "servers": {}})
    target.write_text(original)
    home.mkdir()
    link = home / "known-servers.json"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        KnownServers().check("lab", public(1))
    with pytest.raises(ConfigError, match="symbolic link"):
        KnownServers().entries()
    assert target.read_text() == original and link.is_symlink()


def test_a_known_servers_file_others_can_write_is_refused(home):
    known = KnownServers()
    known.check("lab", public(1))
    known.path.chmod(0o666)
    with pytest.raises(ConfigError, match="chmod 600"):
        known.check("lab", public(1))


def remember_many(path: str, prefix: str, count: int, start) -> None:
    """Worker: remember ``count`` servers named ``prefix-i`` in the shared file."""
    logging.getLogger("cola_fed").setLevel(logging.ERROR)  # no first-use warning per name
    start.wait(30)
    known = KnownServers(path)
    for i in range(count):
        known.check(f"{prefix}-{i}", bytes([i % 256]) * 32)


def test_two_processes_remembering_concurrently_both_end_up_in_a_valid_file(home):
    path = str(home / "known-servers.json")
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    # 100 each overlap enough that without the lock updates get lost (checked: ~25% lost)
    workers = [context.Process(target=remember_many, args=(path, prefix, 100, start))
               for prefix in ("a", "b")]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    entries = KnownServers(path).entries()
    assert set(entries) == {f"{prefix}-{i}" for prefix in "ab" for i in range(100)}
    assert entries["a-3"] == entries["b-3"] == fingerprint(bytes([3]) * 32)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="changing a file's owner needs root")
def test_files_another_user_owns_are_refused(tmp_path):
    """In a shared COLA_FED_HOME another user could plant a known-servers file that trusts an
    attacker, or an identity of its own: neither is read."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    known = tmp_path / "known-servers.json"
    KnownServers(known).check("default", bytes(32))
    os.chown(known, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to user 65534"):
        KnownServers(known).check("default", bytes(32))
    key = tmp_path / "server-identity.pem"
    save_identity(Ed25519PrivateKey.generate(), key)
    os.chown(key, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to user 65534"):
        load_identity(key)
