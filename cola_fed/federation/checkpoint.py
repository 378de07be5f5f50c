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
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from cola_fed.errors import ConfigError, MalformedPayloadError
from cola_fed.federation.run_processes import (
    boot_id,
    command_line,
    process_alive,
    process_start,
)
from cola_fed.wire.identity import ensure_private_dir, read_private_file, write_private_file
from cola_fed.wire.strict_json import _check_depth, loads_strict

log = logging.getLogger("cola_fed")

FORMAT = "cola-fed checkpoint 1"
LATEST = "LATEST"
_ROUND_FILE = re.compile(r"round-(\d+)\.json")
_STATE_FILE = re.compile(r"partition-(\d+)-v(\d+)\.safetensors")
MAX_FILE_BYTES = 2**36
MAX_DEPTH = 64  # nesting of a round file (cola-fed writes under 10 levels)
LOCK_FILE = ".lock"
"""Who holds the checkpoint: ``{"pid", "start", "boot"}`` of the server process; empty when
nobody does."""
LOCK_FILE_BYTES = 512

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class LockHolder:
    """The server process that holds (or held) a checkpoint.

    Parameters
    ----------
    pid : int
        Its process id.
    start : int or None
        When it started, in clock ticks since boot (``/proc/PID/stat``): with ``pid``, it
        names one process, even once the pid is reused. None where unknown.
    boot : str
        The boot it ran in (``/proc/sys/kernel/random/boot_id``; empty where unknown).
    """

    pid: int
    start: int | None
    boot: str

    @classmethod
    def mine(cls) -> LockHolder:
        return cls(pid=os.getpid(), start=process_start(os.getpid()), boot=boot_id())

    def alive(self) -> bool:
        """Whether the process still runs (the same one: same boot, same start time)."""
        if self.boot and boot_id() and self.boot != boot_id():
            return False
        return process_alive(self.pid, self.start)

    def gone_because(self) -> str:
        if (self.boot and boot_id() and self.boot != boot_id()) or process_start(
                self.pid) is None:
            return "is no longer running"
        return "is no longer running (its pid now belongs to another process)"

    def describe(self) -> str:
        command = command_line(self.pid) if self.alive() else ""
        return f"process {self.pid}" + (f" ({command})" if command else "")

    def to_json(self) -> bytes:
        return json.dumps({"pid": self.pid, "start": self.start, "boot": self.boot}).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> LockHolder:
        """A lock record, strictly: exactly the three fields, each of its type."""
        try:
            record = loads_strict(data, what=f"checkpoint lock {path}",
                                  max_bytes=LOCK_FILE_BYTES, max_depth=2)
        except MalformedPayloadError as err:
            raise ConfigError(f"{err}") from None
        fields = {"pid": int, "start": (int, type(None)), "boot": str}
        if not isinstance(record, dict) or set(record) != set(fields) or not all(
                isinstance(record[k], kind) and not isinstance(record[k], bool)
                for k, kind in fields.items()):
            raise ConfigError(f"checkpoint lock {path} is damaged: expected "
                              '{"pid": int, "start": int or null, "boot": str}')
        if not 0 < record["pid"] < 2**31 or (record["start"] or 0) < 0 or len(
                record["boot"]) > 64:
            raise ConfigError(f"checkpoint lock {path} is damaged: values out of range")
        return cls(pid=record["pid"], start=record["start"], boot=record["boot"])


