"""Membership: who is in the run. Hellos (sent, pulled, opened), joins of new partitions, the
take-back of a partition by the identity that held it (a restarted node, a resumed server),
``strategy.partition-owners``, and the refusals of nodes that did not join."""

from __future__ import annotations

import collections
import logging
import random
import time
from dataclasses import dataclass

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from cola_fed.config import RunConfig
from cola_fed.errors import RunStopped
from cola_fed.federation.failures import node_error
from cola_fed.federation.owners import read_partition_owners
from cola_fed.federation.protocol import (
    KIND_HELLO,
    PART_ADAPTERS,
    PART_TRAIN,
    Hello,
    HelloClaim,
    HelloReply,
    HelloTranscript,
    batch_part,
    eval_part,
    expect_parts,
    open_bundle,
)
from cola_fed.federation.sessions import NodeSession
from cola_fed.wire import SecureChannel, fingerprint, public_bytes, transcript_hash
from cola_fed.wire.crypto import verify_node_claim

log = logging.getLogger("cola_fed")

#: hellos a node may leave unanswered, or answer with an error or a reply that does not open
#: (a relay can cause each), before it is left out of the run
MAX_HELLO_TRIES = 3
#: refusal reasons kept for metrics.json (the newest)
MAX_REFUSALS_KEPT = 256


@dataclass
class _PendingHello:
    message_id: str
    transcript: bytes  # its hash
    expires: float
    reply: Message | None = None  # taken as soon as it arrives, opened at the next admission


