"""A node's store of verified train-step graphs, addressed by content hash. Torch-free.

A node on the ONNX backend receives its graphs at hello, checks each one against the SHA-256 the
server lists for it, and keeps it here under its hash, so that later rounds (often a fresh
process per message) load exactly the bytes that were checked, and check them again on load.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

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
        """Store ``model`` if its hash is ``expected_hash``; else raise and store nothing."""
        path = self._path(name, expected_hash)
        got = content_hash(model)
        if got != expected_hash:
            raise PayloadError(f"train-step graph {name!r}: sha256 {got[:16]}... does not match "
                               f"the listed {expected_hash[:16]}...; refused")
        if path.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.directory, delete=False) as tmp:
            tmp.write(model)
        os.replace(tmp.name, path)  # atomic: concurrent nodes on one machine share the cache

    def get(self, name: str, expected_hash: str) -> bytes:
        """The stored bytes of graph ``name``, checked again against ``expected_hash``."""
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
        return model

    def has(self, name: str, expected_hash: str) -> bool:
        return self._path(name, expected_hash).exists()

    def _path(self, name: str, expected_hash: object) -> Path:
        """The file of a hash; anything but 64 lower-case hex digits (a path, say) is refused."""
        if not isinstance(expected_hash, str) or not _SHA256.fullmatch(expected_hash):
            raise PayloadError(f"train-step graph {name!r}: the listed hash {expected_hash!r} "
                               "is not a SHA-256 hex digest; refused")
        return self.directory / f"{expected_hash}.onnx"