class Checkpoint:
    """The checkpoint folder of one run.

    Parameters
    ----------
    folder : str or Path
        Created (mode 0700) on first save.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.round_file: Path | None = None  # the one :meth:`load` read
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold the folder for this run: a second server writing the same checkpoint (a run
        left going by a killed ``cola-fed simulate``, or a resume started twice) is refused.

        The lock is the kernel's (``flock`` on the folder: it goes with the process that held
        it, however that one ended); :data:`LOCK_FILE` records who holds it (pid, start time,
        boot), to name the holder in the refusal, and to recognise a lock left by a process
        that is gone where the kernel's lock is not available (a lock record whose pid is not
        running, or now belongs to another process, is taken over with a warning)."""
        # this user's own folder, never a link planted to another (whose round and state
        # files the run would prune or move aside) nor one others may write
        ensure_private_dir(self.folder, what="checkpoint folder")
        fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                     | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            kernel_lock = True
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(self.refusal(self._record_or_none())) from None
        except OSError:  # a filesystem without flock: the record alone decides
            kernel_lock = False
        try:
            self._take_over(kernel_lock)
        except BaseException:
            os.close(fd)  # never a lock left held by a descriptor nobody closes
            raise
        self._lock = fd

    def _take_over(self, kernel_lock: bool) -> None:
        """With the kernel's lock held (or none to hold), check the record of the previous
        holder and write this process's."""
        try:
            before = self.holder_record()
        except ConfigError as err:
            log.warning("checkpoint %s: %s; taking the lock over", self.folder, err)
            before = None
        if before is not None and before.pid != os.getpid():
            if before.alive() and not kernel_lock:
                raise ConfigError(self.refusal(before))
            if not before.alive():
                log.warning("checkpoint %s: taking over the lock of server process %d, which %s "
                            "(a run that was killed; its last checkpoint is kept)", self.folder,
                            before.pid, before.gone_because())
        write_private_file(self.folder / LOCK_FILE, LockHolder.mine().to_json(),
                           what="checkpoint lock")

    def unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(ConfigError):  # no record of a holder left behind
                write_private_file(self.folder / LOCK_FILE, b"", what="checkpoint lock")
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def holder(self) -> LockHolder | None:
        """The live server that holds this checkpoint (None: nobody), without taking it: for
        ``cola-fed simulate`` to refuse a run before it starts Flower."""
        try:
            fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                         | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._record_or_none() or LockHolder(pid=0, start=None, boot="")
        except OSError:
            pass  # no flock here: the record alone
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
        record = self._record_or_none()
        return record if record is not None and record.alive() else None

    def _record_or_none(self) -> LockHolder | None:
        try:
            return self.holder_record()
        except ConfigError:  # a damaged record names nobody
            return None

    def holder_record(self) -> LockHolder | None:
        """Who :data:`LOCK_FILE` says holds the lock (None: no record). The file is read as
        anyone could have written it: bounded, strict JSON, exact fields."""
        try:
            data = read_private_file(self.folder / LOCK_FILE, what="checkpoint lock",
                                     limit=LOCK_FILE_BYTES)
        except FileNotFoundError:
            return None
        if not data.strip():  # nobody holds it (or an older cola-fed held it)
            return None
        return LockHolder.from_json(data, self.folder / LOCK_FILE)

    def refusal(self, holder: LockHolder | None) -> str:
        """Why this checkpoint cannot be taken: who holds it, and what to do."""
        known = holder is not None and holder.pid > 0
        who = holder.describe() if known else "another process"
        stop = f"stop it (kill {holder.pid})" if known else "stop it"
        return (f"another server is writing {self.folder}: {who}. It is a run still going "
                "(perhaps one that a killed `cola-fed simulate` of an older cola-fed left "
                f"behind): wait for it to end or {stop}, then run again; docs/operations.md "
                "says more")

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
        self.round_file = self.folder / name
        try:  # depth first: json.loads recurses once per level (RecursionError)
            text = _read(self.folder / name, MAX_FILE_BYTES).decode("utf-8")
            _check_depth(text, f"checkpoint {self.folder / name}", MAX_DEPTH)
            state = json.loads(text)
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

    def state_file(self, state: Mapping[str, Any], partition: int) -> Path:
        """The state file the loaded round file names for ``partition``."""
        return self.folder / state["files"][str(partition)]

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


# --------------------------------------------------------------------------------------------
# what a round file holds, checked before anything is taken from it

#: a session record's fields: type, and for integers the least value
_RECORD_FIELDS: dict[str, tuple[type, int]] = {
    "identity": (str, 0), "acknowledged": (int, 0), "drawn": (int, 0), "num-examples": (int, 0),
    "backend": (str, 0), "rounds-trained": (int, 0), "failures": (int, 0), "missed": (int, 0),
    "quarantined": (bool, 0), "last-error": (str, 0), "history": (list, 0), "version": (int, 0)}
_MT_WORDS = 624  # Mersenne Twister state words (random.getstate: 624 words and a position)


def session_record(record: object, partition: int) -> dict[str, Any]:
    """A partition's record from a round file, every field of its type: no ``int()`` or
    ``bool()`` of whatever is there (``bool("false")`` is true)."""
    if not isinstance(record, dict) or set(record) != set(_RECORD_FIELDS):
        raise ValueError(f"partition {partition}'s record does not have the fields "
                         f"{sorted(_RECORD_FIELDS)}")
    for key, (kind, least) in _RECORD_FIELDS.items():
        value = record[key]
        if not isinstance(value, kind) or (kind is int and (
                isinstance(value, bool) or value < least)):
            raise ValueError(f"partition {partition}'s {key!r} is {value!r:.60}, expected "
                             f"{'an integer >= 0' if kind is int else f'a {kind.__name__}'}")
    if not re.fullmatch(r"[0-9a-f]{64}", record["identity"]):
        raise ValueError(f"partition {partition}'s identity is not 32 bytes of hex")
    if not all(isinstance(entry, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) for k, v in entry.items())
            for entry in record["history"]):
        raise ValueError(f"partition {partition}'s history is not a list of metric records")
    return record


def rng_state(value: object) -> tuple[int, tuple[int, ...], float | None]:
    """The sampling RNG's state from a round file (``[version, words, gauss]`` of
    :meth:`random.Random.getstate`), checked so that ``setstate`` cannot fail."""
    if not (isinstance(value, list) and len(value) == 3):
        raise ValueError("the sampling RNG state is not [version, state, gauss]")
    version, words, gauss = value
    if version != 3 or isinstance(version, bool):
        raise ValueError(f"the sampling RNG state has version {version!r:.20}, expected 3")
    if not (isinstance(words, list) and len(words) == _MT_WORDS + 1 and all(
            isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2**32 for w in words)
            and 0 <= words[-1] <= _MT_WORDS):
        raise ValueError(f"the sampling RNG state is not {_MT_WORDS} 32-bit words and a "
                         f"position in [0, {_MT_WORDS}]")
    if gauss is not None and not (isinstance(gauss, float) and math.isfinite(gauss)):
        raise ValueError(f"the sampling RNG state's gauss is {gauss!r:.20}, expected null or "
                         "a finite number")
    return version, tuple(words), gauss


def _read(path: Path, limit: int) -> bytes:
    return read_private_file(path, what="checkpoint", limit=limit)


def _contiguous(tensors: Tensors) -> Tensors:
    return {name: np.ascontiguousarray(value) for name, value in tensors.items()}
