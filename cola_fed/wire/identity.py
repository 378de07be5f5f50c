"""The server's long-term identity key, and the servers a node remembers. Torch-free, POSIX.

- **Identity**: an Ed25519 key the server keeps across runs and signs each hello with. It lives
  in ``server-identity.pem`` (PKCS#8 PEM, unencrypted, mode 0600) under :func:`cola_fed_home`,
  with the raw public key in hex next to it (``server-identity.pem.pub``).
- **Trust**: a node either pins the server's fingerprint (node config
  ``server-key-fingerprint``) or trusts it on first use and remembers it in
  ``known-servers.json``; a later key that does not match is refused, as ``ssh`` does.

Both files are written so that they are never readable by others, not even for a moment, and
never through a symbolic link: a temporary file created ``O_EXCL | O_NOFOLLOW`` with mode 0600
in the same directory, fsynced, then renamed (or hard-linked) onto the path. Both are read with
``O_NOFOLLOW`` and checked with ``fstat`` on the opened descriptor, so what is checked is what is
read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from cola_fed.errors import ConfigError, MalformedPayloadError, UntrustedKeyError
from cola_fed.wire.crypto import fingerprint, normalise_fingerprint

log = logging.getLogger("cola_fed")

IDENTITY_FILE = "server-identity.pem"
KNOWN_SERVERS_FILE = "known-servers.json"
#: the environment variable naming another known-servers file (``cola-fed simulate`` sets it)
KNOWN_SERVERS_ENV = "COLA_FED_KNOWN_SERVERS"
KNOWN_SERVERS_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_MAX_KEY_BYTES = 64 * 1024  # a PEM Ed25519 key is ~120 bytes; anything huge is not ours
_MAX_KNOWN_BYTES = 16 * 1024 * 1024
_KEY_KINDS = (  # what a refused key is, in words
    (x25519.X25519PrivateKey, "an X25519 key"),
    (x448.X448PrivateKey, "an X448 key"),
    (ed448.Ed448PrivateKey, "an Ed448 key"),
    (rsa.RSAPrivateKey, "an RSA key"),
    (ec.EllipticCurvePrivateKey, "an elliptic-curve (ECDSA) key"),
    (dsa.DSAPrivateKey, "a DSA key"),
)


# --------------------------------------------------------------------------------------------
# where things live


def cola_fed_home() -> Path:
    """The folder for cola-fed's own files: the server identity and the known servers.

    ``$COLA_FED_HOME`` if set, else ``$XDG_CONFIG_HOME/cola-fed``, else ``~/.config/cola-fed``
    (a relative ``$XDG_CONFIG_HOME`` is ignored, as the XDG specification asks).
    """
    home = os.environ.get("COLA_FED_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "cola-fed"
    return Path.home() / ".config" / "cola-fed"


def default_identity_path() -> Path:
    """Where the server's identity key lives unless told otherwise."""
    return cola_fed_home() / IDENTITY_FILE


def default_known_servers_path() -> Path:
    """Where a node remembers the servers it trusted on first use unless its node config says
    otherwise: ``$COLA_FED_KNOWN_SERVERS`` (``cola-fed simulate`` points it at a file of the
    simulation's own, so simulated nodes keep no trust between runs), else
    ``cola_fed_home() / "known-servers.json"``."""
    override = os.environ.get(KNOWN_SERVERS_ENV)
    return Path(override).expanduser() if override else cola_fed_home() / KNOWN_SERVERS_FILE


# --------------------------------------------------------------------------------------------
# files that are never readable by others and never followed through a symbolic link


def _refuse_symlink(path: Path, what: str) -> None:
    """Refuse to write ``path`` if it is a symbolic link: it could point anywhere."""
    if path.is_symlink():
        target = "?"
        with contextlib.suppress(OSError):
            target = os.readlink(path)
        raise ConfigError(
            f"{what} {path} is a symbolic link (to {target}); cola-fed never reads or "
            f"writes through one. Replace the link with the file itself, or point cola-fed at "
            f"the real file."
        )


