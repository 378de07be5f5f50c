"""Sampling: which nodes train this round (``strategy.fraction-train``), the backoff of nodes
that keep missing rounds, and waiting for enough nodes (``strategy.wait-for-nodes``)."""

from __future__ import annotations

import logging
import random
import time

from flwr.serverapp import Grid

from cola_fed.config import RunConfig
from cola_fed.errors import RunStopped
from cola_fed.federation.sessions import NodeSession

log = logging.getLogger("cola_fed")

#: rounds in a row a node may send no reply before it is asked less often
MISSES_BEFORE_BACKOFF = 3


class Sampling:
    """Draws each round's nodes; ``_sampled`` holds this round's node ids.

    A part of ``ColaStrategy``: it reads the strategy's ``config`` and ``members`` and admits
    newcomers (``Membership._admit``) while it waits for nodes.
    """

    def _init_sampling(self, config: RunConfig) -> None:
        self._sampled: set[int] = set()
        self._available: set[int] = set()  # the node ids connected at the last draw
        self._rng = random.Random(config.task.seed)

    def _sample(self, grid: Grid, server_round: int) -> list[int]:
        """The node ids trained this round: ``strategy.fraction-train`` of the connected nodes
        outside quarantine, drawn by partition (so that a resumed run draws as the first
        would). Waits up to ``strategy.wait-for-nodes`` for ``strategy.min-train-nodes``."""
        strategy = self.config.strategy
        since = time.monotonic()
        while True:
            available = set(grid.get_node_ids())
            self._forgive_returns(available, server_round)
            ready = {s.partition_id: s.node_id for s in self.members.values()
                     if s.node_id in available and not s.quarantined
                     and self._due(s, server_round)}
            if len(ready) >= strategy.min_train_nodes:
                break
            waited = time.monotonic() - since
            if waited >= strategy.wait_for_nodes:
                raise RunStopped(
                    f"round {server_round}: {len(ready)} nodes available outside quarantine "
                    f"after waiting {waited:.0f} s (strategy.wait-for-nodes), fewer than "
                    f"strategy.min-train-nodes = {strategy.min_train_nodes}")
            if int(waited) % 30 == 0:
                log.info("round %d: %d of %d nodes available; waiting up to %.0f s more",
                         server_round, len(ready), strategy.min_train_nodes,
                         strategy.wait_for_nodes - waited)
            time.sleep(1.0)
            self._admit(grid)
        partitions = sorted(ready)
        count = max(1, round(len(partitions) * strategy.fraction_train))
        if count < len(partitions):
            partitions = sorted(self._rng.sample(partitions, count))
        return [ready[p] for p in partitions]

    def _forgive_returns(self, available: set[int], server_round: int) -> None:
        """A member whose node id was gone from the SuperLink and is back (a SuperNode with
        authentication restarts under its old id, and gets no hello to mark its return) is
        asked again at once: the rounds it missed while away say nothing of it now."""
        for session in self.members.values():
            if session.node_id in available and session.node_id not in self._available:
                if session.missed:
                    log.info("round %d: %s is connected again; it is sampled again at once",
                             server_round, session.node)
                session.missed = 0
        self._available = available

    @staticmethod
    def _due(session: NodeSession, server_round: int) -> bool:
        """A node that missed more than ``MISSES_BEFORE_BACKOFF`` rounds in a row (each held
        its round up until ``strategy.timeout``) is asked only every 2nd, 4th, ... up to every
        32nd round, until it answers."""
        over = session.missed - MISSES_BEFORE_BACKOFF
        return over <= 0 or server_round % (2 ** min(over, 5)) == 0

    def _count_misses(self, opened: set[int], sessions: dict[int, NodeSession]) -> None:
        """A sampled node whose reply did not open this round (none came, an error, a forgery)
        has missed one more round in a row; one whose reply opened, none."""
        for node in self._sampled:  # a node that keeps missing is asked less often
            if node in sessions:
                sessions[node].missed = 0 if node in opened else sessions[node].missed + 1

