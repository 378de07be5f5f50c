"""A Flower grid without a SuperLink: it delivers messages to the real client handlers, in this
process or in child processes (``NodeProcess``, optionally without torch).

Everything but the transport is real: the strategy, the client session, the sealing, the codec,
Flower's Message/Context/record types. For tests (nodes can be told to fail or to tamper with
replies), benchmarks (a node's peak memory in a process of its own) and debugging a strategy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from types import SimpleNamespace

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common import serde
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from cola_fed.federation.client import handle_hello, handle_train


class NodeProcess:
    """One node's handlers in a child process (``cola_fed.federation.node_process``).

    Parameters
    ----------
    without_torch : bool
        Hide PyTorch from the child, as on a device where it is not installed.
    env : dict, optional
        The child's environment (default: this process's).
    """

    def __init__(self, *, without_torch: bool = True, env: dict[str, str] | None = None) -> None:
        args = [sys.executable, "-m", "cola_fed.federation.node_process"]
        self.process = subprocess.Popen(args + (["--without-torch"] if without_torch else []),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.stats: list[dict] = []  # per message: seconds, peak_rss_mb, torch_imported

    def handle(self, msg: Message, context: Context) -> tuple[Message, Context]:
        for proto in (serde.message_to_proto(msg), serde.context_to_proto(context)):
            data = proto.SerializeToString()
            self.process.stdin.write(len(data).to_bytes(4, "big") + data)
        self.process.stdin.flush()
        reply = serde.message_from_proto(ProtoMessage.FromString(self._read()))
        context = serde.context_from_proto(ProtoContext.FromString(self._read()))
        self.stats.append(json.loads(self._read()))
        return reply, context

    def _read(self) -> bytes:
        head = self.process.stdout.read(4)
        if len(head) < 4:
            raise RuntimeError(f"node process exited with {self.process.wait()}")
        return self.process.stdout.read(int.from_bytes(head, "big"))

    def close(self) -> None:
        """End the child (it exits when its input closes) and wait for it."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class LocalGrid(Grid):
    """A grid of ``num_nodes`` nodes (ids 1000, 1001, ...; partition ``i`` of ``num_nodes``).

    Parameters
    ----------
    num_nodes : int
        How many nodes; each has a Flower ``Context`` in ``contexts`` (edit its node config
        before the run to give it a backend, a data path, a pinned key...).
    run_id : int
        The run id every context and message carries.
    reply_filter : callable, optional
        ``(node id, reply) -> reply or None``: tamper with or drop replies (a hostile node or
        relay on the way back).
    message_filter : callable, optional
        ``(node id, message) -> message or None``: tamper with or drop what the server sends
        (a hostile relay on the way out).
    handlers : dict, optional
        Node id -> ``(message, context) -> reply`` replacing the real handlers of that node
        (a node that runs modified code).
    processes : dict, optional
        Node id -> :class:`NodeProcess` for nodes that run in a child process.
    delays : dict, optional
        Node id -> seconds before that node's replies can be pulled (a straggler).
    keep_delivered : bool
        Keep every message sent in ``delivered`` (for tests; off for long runs).
    client_app : callable, optional
        A Flower ``ClientApp`` (or any ``(message, context) -> reply``) that every node runs
        instead of cola-fed's handlers, e.g. a baseline's ClientApp driven by a Flower
        strategy (``handlers`` and ``processes`` still take precedence for their nodes).
    """

    def __init__(self, num_nodes: int, *, run_id: int = 4242,
                 reply_filter: Callable[[int, Message], Message | None] | None = None,
                 message_filter: Callable[[int, Message], Message | None] | None = None,
                 handlers: dict[int, Callable[[Message, Context], Message]] | None = None,
                 processes: dict[int, NodeProcess] | None = None,
                 delays: dict[int, float] | None = None, keep_delivered: bool = True,
                 client_app: Callable[[Message, Context], Message] | None = None) -> None:
        self.run_id = run_id
        # what a real ServerApp process has set before it creates messages
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
        self.contexts = {
            1000 + i: Context(run_id, 1000 + i, {"partition-id": i, "num-partitions": num_nodes},
                              RecordDict(), {})
            for i in range(num_nodes)
        }
        self.reply_filter, self.message_filter = reply_filter, message_filter
        self.handlers = handlers or {}
        self.client_app = client_app
        self.processes = processes or {}  # node id -> the child process that runs it
        self.delays = delays or {}
        self.keep_delivered = keep_delivered
        self.delivered: list[Message] = []
        self._replies: dict[str, tuple[float, Message]] = {}  # message id -> (ready at, reply)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def connect(self, node_id: int, partition_id: int, num_partitions: int,
                **node_config) -> Context:
        """A node that connects now (a late joiner, or a node restarted under a new id)."""
        config = {"partition-id": partition_id, "num-partitions": num_partitions, **node_config}
        self.contexts[node_id] = Context(self.run_id, node_id, config, RecordDict(), {})
        return self.contexts[node_id]

    def disconnect(self, node_id: int) -> Context:
        """A node that goes away (its process and ``context.state`` with it)."""
        return self.contexts.pop(node_id)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now; its reply waits to be pulled."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the SuperLink does
            ids.append(msg.metadata.message_id)
            reply = self._deliver(msg)
            if reply is not None:
                ready = time.monotonic() + self.delays.get(msg.metadata.dst_node_id, 0.0)
                self._replies[msg.metadata.message_id] = (ready, reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        now, replies = time.monotonic(), []
        for message_id in message_ids:
            entry = self._replies.get(message_id)
            if entry is not None and entry[0] <= now:
                replies.append(self._replies.pop(message_id)[1])
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            reply = self._deliver(msg)
            if reply is not None:
                replies.append(reply)
        return replies

    def _deliver(self, msg: Message) -> Message | None:
        """The node's reply to ``msg`` (through the filters), or None when there is none."""
        if self.keep_delivered:
            self.delivered.append(msg)
        node_id = msg.metadata.dst_node_id
        if self.message_filter is not None:
            msg = self.message_filter(node_id, msg)
            if msg is None:
                return None
        if node_id not in self.contexts:
            return None  # gone
        context = self.contexts[node_id]
        handler = self.handlers.get(node_id) or self.client_app or (
            handle_hello if msg.metadata.message_type == MessageType.QUERY else handle_train)
        node = self.processes.get(node_id)
        if node is not None:
            reply, self.contexts[node_id] = node.handle(msg, context)
        else:
            try:
                reply = handler(msg, context)
            except Exception as err:
                reply = Message(Error(code=1, reason=repr(err)), reply_to=msg)
        if self.reply_filter is not None:
            reply = self.reply_filter(node_id, reply)
        return reply

    # The rest of the Grid contract is not used by ColaStrategy.
    def set_run(self, run):  # pragma: no cover
        raise NotImplementedError

    @property
    def run(self) -> SimpleNamespace:
        return SimpleNamespace(run_id=self.run_id)

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_nodes(self):  # pragma: no cover
        raise NotImplementedError
