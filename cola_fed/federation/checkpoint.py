"""Server checkpoints: what a server killed at any moment needs to go on where it stopped.

A checkpoint folder holds one safetensors file per node state (its adapters, pending batches,
held-out batches and, in ``upload`` mode, its training split), written once per version of
that state, and one JSON file per checkpointed round (the round records, the sampling RNG, the
counters, and which state file each partition is at). ``LATEST`` names the newest complete
round file; it is replaced last, so a crash while writing leaves the previous checkpoint
whole. Every file is written atomically (temporary file, fsync, rename) with mode 0600: it
holds the nodes' data.

No key material is stored: the run's exchange key is derived again from the server identity
(which the checkpoint names by fingerprint), and every node answers a new hello when the run
resumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from cola_fed.errors import ConfigError
from cola_fed.wire.identity import read_private_file, write_private_file

log = logging.getLogger("cola_fed")

FORMAT = "cola-fed checkpoint 1"
LATEST = "LATEST"
_ROUND_FILE = re.compile(r"round-(\d+)\.json")
_STATE_FILE = re.compile(r"partition-(\d+)-v(\d+)\.safetensors")
MAX_FILE_BYTES = 2**36

Tensors = dict[str, np.ndarray]


class Checkpoint:
    """The checkpoint folder of one run.

    Parameters
    ----------
    folder : str or Path
        Created (mode 0700) on first save.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold the folder for this run: a second server writing the same checkpoint (a run
        left going by a killed ``cola-fed simulate``, or a resume started twice) is refused."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another server is writing {self.folder} (a run still going, "
                              "perhaps one a killed `cola-fed simulate` left behind; "
                              "docs/operations.md says how to find and stop it)") from None
        self._lock = fd

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def save(self, round_: int, state: dict[str, Any],
             members: Mapping[int, tuple[int, Callable[[], Tensors]]]) -> Path:
        """Write round ``round_``: ``state`` (JSON-ready) and, per partition, ``(version,
        tensors)`` where ``tensors()`` is called only when that version is not on disk yet."""
        files = {}
        for partition, (version, tensors) in members.items():
            name = f"partition-{partition}-v{version}.safetensors"
            if not (self.folder / name).is_file():
                write_private_file(self.folder / name, save_tensors(_contiguous(tensors())),
                                   what="checkpoint state")
            files[str(partition)] = name
        payload = {"format": FORMAT, "round": round_, "files": files, **state}
        name = f"round-{round_}.json"
        write_private_file(self.folder / name, json.dumps(payload).encode(),
                           what="checkpoint")
        write_private_file(self.folder / LATEST, name.encode(), what="checkpoint pointer")
        self._prune(keep={name, *files.values()})
        return self.folder / name

    def load(self) -> tuple[dict[str, Any], Callable[[int], Tensors]]:
        """The newest checkpoint's state and a reader of each partition's tensors. Files it
        does not name (a write that a crash cut short) are removed: the resumed run writes
        those versions anew."""
        try:
            name = _read(self.folder / LATEST, 64).decode("ascii", "replace").strip()
        except FileNotFoundError:
            raise ConfigError(f"no checkpoint in {self.folder}: nothing to resume (run without "
                              "--resume / checkpoint.resume to start afresh)") from None
        if not _ROUND_FILE.fullmatch(name):
            raise ConfigError(f"checkpoint pointer {self.folder / LATEST} is damaged")
        try:
            state = json.loads(_read(self.folder / name, MAX_FILE_BYTES))
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"checkpoint {self.folder / name} is missing or damaged: "
                              f"{err}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ConfigError(f"{self.folder / name} is not a {FORMAT!r} file")
        files = state.get("files")
        if not isinstance(files, dict) or not all(
                isinstance(f, str) and _STATE_FILE.fullmatch(f) for f in files.values()):
            raise ConfigError(f"checkpoint {self.folder / name} lists damaged state files")

        self._prune(keep={name, *files.values()})

        def tensors(partition: int) -> Tensors:
            path = self.folder / files[str(partition)]
            return load_tensors(_read(path, MAX_FILE_BYTES))

        return state, tensors

    def exists(self) -> bool:
        return (self.folder / LATEST).is_file()

    def set_aside(self) -> Path | None:
        """Move an earlier run's checkpoint to ``<folder>.previous`` (replacing an older one
        there): a fresh run does not resume it, and a forgotten ``--resume`` loses nothing."""
        if not self.exists():
            return None
        aside = self.folder.with_name(f"{self.folder.name}.previous")
        shutil.rmtree(aside, ignore_errors=True)
        os.makedirs(aside, mode=0o700)
        for path in self.folder.iterdir():
            if _ROUND_FILE.fullmatch(path.name) or _STATE_FILE.fullmatch(path.name) or (
                    path.name == LATEST):
                os.replace(path, aside / path.name)
        return aside

    def _prune(self, keep: set[str]) -> None:
        for path in self.folder.iterdir():
            ours = _ROUND_FILE.fullmatch(path.name) or _STATE_FILE.fullmatch(path.name)
            if ours and path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


# --------------------------------------------------------------------------------------------
# one node's tensors, flat


def flatten_state(adapters: Mapping[str, Mapping[str, np.ndarray]],
                  batches: Mapping[str, list[Mapping[str, np.ndarray]]],
                  train: Mapping[str, np.ndarray] | None) -> Tensors:
    """``adapters/<layer>/<param>``, ``<kind>/<i>/<key>`` for each list of batches and
    ``train/<key>``, as one flat dict of arrays."""
    flat = {f"adapters/{layer}/{name}": value
            for layer, params in adapters.items() for name, value in params.items()}
    for kind, items in batches.items():
        flat.update({f"{kind}/{i}/{key}": value
                     for i, batch in enumerate(items) for key, value in batch.items()})
    flat.update({f"train/{key}": value for key, value in (train or {}).items()})
    return flat


def unflatten_state(flat: Tensors, kinds: tuple[str, ...]
                    ) -> tuple[dict, dict[str, list[dict]], dict | None]:
    """The inverse of :func:`flatten_state`: (adapters, {kind: batches}, train or None)."""
    adapters: dict[str, dict[str, np.ndarray]] = {}
    batches: dict[str, dict[int, dict[str, np.ndarray]]] = {kind: {} for kind in kinds}
    train: dict[str, np.ndarray] = {}
    for name, value in flat.items():
        head, _, rest = name.partition("/")
        if head == "adapters":
            layer, _, param = rest.rpartition("/")
            adapters.setdefault(layer, {})[param] = value
        elif head == "train":
            train[rest] = value
        elif head in batches:
            index, _, key = rest.partition("/")
            batches[head].setdefault(int(index), {})[key] = value
        else:
            raise ConfigError(f"a checkpoint state holds an unknown tensor {name!r}")
    ordered = {kind: [items[i] for i in sorted(items)] for kind, items in batches.items()}
    return adapters, ordered, train or None


def _read(path: Path, limit: int) -> bytes:
    return read_private_file(path, what="checkpoint", limit=limit)


def _contiguous(tensors: Tensors) -> Tensors:
    return {name: np.ascontiguousarray(value) for name, value in tensors.items()}
