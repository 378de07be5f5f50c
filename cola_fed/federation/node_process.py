"""Run a node's message handlers in this process, fed over stdin/stdout; optionally without torch.

``python -m cola_fed.federation.node_process [--without-torch]`` reads framed requests (4-byte
big-endian length, then Flower's protobuf ``Message``; the same for its ``Context``), runs the
real client handler, and writes back the reply, the updated context and a JSON frame of process
stats (message size, peak RSS, the RSS it holds between messages, handler seconds). It is
Flower's own serialisation, nothing pickled: the same split a SuperNode makes between itself
and its ClientApp process. ``--without-torch`` hides PyTorch exactly as where it is not
installed, to prove and measure the ONNX backend on a machine that has torch. Used by
:class:`cola_fed.federation.local_grid.NodeProcess`.

A Flower ClientApp process handles one message and exits; this one serves message after message,
so between two it drops everything of the last one and hands freed memory back
(:func:`release_memory`), and it keeps glibc from moving message-sized buffers into its heap
(:func:`fix_mmap_threshold`): a message's peak then counts what a node keeps (its imports, ONNX
Runtime, its tokenised data, its session) and that message, not the leftovers of the one before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import resource
import sys
import time
from typing import BinaryIO


def _libc() -> ctypes.CDLL | None:
    """glibc, for ``malloc_trim`` and ``mallopt``; None elsewhere (musl, macOS), where there is
    nothing to do."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class WithoutTorch:
    """Wraps an import finder so that torch is not found, as where it is not installed:
    ``import torch`` raises ModuleNotFoundError and ``importlib.util.find_spec`` returns None."""

    def __init__(self, finder) -> None:
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


def _status_mb(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` in MB, None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec, unlike
    ``ru_maxrss``, which keeps the peak of the parent it was forked from."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now (VmRSS; 0.0 where there is no /proc)."""
    return _status_mb("VmRSS") or 0.0


def release_memory() -> None:
    """Hand freed memory back to the system between messages: collect reference cycles, then
    ask glibc to return the free pages of its heaps (``malloc_trim``), which it otherwise keeps
    for reuse, so that the next message's peak starts from what the node really holds."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    return stream.read(int.from_bytes(head, "big"))


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(len(data).to_bytes(4, "big"))
    stream.write(data)  # not ``head + data``: that would copy the frame once more


def serve(stdin: BinaryIO, stdout: BinaryIO, *, without_torch: bool) -> None:
    from flwr.app import Error, Message, MessageType
    from flwr.common import serde
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    from cola_fed.federation.client import handle_hello, handle_train

    while (raw := read_frame(stdin)) is not None:
        size = len(raw)
        # hold one form of the message at a time (wire bytes, protobuf, Flower message), as a
        # ClientApp process does
        proto = ProtoMessage.FromString(raw)
        del raw
        msg = serde.message_from_proto(proto)
        del proto
        context = serde.context_from_proto(ProtoContext.FromString(read_frame(stdin) or b""))
        handler = handle_hello if msg.metadata.message_type == MessageType.QUERY else handle_train
        started = time.perf_counter()
        try:
            reply = handler(msg, context)
        except Exception as err:  # reported to the server as Flower reports a ClientApp error
            reply = Message(Error(code=1, reason=repr(err)), reply_to=msg)
        seconds = time.perf_counter() - started
        torch_imported = "torch" in sys.modules
        if without_torch and torch_imported:
            reply = Message(Error(code=1, reason="the node imported torch"), reply_to=msg)
        write_frame(stdout, serde.message_to_proto(reply).SerializeToString())
        write_frame(stdout, serde.context_to_proto(context).SerializeToString())
        stdout.flush()
        # A ClientApp process ends after its message; this one goes on, so it drops all of the
        # message before the next one arrives, and what it then holds is what a node keeps.
        del msg, reply, context
        release_memory()
        stats = {"seconds": seconds, "message_bytes": size, "peak_rss_mb": peak_rss_mb(),
                 "held_rss_mb": rss_mb(), "torch_imported": torch_imported}
        write_frame(stdout, json.dumps(stats).encode())
        stdout.flush()


#: glibc's ``mallopt`` parameter for the size from which ``malloc`` maps memory of its own
M_MMAP_THRESHOLD = -3
#: the size from which this process's allocations are mapped: glibc's default, held fixed
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at its default instead of letting it grow.

    glibc raises the threshold to the size of each mapped block it frees (up to 32 MB), so
    after the first message every message-sized buffer (the wire bytes, Flower's copies, the
    decrypted payload) comes from the heap instead, where freeing it does not give it back
    and, depending on what else lies in the heap, a round can peak a whole message higher.
    A fixed threshold (what setting ``MALLOC_MMAP_THRESHOLD_`` does) keeps every large buffer
    mapped and unmapped as it is freed."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def main() -> None:
    fix_mmap_threshold()
    without_torch = "--without-torch" in sys.argv[1:]
    if without_torch:
        sys.meta_path[:] = [WithoutTorch(f) for f in sys.meta_path]
    serve(sys.stdin.buffer, sys.stdout.buffer, without_torch=without_torch)


if __name__ == "__main__":
    main()