def _ensure_dir(folder: Path) -> None:
    """Create ``folder`` (mode 0700) if it is missing, so that a new key is never exposed."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the folder {folder}: {err.strerror}; create it "
                          f"(mode 0700) or choose another path") from None


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data``, then make it durable before the file gets its name."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort (some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing has that name yet (atomically).

    Raises :class:`FileExistsError` if something has.
    """
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # a filesystem without hard links: check, then rename (a narrow race, never a leak)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)


def write_private_file(
    path: str | Path, data: bytes, *, what: str, mode: int = 0o600, overwrite: bool = True
) -> Path:
    """Atomically write ``data`` to ``path`` with ``mode``, never readable by others meanwhile.

    The bytes go to a temporary file in the same folder, created ``O_EXCL | O_NOFOLLOW`` with
    mode 0600 (so no umask can widen it and no planted link can redirect it), fsynced, then
    renamed onto ``path`` (``overwrite``) or hard-linked to it. ``path`` itself must not be a
    symbolic link. ``what`` names the file in errors, which are :class:`ConfigError`, but for
    :class:`FileExistsError` when ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    _refuse_symlink(path, what)
    _ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as err:
        raise ConfigError(f"cannot write {what} in {path.parent}: {err.strerror}; check that "
                          f"the folder exists and is writable by you") from None
    try:
        try:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask took away
            _write_all(fd, data)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)  # replaces a link planted meanwhile, never writes through it
        else:
            _link_new(tmp, path)
    except FileExistsError:
        raise
    except OSError as err:
        raise ConfigError(f"cannot write {what} {path}: {err.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def _open_regular(path: Path, what: str) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without following a link; refuse what is not a regular file.

    Raises :class:`FileNotFoundError` when ``path`` does not exist, so callers decide what
    absence means. ``O_NONBLOCK`` keeps a FIFO planted at the path from hanging the open.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            _refuse_symlink(path, what)
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"{what} {path} is not a regular file; remove it, or point cola-fed "
                          f"at the real file")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        os.close(fd)  # another user could have planted it (a shared COLA_FED_HOME)
        raise ConfigError(f"{what} {path} belongs to user {info.st_uid}, not to this user "
                          f"({os.geteuid()}); refusing it. Check where it came from, then "
                          "recreate it as this user")
    return fd, info


def _read_fd(fd: int, path: Path, what: str, limit: int) -> bytes:
    """Read at most ``limit`` bytes from ``fd`` and close it; a larger file is refused."""
    with os.fdopen(fd, "rb") as handle:
        # never more than the file holds: a large ``limit`` must not allocate ``limit`` bytes
        data = handle.read(min(limit, os.fstat(fd).st_size) + 1)
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is larger than {limit:,} bytes; it is not a file "
                          f"cola-fed wrote")
    return data


def read_private_file(path: str | Path, *, what: str, limit: int, private: bool = False
                      ) -> bytes:
    """The bytes of a file this user owns, read without following a link: at most ``limit``
    bytes (a larger file is refused). :class:`FileNotFoundError` when there is none. With
    ``private``, a file that others may read or write (any of 0077) is refused too, as ssh
    refuses a private key."""
    path = Path(path)
    fd, info = _open_regular(path, what)
    if private and info.st_mode & 0o077:
        os.close(fd)
        raise ConfigError(f"{what} {path} is accessible to others (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}); it must be 0600. If you wrote "
                          f"it yourself, run: chmod 600 {path}")
    return _read_fd(fd, path, what, limit)


def ensure_private_dir(folder: str | Path, *, what: str, create: bool = True) -> bool:
    """Make sure ``folder`` is a folder of this user's that nobody else may enter or write:
    created 0700 when missing (with ``create``); one of this user's with a looser mode is
    repaired to 0700, with a warning; a link, a file, or a folder of another user is refused
    (:class:`ConfigError`). Whatever is in a folder that was open to others is still checked
    on the way out by its reader (hashes, tags), never trusted for being there. Returns
    whether the folder exists."""
    folder = Path(folder)
    if create:
        _ensure_dir(folder)
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {folder} is not a folder (or is a symbolic link); refused. "
                          "Point cola-fed at a folder of your own")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise ConfigError(f"{what} {folder} belongs to user {info.st_uid}, not to this user "
                          f"({os.geteuid()}); refused. Choose a folder of your own")
    if info.st_mode & 0o077:
        try:  # the folder itself, never what a link swapped in meanwhile points to
            fd = os.open(folder, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
        except OSError as err:
            raise ConfigError(f"{what} {folder} is open to others (mode "
                              f"{stat.S_IMODE(info.st_mode):04o}) and cannot be made 0700 "
                              f"({err}); run: chmod 700 {folder}") from None
        log.warning("%s %s was open to others (mode %04o); made it 0700. What it holds is "
                    "checked before use, never trusted", what, folder,
                    stat.S_IMODE(info.st_mode))
    return True


# --------------------------------------------------------------------------------------------
# the server's identity


def generate_identity() -> Ed25519PrivateKey:
    """A fresh Ed25519 identity key."""
    return Ed25519PrivateKey.generate()


def identity_public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key: what the server sends and nodes fingerprint."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_path(path: str | Path) -> Path:
    """The public key file that goes with the identity at ``path``: ``<path>.pub``."""
    path = Path(path)
    return path.with_name(path.name + ".pub")


def save_identity(key: Ed25519PrivateKey, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``key`` to ``path`` (PKCS#8 PEM, unencrypted, 0600) and its public key to
    ``<path>.pub`` (64 hex digits and a newline, 0644).

    Refuses an existing ``path`` unless ``overwrite``, and a symbolic link at ``path`` always;
    see :func:`write_private_file` for how the file stays private. Returns ``path``.
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"a server identity must be an Ed25519 private key, got "
                          f"{type(key).__name__}")
    path = Path(path)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        write_private_file(path, pem, what="server identity", overwrite=overwrite)
    except FileExistsError:
        raise ConfigError(
            f"server identity {path} already exists; refusing to replace it, since nodes that "
            f"pinned or remembered its fingerprint would refuse a new one. To replace it anyway: "
            f"cola-fed keygen --force --out {path}, then give nodes the new fingerprint"
        ) from None
    public = identity_public_bytes(key).hex() + "\n"
    write_private_file(public_key_path(path), public.encode(), what="server public key",
                       mode=0o644)
    return path


def load_identity(path: str | Path) -> Ed25519PrivateKey:
    """Read the server's Ed25519 identity from ``path``.

    Refuses a symbolic link, anything but a regular file, a file others can read or write, an
    encrypted key, and keys of any other type (an X25519 ``server.key`` from an earlier
    cola-fed included), each with a :class:`ConfigError` that says what to do.
    """
    path = Path(path)
    try:
        fd, info = _open_regular(path, "server identity")
    except FileNotFoundError:
        raise ConfigError(f"no server identity at {path}; create one with: cola-fed keygen "
                          f"--out {path}") from None
    if info.st_mode & 0o077:
        os.close(fd)
        raise ConfigError(f"server identity {path} is accessible to others (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}); a private key must be readable "
                          f"by its owner only. Run: chmod 600 {path}")
    return _parse_identity(_read_fd(fd, path, "server identity", _MAX_KEY_BYTES), path)


def _parse_identity(pem: bytes, path: Path) -> Ed25519PrivateKey:
    """Turn the PEM bytes from ``path`` into an Ed25519 key, or say why they are not one."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # encrypted
        raise ConfigError(f"server identity {path} is encrypted; cola-fed needs an unencrypted "
                          f"key (protect it with file permissions). Create one with: cola-fed "
                          f"keygen --force --out {path}") from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"server identity {path} is not a PEM private key ({err}); create "
                          f"one with: cola-fed keygen --force --out {path}") from None
    if isinstance(key, Ed25519PrivateKey):
        return key
    found = next((words for kind, words in _KEY_KINDS if isinstance(key, kind)),
                 f"a {type(key).__name__}")
    hint = " (the server key of an earlier cola-fed version)" if "X25519" in found else ""
    raise ConfigError(
        f"server identity {path} holds {found}{hint}, but a server identity must be an "
        f"Ed25519 key. Run: cola-fed keygen --force --out {path}; then give nodes the new "
        f"fingerprint to pin (server-key-fingerprint), and have nodes that trusted the old key "
        f"forget it (cola-fed trust forget NAME)"
    )


