"""Exchange: sending TRAIN messages as they are made and taking replies as they come, with at
most ``strategy.max-inflight-mb`` unanswered and a deadline per message."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

from cola_fed.federation.failures import NOT_SENT, TIMEOUT
from cola_fed.federation.protocol import SEALED


@dataclass
class _Unanswered:
    """A message sent this round that has no reply yet."""

    node: int
    size: int  # the payload's bytes
    expires: float  # when the node's ``timeout`` ends (monotonic clock)


class Exchange:
    """Push and pull over the grid; ``_sent_to`` maps the round's message ids to their
    nodes (a reply the SuperLink makes for a node carries the SuperLink's id). A part of
    ``ColaStrategy``: it reads ``config``, takes newcomers' hello replies meanwhile
    (``Membership._pull_hellos``) and notes the nodes not reached or not answering in time
    (``Failures._failed``)."""

    def _init_exchange(self) -> None:
        self._sent_to: dict[str, int] = {}

    def _exchange(self, grid: Grid, messages: Iterator[Message], timeout: float
                  ) -> Iterator[Message]:
        """Send each message as it comes and yield replies as they arrive, with at most
        ``strategy.max-inflight-mb`` of payloads unanswered; each node has ``timeout`` seconds
        from its message to answer."""
        cap = self.config.strategy.max_inflight_mb * 1e6
        inflight: dict[str, _Unanswered] = {}  # by message id
        self._sent_to = {}
        for message in messages:
            size = message.content.array_records[SEALED].count_bytes()
            while inflight and sum(m.size for m in inflight.values()) + size > cap:
                yield from self._pull(grid, inflight, wait=True, timeout=timeout)
            node = message.metadata.dst_node_id
            [message_id] = grid.push_messages([message])
            del message
            if not message_id:
                self._failed(node, NOT_SENT, "the SuperLink took no message for it")
                continue
            inflight[message_id] = _Unanswered(node, size, time.monotonic() + timeout)
            self._sent_to[message_id] = node
            yield from self._pull(grid, inflight, wait=False, timeout=timeout)
        while inflight:
            yield from self._pull(grid, inflight, wait=True, timeout=timeout)

    def _pull(self, grid: Grid, inflight: dict[str, _Unanswered], *, wait: bool,
              timeout: float) -> Iterator[Message]:
        """The replies to ``inflight`` messages that have arrived (removing them); with
        ``wait``, poll until one arrives or the earliest deadline passes, when the late are
        given up (and noted as timed out). Meanwhile newcomers' hello replies are taken and nodes
        that connected since get their hellos."""
        delay = 0.02
        while True:
            replies = list(grid.pull_messages(list(inflight))) if inflight else []
            for reply in replies:
                if inflight.pop(reply.metadata.reply_to_message_id, None) is not None:
                    yield reply
            self._pull_hellos(grid)
            self._invite_now_and_then(grid)
            now = time.monotonic()
            late = [m for m, sent in inflight.items() if sent.expires <= now]
            for message_id in late:
                self._failed(inflight.pop(message_id).node, TIMEOUT,
                             f"no reply within {timeout:g} s (strategy.timeout)")
            if replies or late or not wait or not inflight:
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _timed(self, replies: Iterable[Message]) -> Iterator[Message]:
        """``replies``, adding to the round's server time what the caller spends on each one
        (the time spent waiting for the next is the nodes', not the server's)."""
        for reply in replies:
            busy = time.perf_counter()
            yield reply
            self._server_seconds += time.perf_counter() - busy

