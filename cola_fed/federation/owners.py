"""Partition owners: which node identities may hold which partition (``strategy.partition-owners``).

Without the file, a partition goes to the first node identity that claims it (and a partition
several new nodes claim at once goes to none of them). With it, the server refuses at hello every
claim by an identity the file does not list for that partition, and every claim of a partition
it does not list at all, whoever comes first: Sybil node ids can no longer keep a partition's
owner out. The file works as SSH's ``authorized_keys``: one line per allowed identity,

.. code-block:: text

    # partition-id  fingerprint (SHA-256 of the node's Ed25519 identity key)      comment
    0  3f2a:9c1e:...:77b0   alice's laptop
    1  b81d:0e4f:...:c2d9   sensor 17
    1  5c07:aa13:...:0e91   sensor 17's replacement

Blank lines and lines starting with ``#`` are ignored. A fingerprint is 64 hex digits, in
groups separated by colons or not, case-insensitive: what ``cola-fed node-id --state-dir DIR``
prints for a node (Python or JavaScript: both keep ``node-identity.key`` in the same format).
Several lines may name one partition (any of those identities may hold it) or one identity
(it may hold any of those partitions). The parser is strict: any other line is an error naming
the file and the line. The file is the server's own: it must be a regular file (not a link),
owned by the user the server runs as and not writable by group or others (nor may its folder
be, unless the folder is sticky), and at most 1 MiB. Torch-free.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cola_fed.errors import ConfigError
from cola_fed.federation.protocol import MAX_PARTITION_ID
from cola_fed.wire.crypto import fingerprint
from cola_fed.wire.identity import _open_regular, _read_fd

MAX_OWNERS_BYTES = 2**20
KEY = "strategy.partition-owners"


@dataclass(frozen=True)
class PartitionOwners:
    """Partition id -> the fingerprints of the identities that may hold it."""

    path: Path
    owners: dict[int, frozenset[str]]

    def allows(self, partition_id: int, identity: bytes) -> bool:
        """Whether the node identity key ``identity`` (raw public bytes) may hold the
        partition."""
        return fingerprint(bytes(identity)) in self.owners.get(partition_id, frozenset())

    def why_not(self, partition_id: int, identity: bytes) -> str:
        """The reason a refused claim gives (for the log and ``refused-at-hello``)."""
        seen = fingerprint(bytes(identity))
        if partition_id not in self.owners:
            return (f"partition {partition_id} is not listed in {KEY} ({self.path}); no node "
                    f"may hold it (this node's identity is {seen})")
        return (f"partition {partition_id} is owned by other node identities ({KEY}, "
                f"{self.path}); this node's identity {seen} is not listed for it")


def read_partition_owners(path: str | Path) -> PartitionOwners:
    """Read and check an owners file (format in the module documentation); ConfigError names
    the file, and the line where the line is at fault."""
    path = Path(path).expanduser().absolute()
    what = f"{KEY} file"
    try:
        fd, info = _open_regular(path, what)
    except FileNotFoundError:
        raise ConfigError(f"{KEY}: {path} does not exist; create it (docs/security.md, "
                          "partition owners) or leave the key empty") from None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise ConfigError(f"{what} {path} is writable by group or others (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}), so anyone could make themselves "
                          f"a partition's owner; run: chmod go-w {path}")
    _check_folder(path.parent, what)
    data = _read_fd(fd, path, what, MAX_OWNERS_BYTES)
    return PartitionOwners(path, parse_partition_owners(data, path))


def parse_partition_owners(data: bytes, path: str | Path = "<owners>") -> dict[int, frozenset[str]]:
    """The owners a file's bytes name: partition id -> fingerprints (normalised)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{KEY} file {path}: not UTF-8 text (byte {err.start})") from None
    owners: dict[int, set[str]] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue

        def fail(why: str, number: int = number) -> ConfigError:
            return ConfigError(f"{KEY} file {path}, line {number}: {why}; expected "
                               "'<partition-id> <fingerprint> [comment]'")

        if any(ord(c) < 32 and c != "\t" for c in line):
            raise fail("a control character")
        if len(fields) < 2:
            raise fail("no fingerprint")
        partition, digest = fields[0], fields[1]
        if not (partition.isascii() and partition.isdigit()) or (
                len(partition) > 1 and partition[0] == "0"):
            raise fail(f"the partition id {partition[:40]!r} is not a whole number")
        if int(partition) > MAX_PARTITION_ID:
            raise fail(f"the partition id {partition[:40]} is above {MAX_PARTITION_ID}")
        hexes = digest.replace(":", "").lower()
        if len(hexes) != 64 or any(c not in "0123456789abcdef" for c in hexes) or \
                digest.startswith(":") or digest.endswith(":") or "::" in digest:
            raise fail(f"{digest[:80]!r} is not a fingerprint (64 hex digits, colons "
                       "allowed between groups; cola-fed node-id prints it)")
        normal = ":".join(hexes[i:i + 4] for i in range(0, 64, 4))
        entry = owners.setdefault(int(partition), set())
        if normal in entry:
            raise fail(f"partition {partition} lists {normal} twice")
        entry.add(normal)
    return {p: frozenset(f) for p, f in owners.items()}


def _check_folder(folder: Path, what: str) -> None:
    """The folder of the owners file: not writable by group or others unless sticky (then
    nobody else can replace the file in it)."""
    try:
        info = os.stat(folder)
    except OSError as err:
        raise ConfigError(f"cannot check the folder of the {what}, {folder}: "
                          f"{err.strerror}") from None
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(f"the folder of the {what}, {folder}, is writable by group or "
                          f"others (mode {stat.S_IMODE(info.st_mode):04o}), so anyone could "
                          f"replace the file; keep it in a folder only you can write, or run: "
                          f"chmod go-w {folder}")
