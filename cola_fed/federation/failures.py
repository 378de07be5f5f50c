"""Failures: why a sampled node did not train in a round, named once per run of failed rounds
(node id, partition and its name, reason), kept per partition for metrics.json; a node's return
named too; refusals counted against a node, and its quarantine.

Reasons: ``timeout`` (no reply within ``strategy.timeout``), ``error reply`` (the node answered
with an error), ``unavailable`` (the SuperLink answered for the node: gone, or the message
expired), ``not sent`` (the SuperLink took no message for it), ``refused`` (its reply or batch
failed the server's checks; counted towards ``strategy.max-failures``), ``quarantined``,
``unreadable reply`` and ``late reply`` (what a relay can cause; not counted against the node).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cola_fed.federation.sessions import NodeSession

log = logging.getLogger("cola_fed")

#: failed rounds kept per partition for metrics.json (the newest)
MAX_FAILED_ROUNDS_KEPT = 64

TIMEOUT = "timeout"
ERROR_REPLY = "error reply"
UNAVAILABLE = "unavailable"
NOT_SENT = "not sent"
REFUSED = "refused"
QUARANTINED = "quarantined"
UNREADABLE = "unreadable reply"
LATE = "late reply"


class Failures:
    """The round's failures (``_why``: node id -> reason, detail, already logged), named when
    the round's replies are in. A part of ``ColaStrategy``: reads its ``config``,
    ``sessions``, ``partition_names`` and ``_sampled``."""

    def _init_failures(self) -> None:
        self._why: dict[int, tuple[str, str, bool]] = {}

    def _who(self, session: NodeSession) -> str:
        """``node N (partition P)``, with the partition's name when ``task.partition-by``
        gives one: ``node N (partition P = 'ana')``."""
        names = self.partition_names
        name = (f" = {names[session.partition_id]!r}"
                if 0 <= session.partition_id < len(names) else "")
        return f"node {session.node_id} (partition {session.partition_id}{name})"

    def _failed(self, node: int, reason: str, detail: str, *, logged: bool = False) -> None:
        """Note why ``node`` will not train this round (``logged``: the caller has logged it
        already); named at the round's end by ``_name_failures``."""
        self._why[node] = (reason, detail if len(detail) <= 600 else detail[:597] + "...",
                           logged)

    def _fault(self, node: int, server_round: int, err: BaseException, what: str) -> None:
        """Count a refusal against a node; quarantine it after ``strategy.max-failures`` in a
        row. The node keeps its adapters and pending batches."""
        session = self.sessions[node]
        session.failures += 1
        session.last_error = f"round {server_round}: {what}: {type(err).__name__}: {err}"
        self._failed(node, REFUSED, f"{what}: {type(err).__name__}: {err}")
        if session.failures >= self.config.strategy.max_failures and not session.quarantined:
            session.quarantined = True
            log.error("%s quarantined for the rest of the run after %d refusals in a row",
                      self._who(session), session.failures)
            self._failed(node, QUARANTINED, f"after {session.failures} refusals in a row; "
                         f"the latest: {what}: {type(err).__name__}: {err}", logged=True)

    def _name_failures(self, server_round: int, trained: set[int]) -> None:
        """Each node sampled this round that did not train, named at WARNING with its reason
        when its run of failed rounds begins (or its reason changes), and kept in its
        session's ``failed_rounds``; a node that trains again after failed rounds, named as
        back."""
        sessions = self.sessions
        for node in sorted(self._sampled):
            session = sessions.get(node)
            if session is None:
                continue
            if node in trained:
                if session.failing is not None:
                    since = session.failing[0]
                    log.info("round %d: %s is back after %d rounds (failing since round %d)",
                             server_round, self._who(session), server_round - since, since)
                    session.failing = None
                continue
            reason, detail, logged = self._why.get(
                node, (TIMEOUT, "no reply this round", False))
            session.failed_rounds.append({"round": server_round, "node": node,
                                          "reason": reason, "detail": detail})
            del session.failed_rounds[:-MAX_FAILED_ROUNDS_KEPT]
            if session.failing is not None and session.failing[1] == reason:
                log.debug("round %d: %s failed again (%s): %s", server_round,
                          self._who(session), reason, detail)
                continue
            session.failing = (server_round if session.failing is None
                               else session.failing[0], reason)
            if not logged:
                log.warning("round %d: %s failed (%s): %s; not logged again until it trains "
                            "or fails otherwise", server_round, self._who(session), reason,
                            detail)
        self._why = {}


def node_error(reason: str) -> str:
    """The gist of an error a node reported: its last line (under Flower's simulation engine
    the reason carries the whole remote traceback, wrapped as ``<class 'X'>:<'...'>``), at
    most 1,200 characters."""
    text = str(reason).strip()
    wrapped = re.fullmatch(r"<class '([\w.]+)'>:<'(.*)'>", text, re.S)
    if wrapped:
        text = wrapped.group(2) if "\n" in wrapped.group(2) else \
            f"{wrapped.group(1).rsplit('.', 1)[-1]}: {wrapped.group(2)}"
    elif text.startswith("<class '") and text.endswith("'>"):  # Ray's "X(ClientAppException)"
        text = text[:-2]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    gist = lines[-1] if lines else "no reason given"
    # a ClientApp error under the simulation engine: "Exception X occurred. Message: ..."
    gist = re.sub(r"^Exception \w+ occurred\. Message: ", "", gist)
    gist = printable(gist)  # the node's text, bound for terminals, logs and metrics.json
    return gist if len(gist) <= 1200 else gist[:1197] + "..."


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (escape sequences, carriage
    returns, bidirectional overrides: whatever :meth:`str.isprintable` refuses) made a space:
    what another party wrote is shown, never obeyed."""
    return "".join(c if c.isprintable() else " " for c in text)
