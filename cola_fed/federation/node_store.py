"""A node's state directory: what lets a node that restarts, or whose server resumed, go on.

Node config ``state-dir`` names the folder (mode 0700). It holds:

- ``node-identity.key``: the node's long-term Ed25519 identity (raw, 0600), created on first
  use. It signs the node's claim of its partition at every hello, so that a restarted node
  proves it is the node that held the partition, where a newcomer only claims it;
- ``run-<server>-<lineage>.state``: per run (a resumed run keeps its first run's lineage), the
  node's session and learner states as written after every message it answered (0600, written
  atomically, read back only after the same checks as a session in memory).

Without ``state-dir`` the identity and the session live in Flower's ``context.state`` and die
with the node's process. ``cola-fed simulate`` gives each simulated node
``$COLA_FED_STATE_DIR/partition-<id>``, so a resumed simulation finds its nodes' states.
Torch-free.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context, RecordDict
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from google.protobuf.message import DecodeError

from cola_fed.errors import ConfigError
from cola_fed.wire.identity import read_private_file, write_private_file

log = logging.getLogger("cola_fed")

IDENTITY_FILE = "node-identity.key"
STATE_DIR_ENV = "COLA_FED_STATE_DIR"
MAX_STATE_BYTES = 2**32  # learner states of the largest plan a node's caps allow


class NodeStore:
    """One node's state directory.

    Parameters
    ----------
    folder : str or Path
        The directory (created, mode 0700, on first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

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
        path = self.folder / IDENTITY_FILE
        try:
            raw = read_private_file(path, what="node identity", limit=64)
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
        """Write the node's session records (``state``) for one run lineage."""
        data = serde.recorddict_to_proto(state).SerializeToString()
        return write_private_file(self._run_file(server_identity, lineage), data,
                                  what="node state")

    def load(self, server_identity: bytes, lineage: int) -> RecordDict | None:
        """The session records saved for this server and lineage, if any."""
        path = self._run_file(server_identity, lineage)
        try:
            return self.read(path)
        except FileNotFoundError:
            return None

    def files(self) -> list[Path]:
        """Every saved run file, newest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.glob("run-*.state") if not p.is_symlink()]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def read(self, path: Path) -> RecordDict:
        return _parse(read_private_file(path, what="node state", limit=MAX_STATE_BYTES), path)

    def _run_file(self, server_identity: bytes, lineage: int) -> Path:
        server = hashlib.sha256(bytes(server_identity)).hexdigest()[:16]
        return self.folder / f"run-{server}-{int(lineage)}.state"


def _parse(data: bytes, path: Path) -> RecordDict:
    try:
        return serde.recorddict_from_proto(ProtoRecordDict.FromString(data))
    except (DecodeError, ValueError, TypeError) as err:
        raise ConfigError(f"node state {path} is damaged ({type(err).__name__}); remove it "
                          "and let the node rejoin as a new node") from None


def raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