class Membership:
    """The run's members (``members``, by partition) and the nodes on their way in or refused.

    A part of ``ColaStrategy``: it reads the strategy's ``config``, ``plan``, ``identity``,
    ``exchange``, ``run_id``, ``graphs``, ``files`` and its checks of node data (``Checks``).
    """

    def _init_membership(self, config: RunConfig) -> None:
        #: with strategy.partition-owners: the identities that may hold each partition
        self.owners = (read_partition_owners(config.strategy.partition_owners)
                       if config.strategy.partition_owners else None)

    def _init_joins(self, config: RunConfig) -> None:
        self.members: dict[int, NodeSession] = {}  # by partition id
        self.refused_at_hello: dict[int, str] = {}  # node id -> why it did not join
        self._hellos: dict[int, _PendingHello] = {}
        self._hello_tries: dict[int, int] = {}  # node id -> hellos it failed to complete
        self._excluded: set[int] = set()  # node ids never asked again in the run
        self._admit_rng = random.Random(config.task.seed + 1)
        self._hello_id = 0
        self._invited_at = 0.0  # when hellos last went to newcomers (monotonic clock)

    @property
    def sessions(self) -> dict[int, NodeSession]:
        """The sessions of the nodes connected to the run now, by node id."""
        return {s.node_id: s for s in self.members.values() if s.node_id is not None}

    def hello(self, grid: Grid, timeout: float) -> None:
        """Wait up to ``timeout`` for ``strategy.min-available-nodes`` nodes, send every
        connected node a hello and wait up to ``timeout`` for the answers."""
        wanted = self.config.strategy.min_available_nodes
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise RunStopped(f"fewer than {wanted} nodes connected within {timeout:.0f} s")
            time.sleep(1.0)
        nodes = list(grid.get_node_ids())
        log.info("hello: %d nodes, server identity %s%s", len(nodes),
                 fingerprint(public_bytes(self.identity)),
                 f"; resuming at round {self.last_round + 1}" if self.last_round else "")
        self._send_hellos(grid, nodes, timeout)
        deadline = time.monotonic() + timeout
        while self._hellos and time.monotonic() < deadline:
            self._collect_hellos(grid)
            if self._hellos:
                time.sleep(0.2)
        self._collect_hellos(grid, expire=True)
        joined = self.sessions
        if len(joined) < self.config.strategy.min_train_nodes:
            raise RunStopped(f"{len(joined)} nodes completed the hello round, fewer than "
                             f"strategy.min-train-nodes = {self.config.strategy.min_train_nodes}")
        log.info("hello: %d nodes joined (partitions %s; backends %s)", len(joined),
                 sorted(s.partition_id for s in joined.values()),
                 dict(sorted(collections.Counter(s.backend for s in joined.values()).items())))
        if self.partition_names:
            log.info("natural partitions (task.partition-by = %s): %s",
                     self.config.task.partition_by,
                     ", ".join(f"{p} = {name!r}" for p, name in enumerate(self.partition_names)))

    def _admit(self, grid: Grid) -> None:
        """Newcomers: take the answers to earlier hellos, and send hellos to nodes that
        connected since: at most ``strategy.max-joins-per-round`` first hellos waiting at
        once, and as many second or third ones (so that ids that never answer cannot keep
        the others out), in random order."""
        self._collect_hellos(grid, expire=True)
        if self._invite(grid):
            self._collect_hellos(grid)  # the quick ones train this round already

    def _invite(self, grid: Grid) -> bool:
        """Send hellos to the nodes that connected since (see :meth:`_admit`); also called
        while a round runs, at most once a second, so that a node that (re)connects mid-round
        has answered by the next round and trains in it. Whether any hello went out."""
        self._invited_at = time.monotonic()
        connected = set(grid.get_node_ids())
        # ids gone from the SuperLink are forgotten: a flood of registrations that come and
        # go must not grow the server's memory for the rest of the run
        self._excluded &= connected
        self._hello_tries = {n: t for n, t in self._hello_tries.items() if n in connected}
        for gone in [n for n in self._hellos if n not in connected]:
            del self._hellos[gone]  # no answer will come
        known = set(self.sessions) | self._excluded | set(self._hellos)
        newcomers = [n for n in sorted(connected) if n not in known]
        self._admit_rng.shuffle(newcomers)
        chosen = []
        for first in (True, False):
            waiting = sum((n in self._hello_tries) != first for n in self._hellos)
            room = self.config.strategy.max_joins_per_round - waiting
            chosen += [n for n in newcomers if (n in self._hello_tries) != first][:max(room, 0)]
        if chosen:
            log.info("%d nodes connected since the hello round; sending %d a hello",
                     len(newcomers), len(chosen))
            self._send_hellos(grid, chosen, self.config.strategy.timeout)
        return bool(chosen)

    def _invite_now_and_then(self, grid: Grid) -> None:
        """:meth:`_invite`, at most once a second (while a round waits for replies)."""
        if time.monotonic() - self._invited_at >= 1.0:
            self._invite(grid)

    def _send_hellos(self, grid: Grid, nodes: list[int], timeout: float) -> None:
        # above any earlier hello of the run: a node refuses a replayed one
        self._hello_id = hello_id = max(time.time_ns(), self._hello_id + 1)
        for node in nodes:
            hello = Hello.signed(self.identity, HelloTranscript(
                run_id=self.run_id, node_id=node, hello_id=hello_id,
                identity=public_bytes(self.identity), exchange_key=public_bytes(self.exchange),
                plan=self.plan, lineage=self.lineage), self.graphs, self.files)
            message = Message(hello.to_record(), dst_node_id=node,
                              message_type=MessageType.QUERY, group_id="0", ttl=timeout)
            [message_id] = grid.push_messages([message])
            if message_id:
                self._hellos[node] = _PendingHello(message_id, transcript_hash(hello.transcript),
                                                   time.monotonic() + timeout)

    def _pull_hellos(self, grid: Grid) -> None:
        """Take the hello replies that have arrived, before their time to live ends (also
        while a round runs); they are opened at the next admission."""
        waiting = {h.message_id: n for n, h in self._hellos.items() if h.reply is None}
        if not waiting:
            return
        for reply in grid.pull_messages(list(waiting)):
            node = waiting.get(reply.metadata.reply_to_message_id)
            if node is not None:
                self._hellos[node].reply = reply

    def _collect_hellos(self, grid: Grid, *, expire: bool = False) -> None:
        """Open the hello replies that have arrived; with ``expire``, forget hellos that were
        not answered in time (the node may get another one later)."""
        self._pull_hellos(grid)
        claims = []
        for node, pending in [(n, h) for n, h in self._hellos.items() if h.reply is not None]:
            del self._hellos[node]
            reply = pending.reply
            if reply.metadata.src_node_id != node:  # the SuperLink's: the node is unavailable
                self._refuse_hello(node, "the node did not answer: " + (
                    node_error(reply.error.reason) if reply.has_error() else "?"), retry=True)
                continue
            if reply.has_error():  # its own error, or one a relay made up: asked again
                self._refuse_hello(node, node_error(reply.error.reason), retry=True)
                continue
            try:  # a reply that does not open may not be the node's: asked again
                claims.append(self._open_hello(node, reply, pending.transcript))
            except Exception as err:
                self._refuse_hello(node, f"{type(err).__name__}: {err}", retry=True)
        self._join(claims)
        if expire:
            now = time.monotonic()
            for node in [n for n, h in self._hellos.items() if h.expires < now]:
                del self._hellos[node]
                self._refuse_hello(node, "the node did not answer in time; it is not sampled",
                                   retry=True)

    def _open_hello(self, node: int, reply: Message, transcript: bytes
                    ) -> tuple[int, HelloClaim, dict, SecureChannel]:
        """A hello reply, opened, with the node's signature of its claim checked."""
        hello = HelloReply.from_record(reply.content)
        channel = SecureChannel(self.exchange, hello.node_public, role="server",
                                run_id=self.run_id, node_id=node, transcript=transcript)
        claim, parts = open_bundle(channel, hello.sealed, KIND_HELLO, HelloClaim,
                                   limits=self._reply_limits(None, upload=True))
        verify_node_claim(bytes.fromhex(claim.identity), transcript, hello.node_public,
                          bytes.fromhex(claim.signature))
        return node, claim, parts, channel

    def _join(self, claims: list[tuple[int, HelloClaim, dict, SecureChannel]]) -> None:
        """Admit opened hellos. A node that proves it holds a partition's identity takes its
        session back (its adapters and batches as the server holds them); a new partition
        gets a session from the node's first adapters and batches. A partition held by
        another identity is refused, and so is every node of a partition that several new
        nodes claim at once (claims are not proof: the first has no right over a later one).
        With ``strategy.partition-owners``, a claim by an identity the file does not list for
        the partition is refused first, for the run, whoever came first."""
        fresh = collections.defaultdict(list)
        for node, claim, parts, channel in claims:
            identity = bytes.fromhex(claim.identity)
            if self.owners is not None and not self.owners.allows(claim.partition_id, identity):
                self._refuse_hello(node, "ProtocolError: " + self.owners.why_not(
                    claim.partition_id, identity))
                continue
            session = self.members.get(claim.partition_id)
            if session is None:
                fresh[claim.partition_id].append((node, claim, parts, channel))
            elif session.identity != identity:
                self._refuse_hello(node, f"ProtocolError: partition {claim.partition_id} is "
                                         "held by another node identity in this run")
            else:
                try:  # the isolation boundary: whatever a node sent, it fails alone
                    self._take_back(session, node, claim, parts, channel)
                except Exception as err:
                    self._refuse_hello(node, f"{type(err).__name__}: {err}")
        for partition, nodes in fresh.items():
            if len(nodes) > 1:
                for node, *_ in nodes:
                    self._refuse_hello(node, f"ProtocolError: partition {partition} is claimed "
                                             "by several nodes; two nodes may not hold one "
                                             "partition", retry=True)
                continue
            node, claim, parts, channel = nodes[0]
            try:  # the isolation boundary: whatever a node sent, it fails alone
                self.members[partition] = self._new_session(node, claim, parts, channel)
            except Exception as err:
                self._refuse_hello(node, f"{type(err).__name__}: {err}")
                continue
            self._joined(node)

    def _take_back(self, session: NodeSession, node: int, claim: HelloClaim, parts: dict,
                   channel: SecureChannel) -> None:
        """The node that held a partition is back (restarted, or the server resumed). If it
        no longer holds the learner state the server holds (it lost it), the server takes the
        checked adapters and batches of the state it has instead: they agree again."""
        if session.acknowledged not in claim.held:
            fresh = self._new_session(node, claim, parts, channel)
            log.warning("hello: the node of partition %d no longer holds its state #%d; "
                        "taking its state #%d instead", claim.partition_id,
                        session.acknowledged, claim.state)
            session.adapters, session.pending = fresh.adapters, fresh.pending
            session.train, session.drawn, session._stream = fresh.train, fresh.drawn, None
            session.acknowledged = session.checkpointed = claim.state
            session.version += 1
        previous = session.node_id
        session.node_id, session.channel, session.missed = node, channel, 0
        self._joined(node)
        log.info("hello: partition %d is back on node %s%s, at its state #%d",
                 claim.partition_id, node,
                 f" (was node {previous})" if previous not in (None, node) else "",
                 session.acknowledged)

    def _drop_unowned(self) -> None:
        """With ``strategy.partition-owners``: forget the resumed sessions of identities the
        file does not list for their partition (taken before the file was, or before it
        changed), so that the owners' claims start them afresh."""
        if self.owners is None:
            return
        for partition, session in list(self.members.items()):
            if not self.owners.allows(partition, session.identity):
                del self.members[partition]
                log.warning("resume: partition %d was held by an identity %s does not list "
                            "for it; its session is dropped, and its owner starts it afresh",
                            partition, self.owners.path)

    def _refuse_hello(self, node: int, why: str, *, retry: bool = False) -> None:
        """A node that did not join: for the run, or (``retry``: no answer, an error or a
        reply that does not open, which a relay can cause) until it has missed
        ``MAX_HELLO_TRIES`` hellos."""
        tries = self._hello_tries[node] = self._hello_tries.get(node, 0) + 1
        if not retry or tries >= MAX_HELLO_TRIES:
            self._excluded.add(node)
        self.refused_at_hello[node] = why if len(why) <= 300 else why[:297] + "..."
        while len(self.refused_at_hello) > MAX_REFUSALS_KEPT:  # the reasons of the newest
            del self.refused_at_hello[next(iter(self.refused_at_hello))]
        log.warning("hello: refused node %s%s: %s", node,
                    "" if node in self._excluded else f" (try {tries} of {MAX_HELLO_TRIES})",
                    why)

    def _joined(self, node: int) -> None:
        self.refused_at_hello.pop(node, None)
        self._hello_tries.pop(node, None)

    def _new_session(self, node: int, claim: HelloClaim, parts: dict,
                     channel: SecureChannel) -> NodeSession:
        """A new partition's session, from the node's checked first adapters and batches."""
        task, upload = self.plan.task, self.plan.data_mode == "upload"
        batches = [PART_TRAIN] if upload else [batch_part(i) for i in range(self.plan.interval)]
        evals = [eval_part(i) for i in range(task.eval_batches)]
        expect_parts(parts, [PART_ADAPTERS, *batches, *evals], f"node {node}'s hello")
        session = NodeSession(
            claim.partition_id, bytes.fromhex(claim.identity),
            self.plan.specs_for(claim.partition_id),
            self._checked_adapters(parts[PART_ADAPTERS], claim.partition_id), [],
            [self._checked_batch(parts[name], name) for name in evals], node_id=node,
            channel=channel, acknowledged=claim.state, checkpointed=claim.state,
            num_examples=claim.num_examples,
            backend=claim.backend)
        if upload:
            session.train = self._checked_batch(parts[PART_TRAIN], PART_TRAIN, upload=True)
            session.draw_pending(self.plan)
        else:
            session.pending = [self._checked_batch(parts[name], name) for name in batches]
        return session