def load_or_create_identity(path: str | Path | None = None) -> Ed25519PrivateKey:
    """The server identity at ``path`` (default :func:`default_identity_path`), created on
    first use.

    A new identity is logged at WARNING with its path and fingerprint, since nodes need that
    fingerprint to pin it; an existing one at INFO.
    """
    path = Path(path) if path is not None else default_identity_path()
    if not os.path.lexists(path):
        key = generate_identity()
        try:
            save_identity(key, path)
        except ConfigError:
            if not os.path.lexists(path):
                raise
            # another process created it first: use theirs, below
        else:
            seen = fingerprint(identity_public_bytes(key))
            log.warning("created a new server identity at %s, fingerprint %s; nodes pin it "
                        "with --node-config \"server-key-fingerprint='%s'\"", path, seen, seen)
            return key
    key = load_identity(path)
    log.info("server identity %s, fingerprint %s", path, fingerprint(identity_public_bytes(key)))
    return key


# --------------------------------------------------------------------------------------------
# the servers a node remembers


def _check_name(name: object) -> str:
    """A server name is 1-128 characters of ``A-Z a-z 0-9 _ . : -``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"a server name must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', "
                          f"':' or '-', got {name!r}")
    return name


def _check_public(public: object) -> bytes:
    """A server's public key, as it came over the wire, must be 32 raw bytes."""
    if not isinstance(public, (bytes, bytearray)) or len(public) != 32:
        raise MalformedPayloadError("a server public key must be 32 raw bytes")
    return bytes(public)


