"""A node's store of verified train-step graphs and task files, by content hash. Torch-free.

A node on the ONNX backend receives its graphs at hello, checks each one against the SHA-256 the
server lists for it and for what it contains (``graph_check``: only the exporter's operators, no
external data, no subgraphs), and keeps it here under its hash, so that later rounds (often a
fresh process per message) load exactly the bytes that were checked, and check them again on
load. Files are written whole or not at all (a temporary file, fsynced, then renamed), readable
by the node's user only. The folder must be this user's: one open to others (a pre-existing
world-writable folder) is made 0700 with a warning before anything in it is read, a link or
another user's folder is refused, and a cached file is read only if it is a regular file of
this user's, never through a link (and its hash is checked again either way).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from cola_fed.edge.graph_check import check_graph
from cola_fed.edge.graphs import content_hash
from cola_fed.errors import ConfigError, PayloadError
from cola_fed.wire.identity import ensure_private_dir, read_private_file


def default_cache_dir(kind: str = "graphs") -> Path:
    """``$COLA_FED_CACHE/<kind>``, else ``$XDG_CACHE_HOME/cola-fed/<kind>`` (an absolute
    ``$XDG_CACHE_HOME`` only, as the XDG specification asks), else ``~/.cache/cola-fed/<kind>``."""
    if os.environ.get("COLA_FED_CACHE"):
        return Path(os.environ["COLA_FED_CACHE"]).expanduser() / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "cola-fed" / kind


_SHA256 = re.compile(r"[0-9a-f]{64}")


_MAX_CACHED_BYTES = 2**32


class ContentCache:
    """Verified files in ``directory``, one ``<sha256><suffix>`` each, checked on the way in
    and again on the way out (:meth:`check`): what a node uses is what was checked."""

    #: what the files are, for messages; the file suffix; the default folder under the cache
    what, suffix, kind = "file", "", "files"

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir(self.kind)

    def check(self, name: str, data: bytes) -> None:
        """Refuse content that is not what ``name`` must be (raise); the default accepts."""

    def put(self, name: str, data: bytes, expected_hash: str) -> None:
        """Store ``data`` if its hash is ``expected_hash`` and it passes :meth:`check`; else
        raise (``PayloadError``, or what ``check`` raises) and store nothing."""
        path = self._path(name, expected_hash)
        got = content_hash(data)
        if got != expected_hash:
            raise PayloadError(f"{self.what} {name!r}: sha256 {got[:16]}... does not match "
                               f"the listed {expected_hash[:16]}...; refused")
        self.check(name, data)
        if self.has(name, expected_hash):
            return
        ensure_private_dir(self.directory, what=f"{self.what} cache")
        _write_atomically(path, data)  # concurrent nodes on one machine share the cache

    def get(self, name: str, expected_hash: str) -> bytes:
        """The stored bytes of ``name``, checked again against ``expected_hash`` and by
        :meth:`check`."""
        path = self._path(name, expected_hash)
        self._check_folder()
        try:
            data = self._read(path)
        except (OSError, ConfigError):
            raise PayloadError(f"{self.what} {name!r} ({expected_hash[:16]}...) is not in "
                               f"the cache {self.directory}; the node must rejoin the "
                               "run to receive it again") from None
        if content_hash(data) != expected_hash:
            raise PayloadError(f"{self.what} {name!r} in {path} was altered on disk; "
                               "delete it and rejoin the run")
        self.check(name, data)
        return data

    def has(self, name: str, expected_hash: str) -> bool:
        """Whether the file is stored intact: it exists and its bytes still hash to
        ``expected_hash``. An altered file is deleted (so that ``put`` stores it again)."""
        path = self._path(name, expected_hash)
        self._check_folder()
        try:
            data = self._read(path)
        except FileNotFoundError:
            return False
        except (OSError, ConfigError):  # a link, a folder, another user's file: not ours
            data = b""
        if content_hash(data) != expected_hash:
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        return True

    def _check_folder(self) -> None:
        """The cache folder, if there is one, is this user's and closed to others (one open to
        others is repaired first; a link or another user's folder is refused): see
        :func:`~cola_fed.wire.identity.ensure_private_dir`."""
        ensure_private_dir(self.directory, what=f"{self.what} cache", create=False)

    def _read(self, path: Path) -> bytes:
        """A cached file's bytes: only a regular file of this user's, never through a link."""
        return read_private_file(path, what=f"cached {self.what}", limit=_MAX_CACHED_BYTES)

    def _path(self, name: str, expected_hash: object) -> Path:
        """The file of a hash; anything but 64 lower-case hex digits (a path, say) is refused."""
        if not isinstance(expected_hash, str) or not _SHA256.fullmatch(expected_hash):
            raise PayloadError(f"{self.what} {name!r}: the listed hash {expected_hash!r} "
                               "is not a SHA-256 hex digest; refused")
        return self.directory / f"{expected_hash}{self.suffix}"


class GraphCache(ContentCache):
    """Verified train-step graphs, checked by :func:`~cola_fed.edge.graph_check.check_graph`
    (only the exporter's operators, no external data, no subgraphs)."""

    what, suffix, kind = "train-step graph", ".onnx", "graphs"

    def check(self, name: str, data: bytes) -> None:
        check_graph(data, name=name)


class TaskFileCache(ContentCache):
    """A task's node files (its ``tokenizer.json``), each checked to load as what it is."""

    what, suffix, kind = "task file", "", "files"

    def check(self, name: str, data: bytes) -> None:
        if name == "tokenizer.json":
            from tokenizers import Tokenizer

            try:
                Tokenizer.from_str(data.decode("utf-8"))
            except Exception as err:  # the library's errors are untyped
                raise PayloadError(f"task file {name!r} is not a tokenizer: {err}"[:300]
                                   ) from None
        else:
            raise PayloadError(f"task file {name!r} is not one a node knows how to check")

    def path(self, name: str, expected_hash: str) -> Path:
        """The stored, checked file of ``name`` (for libraries that read a path)."""
        self.get(name, expected_hash)
        return self._path(name, expected_hash)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a 0600 temporary file in the same
    directory, flushed and fsynced, then renamed over ``path``; removed if anything fails."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:  # mkstemp creates it 0600
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
