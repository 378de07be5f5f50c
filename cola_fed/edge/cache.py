"""A node's store of verified train-step graphs, addressed by content hash. Torch-free.

A node on the ONNX backend receives its graphs at hello, checks each one against the SHA-256 the
server lists for it and for what it contains (``graph_check``: only the exporter's operators, no
external data, no subgraphs), and keeps it here under its hash, so that later rounds (often a
fresh process per message) load exactly the bytes that were checked, and check them again on
load. Files are written whole or not at all (a temporary file, fsynced, then renamed), readable
by the node's user only.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from cola_fed.edge.graph_check import check_graph
from cola_fed.edge.graphs import content_hash
from cola_fed.errors import PayloadError


def default_cache_dir() -> Path:
    """``$COLA_FED_CACHE/graphs``, else ``$XDG_CACHE_HOME/cola-fed/graphs`` (``~/.cache``)."""
    if os.environ.get("COLA_FED_CACHE"):
        return Path(os.environ["COLA_FED_CACHE"]) / "graphs"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cola-fed" / "graphs"


_SHA256 = re.compile(r"[0-9a-f]{64}")


class GraphCache:
    """Verified graphs in ``directory``, one file ``<sha256>.onnx`` each."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()

    def put(self, name: str, model: bytes, expected_hash: str) -> None:
        """Store ``model`` if its hash is ``expected_hash`` and it passes ``check_graph``; else
        raise (``PayloadError``, ``GraphError``) and store nothing."""
        path = self._path(name, expected_hash)
        got = content_hash(model)
        if got != expected_hash:
            raise PayloadError(f"train-step graph {name!r}: sha256 {got[:16]}... does not match "
                               f"the listed {expected_hash[:16]}...; refused")
        check_graph(model, name=name)
        if self.has(name, expected_hash):
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(path, model)  # concurrent nodes on one machine share the cache

    def get(self, name: str, expected_hash: str) -> bytes:
        """The stored bytes of graph ``name``, checked again against ``expected_hash`` and by
        ``check_graph``: what reaches ONNX Runtime is what was checked."""
        path = self._path(name, expected_hash)
        try:
            model = path.read_bytes()
        except OSError:
            raise PayloadError(f"train-step graph {name!r} ({expected_hash[:16]}...) is not in "
                               f"the graph cache {self.directory}; the node must rejoin the "
                               "run to receive it again") from None
        if content_hash(model) != expected_hash:
            raise PayloadError(f"train-step graph {name!r} in {path} was altered on disk; "
                               "delete it and rejoin the run")
        check_graph(model, name=name)
        return model

    def has(self, name: str, expected_hash: str) -> bool:
        """Whether the graph is stored intact: its file exists and its bytes still hash to
        ``expected_hash``. An altered file is deleted (so that ``put`` stores it again)."""
        path = self._path(name, expected_hash)
        try:
            model = path.read_bytes()
        except OSError:
            return False
        if content_hash(model) != expected_hash:
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        return True

    def _path(self, name: str, expected_hash: object) -> Path:
        """The file of a hash; anything but 64 lower-case hex digits (a path, say) is refused."""
        if not isinstance(expected_hash, str) or not _SHA256.fullmatch(expected_hash):
            raise PayloadError(f"train-step graph {name!r}: the listed hash {expected_hash!r} "
                               "is not a SHA-256 hex digest; refused")
        return self.directory / f"{expected_hash}.onnx"


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