class KnownServers:
    """The servers this machine trusted on first use, and their key fingerprints.

    A JSON file ``{"version": 1, "servers": {name: fingerprint}}``, mode 0600, written
    atomically and never through a symbolic link. Several nodes on one machine may share it:
    every read-modify-write holds an exclusive ``flock`` on ``<file>.lock``. A file that cannot
    be read as such is an error naming it, never silently replaced: it is what keeps an
    impostor out.

    Parameters
    ----------
    path : str, Path or None
        The file; default :func:`default_known_servers_path` (resolved now).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_known_servers_path()
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"KnownServers({str(self.path)!r})"

    def check(self, name: str, public: bytes, *, pinned: str | None = None,
              remember: bool = True) -> str:
        """Verify server ``name``'s raw public key; returns its fingerprint.

        With ``pinned``, the key must match that fingerprint and the file is not touched.
        Otherwise a remembered server must present the key it presented before, and a new one
        is remembered (trust on first use, logged at WARNING) unless ``remember`` is false
        (a first look, before the rest of the hello has been checked). A mismatch raises
        :class:`UntrustedKeyError`.
        """
        _check_name(name)
        seen = fingerprint(_check_public(public))
        if pinned is not None:
            return self._check_pinned(name, seen, normalise_fingerprint(pinned))
        if not remember:
            known = self._read().get(name)
            if known is not None and known != seen:
                raise UntrustedKeyError(self._mismatch(name, seen, known))
            return seen
        with self._locked():
            servers = self._read()
            known = servers.get(name)
            if known is None:
                servers[name] = seen
                self._write(servers)
        if known is None:
            log.warning("trusting server %r on first use: key fingerprint %s, remembered in %s. "
                        "Check it with the server's operator, then pin it with --node-config "
                        "\"server-key-fingerprint='%s'\"", name, seen, self.path, seen)
        elif known != seen:
            raise UntrustedKeyError(self._mismatch(name, seen, known))
        return seen

    def forget(self, name: str) -> bool:
        """Forget server ``name``, so its next key is trusted on first use; False if unknown."""
        _check_name(name)
        if not os.path.lexists(self.path):
            return False
        with self._locked():
            servers = self._read()
            if servers.pop(name, None) is None:
                return False
            self._write(servers)
        return True

    def entries(self) -> dict[str, str]:
        """Every remembered server and its fingerprint (empty if the file does not exist)."""
        return self._read()

    # ----------------------------------------------------------------------------------------

    def _check_pinned(self, name: str, seen: str, pinned: str) -> str:
        if seen != pinned:
            raise UntrustedKeyError(
                f"server {name!r} presented a key with fingerprint {seen}, but this node pins "
                f"{pinned} (server-key-fingerprint); refusing to talk to it. If the server's "
                f"identity was replaced on purpose, verify its new fingerprint with its "
                f"operator, out of band, and update server-key-fingerprint in the node config"
            )
        return seen

    def _mismatch(self, name: str, seen: str, known: str) -> str:
        option = ("" if self.path == default_known_servers_path()
                  else f" --known-servers {self.path}")
        return (
            f"server {name!r} presented a key with fingerprint {seen}, but {self.path} "
            f"remembers {known} for it; refusing to talk to it. Either someone is impersonating "
            f"the server, or its identity was replaced. If it was replaced on purpose, verify "
            f"the new fingerprint with the server's operator, out of band, then run: cola-fed "
            f"trust forget {name}{option}; or pin the verified fingerprint with --node-config "
            f"\"server-key-fingerprint='<fingerprint>'\""
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on ``<file>.lock`` (created 0600, never followed)."""
        _refuse_symlink(self.lock_path, "known-servers lock file")
        _ensure_dir(self.path.parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.lock_path, flags, 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP:
                _refuse_symlink(self.lock_path, "known-servers lock file")
            raise ConfigError(f"cannot open the lock file {self.lock_path}: {err.strerror}; "
                              f"check that its folder is writable by you") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> dict[str, str]:
        """The remembered servers; a missing file is an empty one, a bad one an error."""
        try:
            fd, info = _open_regular(self.path, "known-servers file")
        except FileNotFoundError:
            return {}
        if info.st_mode & 0o022:
            os.close(fd)
            raise ConfigError(f"known-servers file {self.path} is writable by others (mode "
                              f"{stat.S_IMODE(info.st_mode):04o}), so anyone could make this "
                              f"node trust an impostor. Run: chmod 600 {self.path}")
        data = _read_fd(fd, self.path, "known-servers file", _MAX_KNOWN_BYTES)
        return self._parse(data)

    def _parse(self, data: bytes) -> dict[str, str]:
        """Validate the file's JSON: version 1, and valid names mapped to valid fingerprints."""
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._corrupt(f"it is not valid JSON ({err})") from None
        except RecursionError:  # json.loads recurses once per level of nesting
            raise self._corrupt("it nests too deeply to be a known-servers file") from None
        if not isinstance(document, dict) or document.get("version") != KNOWN_SERVERS_VERSION:
            raise self._corrupt(f"expected an object with \"version\": {KNOWN_SERVERS_VERSION}")
        servers = document.get("servers")
        if not isinstance(servers, dict):
            raise self._corrupt("expected \"servers\" to be an object of name: fingerprint")
        checked = {}
        for name, value in servers.items():
            if not isinstance(value, str) or not _NAME.fullmatch(name):
                raise self._corrupt(f"bad entry {name!r}: {value!r}")
            try:
                checked[name] = normalise_fingerprint(value)
            except ConfigError:
                raise self._corrupt(f"bad fingerprint for {name!r}: {value!r}") from None
        return checked

    def _corrupt(self, why: str) -> ConfigError:
        return ConfigError(
            f"known-servers file {self.path} is unreadable: {why}. cola-fed will not overwrite "
            f"it, since it holds the server keys this machine trusts; fix it by hand, or remove "
            f"it to trust every server on first use again"
        )

    def _write(self, servers: dict[str, str]) -> None:
        document = {"version": KNOWN_SERVERS_VERSION, "servers": dict(sorted(servers.items()))}
        data = (json.dumps(document, indent=2) + "\n").encode()
        write_private_file(self.path, data, what="known-servers file")
