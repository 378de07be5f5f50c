"""A node's state directory: what lets a node that restarts, or whose server resumed, go on.

Node config ``state-dir`` names the folder (mode 0700). It holds:

- ``node-identity.key``: the node's long-term Ed25519 identity (raw, 0600), created on first
  use. It signs the node's claim of its partition at every hello, so that a restarted node
  proves it is the node that held the partition, where a newcomer only claims it;
- ``run-<server>-<lineage>.state``: per run (a resumed run keeps its first run's lineage), the
  node's session and learner states as written after every message it answered (0600, written
  atomically): a magic (``CFPS``), a format version, the records, and an HMAC-SHA256 tag under
  a key derived from the node's identity (HKDF-SHA256, ``cola-fed node state v1``, as the
  JavaScript node keys its own). A file is read back only if it is this user's, 0600, and its
  tag and version hold, and then after the same checks as a session in memory. A file that
  fails (a flipped bit, another node's or another program's file, a 0644 file) is renamed
  ``<name>.<time>.refused`` with a warning, and the node goes on from the next good file or
  joins as a new node.

The folder must be this user's: created 0700, repaired to 0700 (with a warning) when it is
open to others, refused when it is a link or another user's.

Without ``state-dir`` the identity and the session live in Flower's ``context.state`` and die
with the node's process. ``cola-fed simulate`` gives each simulated node
``$COLA_FED_STATE_DIR/partition-<id>``, so a resumed simulation finds its nodes' states.
Torch-free.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Context, RecordDict
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from google.protobuf.message import DecodeError

from cola_fed.errors import ConfigError
from cola_fed.wire.identity import ensure_private_dir, read_private_file, write_private_file

log = logging.getLogger("cola_fed")

IDENTITY_FILE = "node-identity.key"
STATE_DIR_ENV = "COLA_FED_STATE_DIR"
MAX_STATE_BYTES = 2**32  # learner states of the largest plan a node's caps allow
STATE_MAGIC = b"CFPS"  # a cola-fed Python node's state file
STATE_FORMAT = 1
TAG_BYTES = 32
_STATE_KEY_INFO = b"cola-fed node state v1"
_RUN_FILE = re.compile(r"run-[0-9a-f]{16}-[0-9]{1,20}\.state")


class StateFileError(ConfigError):
    """A node state file that fails its checks (mode, tag, version, contents)."""


class NodeStore:
    """One node's state directory.

    Parameters
    ----------
    folder : str or Path
        The directory (created, mode 0700, on first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self._key: bytes | None = None

    @classmethod
    def for_context(cls, context: Context) -> NodeStore | None:
        """The node config's ``state-dir``; else, under ``$COLA_FED_STATE_DIR`` (set by
        ``cola-fed simulate``), ``partition-<id>``; else none."""
        folder = context.node_config.get("state-dir")
        if folder is not None:
            if not isinstance(folder, str) or not folder.strip():
                raise ConfigError(f"node config state-dir: expected a folder path, got "
                                  f"{folder!r}")
            return cls(folder)
        base = os.environ.get(STATE_DIR_ENV)
        partition = context.node_config.get("partition-id")
        if base and isinstance(partition, int):
            return cls(Path(base) / f"partition-{partition}")
        return None

    # ----------------------------------------------------------------------------------------
    # the node's identity

    def identity(self) -> Ed25519PrivateKey:
        """The node's long-term identity key, created on first use."""
        ensure_private_dir(self.folder, what="node state dir")
        path = self.folder / IDENTITY_FILE
        try:
            raw = read_private_file(path, what="node identity", limit=64, private=True)
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
            write_private_file(path, raw_private(key), what="node identity")
            log.info("created a node identity in %s", self.folder)
            return key
        if len(raw) != 32:
            raise ConfigError(f"node identity {path} is not a 32-byte Ed25519 key; remove it "
                              "only if this node may lose the partitions it holds")
        return Ed25519PrivateKey.from_private_bytes(raw)

    # ----------------------------------------------------------------------------------------
    # sessions, one file per run lineage

    def save(self, state: RecordDict, server_identity: bytes, lineage: int) -> Path:
        """Write the node's session records (``state``) for one run lineage, behind the
        format version and the node's tag."""
        body = STATE_MAGIC + bytes([STATE_FORMAT]) + serde.recorddict_to_proto(
            state).SerializeToString()
        return write_private_file(self._run_file(server_identity, lineage),
                                  body + self._tag(body), what="node state")

    def load(self, server_identity: bytes, lineage: int) -> RecordDict | None:
        """The session records saved for this server and lineage, if any; a file that fails
        its checks is set aside (with a warning) and counts as none."""
        return self.read_or_set_aside(self._run_file(server_identity, lineage))

    def files(self) -> list[Path]:
        """Every saved run file, newest first (names as this node writes them only)."""
        if not ensure_private_dir(self.folder, what="node state dir", create=False):
            return []
        found = []
        for path in self.folder.iterdir():
            if _RUN_FILE.fullmatch(path.name) and not path.is_symlink():
                try:
                    found.append((path.stat().st_mtime, path))
                except OSError:
                    continue
        return [path for _, path in sorted(found, key=lambda f: f[0], reverse=True)]

    def read(self, path: Path) -> RecordDict:
        """A state file's records, once it is this user's, 0600, and its tag and format
        hold. Raises :class:`StateFileError` (or :class:`FileNotFoundError`)."""
        ensure_private_dir(self.folder, what="node state dir", create=False)
        try:
            data = read_private_file(path, what="node state", limit=MAX_STATE_BYTES,
                                     private=True)
        except FileNotFoundError:
            raise
        except ConfigError as err:
            raise StateFileError(str(err)) from None
        head = len(STATE_MAGIC) + 1
        if len(data) < head + TAG_BYTES or not data.startswith(STATE_MAGIC):
            raise StateFileError(f"node state {path} is not a cola-fed node state file")
        body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
        if not hmac.compare_digest(self._tag(body), tag):
            raise StateFileError(f"node state {path}: its tag does not verify (it was changed, "
                                 "or written by another node)")
        if body[len(STATE_MAGIC)] != STATE_FORMAT:
            raise StateFileError(f"node state {path} is in format {body[len(STATE_MAGIC)]}; "
                                 f"this node reads format {STATE_FORMAT}")
        return _parse(body[head:], path)

    def read_or_set_aside(self, path: Path) -> RecordDict | None:
        """:meth:`read`, or None when there is no such file or it fails its checks: then it
        is renamed ``<name>.<time>.refused`` (kept for inspection) with a warning, so that
        it blocks nothing."""
        try:
            return self.read(path)
        except FileNotFoundError:
            return None
        except StateFileError as err:
            self.set_aside(path, str(err))
            return None

    def set_aside(self, path: Path, why: str) -> None:
        aside = path.with_name(f"{path.name}.{time.time_ns()}.refused")
        try:
            os.rename(path, aside)
        except OSError:
            aside = path
        log.warning("%s; set aside as %s: the node goes on from its next good state file, "
                    "or joins as a new node", why, aside.name)

    def _tag(self, body: bytes) -> bytes:
        """HMAC-SHA256 of ``body`` under a key derived from the node's identity."""
        if self._key is None:
            self._key = HKDF(hashes.SHA256(), 32, salt=None, info=_STATE_KEY_INFO).derive(
                raw_private(self.identity()))
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def _run_file(self, server_identity: bytes, lineage: int) -> Path:
        server = hashlib.sha256(bytes(server_identity)).hexdigest()[:16]
        return self.folder / f"run-{server}-{int(lineage)}.state"


def _parse(data: bytes, path: Path) -> RecordDict:
    try:
        return serde.recorddict_from_proto(ProtoRecordDict.FromString(data))
    except (DecodeError, ValueError, TypeError) as err:
        raise StateFileError(f"node state {path} is damaged ({type(err).__name__})") from None


def raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
