"""Replies: opening and checking a node's TRAIN reply, and applying the accepted ones when the
round's replies are in."""

from __future__ import annotations

import dataclasses
import logging
import time

from flwr.app import Message

from cola_fed.errors import ProtocolError
from cola_fed.federation.failures import ERROR_REPLY, LATE, UNAVAILABLE, UNREADABLE, node_error
from cola_fed.federation.protocol import (
    KIND_TRAIN,
    PART_ADAPTERS,
    Sealed,
    TrainReport,
    batch_part,
    expect_parts,
    open_sealed,
    read_bundle,
)
from cola_fed.federation.sessions import NodeSession

log = logging.getLogger("cola_fed")


class LateReply(ProtocolError):
    """An authentic reply to an earlier round: a relay held it back. Dropped; the node is
    not blamed for it."""


class Replies:
    """A part of ``ColaStrategy``: reads its ``plan``, ``members``, ``_sampled`` and
    ``_sent_to`` (``Exchange``), its checks (``Checks``) and notes failures (``Failures``)."""

    def _take_reply(self, server_round: int, reply: Message, sessions: dict[int, NodeSession]
                    ) -> tuple[int | None, TrainReport | None, int]:
        """One TRAIN reply, opened and checked, its adapters and batches kept in the
        session's ``incoming`` until the round's replies are in: (the node whose reply
        opened, its accepted report, the reply's sealed size). A reply that does not open,
        or is refused, changes nothing the server holds."""
        node = reply.metadata.src_node_id
        to = self._sent_to.get(reply.metadata.reply_to_message_id)
        if to is not None and to != node and reply.has_error():  # the SuperLink's, for it
            self._failed(to, UNAVAILABLE, "the SuperLink answered for it: "
                         + node_error(reply.error.reason))
        session = sessions.get(node)
        if session is None or session.quarantined or node not in self._sampled:
            return None, None, 0
        if reply.has_error():
            self._failed(node, ERROR_REPLY, node_error(reply.error.reason))
            return None, None, 0
        before = dataclasses.replace(session.channel.state)
        try:  # a reply that does not open may not be the node's (a replay, a forgery)
            sealed = Sealed.from_record(reply.content).sealed
            plaintext = open_sealed(session.channel, sealed, KIND_TRAIN,
                                    limits=self._reply_limits(session, upload=False))
        except Exception as err:
            session.channel.state = before
            log.warning("round %d: %s: a reply that does not open was refused (not "
                        "counted against the node): %s: %s", server_round, session.node,
                        type(err).__name__, err)
            self._failed(node, UNREADABLE, f"{type(err).__name__}: {err}", logged=True)
            return None, None, 0
        try:  # the isolation boundary: whatever a node sent, it fails alone
            session.incoming = self._read_train_reply(session, plaintext, server_round)
        except LateReply as err:  # authentic, but held back (a relay can): not the node's
            session.channel.state = before
            log.warning("round %d: %s: %s; dropped, not counted against the node",
                        server_round, session.node, err)
            self._failed(node, LATE, str(err), logged=True)
            return node, None, 0
        except Exception as err:
            # not applied, so not acknowledged: the node resumes from the state we hold
            session.channel.state = before
            self._fault(node, server_round, err, "reply refused")
            return node, None, 0
        return node, session.incoming[0], len(sealed)

    def _apply_replies(self) -> None:
        """Apply every accepted reply of the round (the server's own time)."""
        busy = time.perf_counter()
        for session in self.members.values():
            if session.incoming is not None:
                self._apply(session)
        self._server_seconds += time.perf_counter() - busy

    def _read_train_reply(self, session: NodeSession, plaintext: bytes, server_round: int):
        """An opened TRAIN reply, checked: the round it answers, its parts, the adapters and
        the next batches."""
        report, parts = read_bundle(plaintext, KIND_TRAIN, TrainReport)
        if report.round < server_round:
            raise LateReply(f"an authentic reply to round {report.round} came in round "
                            f"{server_round}")
        if report.round != server_round:
            raise ProtocolError(f"the reply answers round {report.round}, this is round "
                                f"{server_round}")
        upload = session.train is not None
        batches = [] if upload else [batch_part(i) for i in range(self.plan.interval)]
        expect_parts(parts, [PART_ADAPTERS, *batches], f"node {session.node_id}'s reply")
        adapters = self._checked_adapters(parts[PART_ADAPTERS], session.partition_id)
        pending = [] if upload else [self._checked_batch(parts[name], name) for name in batches]
        return report, adapters, pending

    def _apply(self, session: NodeSession) -> None:
        report, adapters, pending = session.incoming
        session.incoming = None
        session.adapters, session.acknowledged = adapters, report.state
        if session.train is not None:  # upload mode: the server draws the next batches
            session.draw_pending(self.plan)
        else:
            session.pending = pending
        session.rounds_trained += 1
        session.failures = 0
        session.version += 1

