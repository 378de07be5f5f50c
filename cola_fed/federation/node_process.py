"""Run a node's message handlers in this process, fed over stdin/stdout; optionally without torch.

``python -m cola_fed.federation.node_process [--without-torch]`` reads framed requests (4-byte
big-endian length, then Flower's protobuf ``Message``; the same for its ``Context``), runs the
real client handler, and writes back the reply, the updated context and a JSON frame of process
stats (peak RSS, handler seconds). It is Flower's own serialisation, nothing pickled: the same
split a SuperNode makes between itself and its ClientApp process. ``--without-torch`` hides
PyTorch exactly as where it is not installed, to prove and measure the ONNX backend on a machine
that has torch. Used by :class:`cola_fed.federation.local_grid.NodeProcess`.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import BinaryIO


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


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec, unlike
    ``ru_maxrss``, which keeps the peak of the parent it was forked from."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    return stream.read(int.from_bytes(head, "big"))


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(len(data).to_bytes(4, "big") + data)


def serve(stdin: BinaryIO, stdout: BinaryIO, *, without_torch: bool) -> None:
    from flwr.app import Error, Message, MessageType
    from flwr.common import serde
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    from cola_fed.federation.client import handle_hello, handle_train

    while (raw := read_frame(stdin)) is not None:
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
        stats = {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(),
                 "torch_imported": "torch" in sys.modules}
        if without_torch and stats["torch_imported"]:
            reply = Message(Error(code=1, reason="the node imported torch"), reply_to=msg)
        write_frame(stdout, serde.message_to_proto(reply).SerializeToString())
        write_frame(stdout, serde.context_to_proto(context).SerializeToString())
        write_frame(stdout, json.dumps(stats).encode())
        stdout.flush()


def main() -> None:
    without_torch = "--without-torch" in sys.argv[1:]
    if without_torch:
        sys.meta_path[:] = [WithoutTorch(f) for f in sys.meta_path]
    serve(sys.stdin.buffer, sys.stdout.buffer, without_torch=without_torch)


if __name__ == "__main__":
    main()
