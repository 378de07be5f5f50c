"""A ColA node in a process where ``import torch`` fails, as on an edge device without PyTorch.

Reads framed requests on stdin (4-byte big-endian length, then Flower's protobuf ``Message``, and
the same for its ``Context``), runs the real client handler, and writes the reply and the updated
context back the same way: Flower's own serialisation, nothing pickled.
"""

import sys


class WithoutTorch:
    """Wraps an import finder so that torch is not found, exactly as where it is not installed
    (``import torch`` raises ModuleNotFoundError; ``importlib.util.find_spec`` returns None)."""

    def __init__(self, finder) -> None:
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [WithoutTorch(f) for f in sys.meta_path]

from flwr.app import Error, Message, MessageType  # noqa: E402
from flwr.common import serde  # noqa: E402
from flwr.proto.message_pb2 import Context as ProtoContext  # noqa: E402
from flwr.proto.message_pb2 import Message as ProtoMessage  # noqa: E402

from cola_fed.federation.client import handle_hello, handle_train  # noqa: E402


def read_frame(stream) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    return stream.read(int.from_bytes(head, "big"))


def write_frame(stream, data: bytes) -> None:
    stream.write(len(data).to_bytes(4, "big") + data)
    stream.flush()


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (raw := read_frame(stdin)) is not None:
        msg = serde.message_from_proto(ProtoMessage.FromString(raw))
        context = serde.context_from_proto(ProtoContext.FromString(read_frame(stdin)))
        handler = handle_hello if msg.metadata.message_type == MessageType.QUERY else handle_train
        try:
            reply = handler(msg, context)
        except Exception as err:  # reported to the server as Flower reports a ClientApp error
            reply = Message(Error(code=1, reason=repr(err)), reply_to=msg)
        assert "torch" not in sys.modules, "the node imported torch"
        write_frame(stdout, serde.message_to_proto(reply).SerializeToString())
        write_frame(stdout, serde.context_to_proto(context).SerializeToString())


if __name__ == "__main__":
    main()
