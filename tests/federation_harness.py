"""A fake Flower grid that delivers messages to the real client handlers in this process.

Everything but the transport is real: the strategy, the client session, the sealing, the codec,
Flower's Message/Context/record types. Nodes can be told to fail or to tamper with replies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from cola_fed.federation.client import handle_hello, handle_train


class LocalGrid(Grid):
    def __init__(self, num_nodes: int, *, run_id: int = 4242,
                 reply_filter: Callable[[int, Message], Message | None] | None = None) -> None:
        self.run_id = run_id
        # what a real ServerApp process has set before it creates messages
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
        self.contexts = {
            1000 + i: Context(run_id, 1000 + i, {"partition-id": i, "num-partitions": num_nodes},
                              RecordDict(), {})
            for i in range(num_nodes)
        }
        self.reply_filter = reply_filter
        self.delivered: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the SuperLink does
            self.delivered.append(msg)
            context = self.contexts[msg.metadata.dst_node_id]
            handler = handle_hello if msg.metadata.message_type == MessageType.QUERY else (
                handle_train)
            try:
                reply = handler(msg, context)
            except Exception as err:
                reply = Message(Error(code=1, reason=repr(err)), reply_to=msg)
            if self.reply_filter is not None:
                reply = self.reply_filter(msg.metadata.dst_node_id, reply)
            if reply is not None:
                replies.append(reply)
        return replies

    # The rest of the Grid contract is not used by ColaStrategy.
    def set_run(self, run):  # pragma: no cover
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_nodes(self):  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError
