"""A node's side of the round protocol: keys, learner and data, kept in Flower's context.state.

Nothing here imports torch: a node trains either with PyTorch (``GradientLearner``) or with ONNX
Runtime (``OrtLearner``, from the train-step graphs the server ships at hello). Node config
(local settings; none of them ever comes from the wire):

- ``partition-id``, ``num-partitions``: this node's share of the task's data;
- ``data-path``: a local data file that replaces the partition;
- ``skip-invalid-rows``: ``true`` skips (and logs) the rows of that file the task cannot use;
- ``allow-tasks``: ``package.module:Class`` task paths this node may import when the server
  names one (a task registered on the node needs no allowing);
- ``server-key-fingerprint``: the server identity to pin; without it the node trusts the first
  identity it sees for ``federation`` (default ``default``) and remembers it in
  ``known-servers`` (default ``$COLA_FED_HOME/known-servers.json``);
- ``backend``: ``torch``, ``onnx`` or ``auto`` (default: the run's choice for this partition,
  else torch when it is installed, else onnx);
- ``graph-cache``: where verified graphs are kept (default ``~/.cache/cola-fed/graphs``);
- ``onnx-threads``: ONNX Runtime intra-op threads (default 1);
- ``state-dir``: where the node keeps its identity and its sessions, so that it goes on after
  a restart or a server resume (:mod:`cola_fed.federation.node_store`);
- caps on what the server may ask (``max-interval``, ``max-batch-size``, ``max-length``,
  ``max-eval-batches``, ``max-layers``, ``max-width``, ``max-payload-mb``; see
  :class:`cola_fed.federation.protocol.NodeCaps`).

Every message is handled the same way: restore the session from ``context.state``, check and
decode what came (strictly; a bad message changes nothing), act, seal the reply, save the
session.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, RecordDict

from cola_fed.config import TaskConfig
from cola_fed.edge.cache import GraphCache, TaskFileCache
from cola_fed.edge.graphs import graph_keys
from cola_fed.errors import ConfigError, ProtocolError, ReplayError
from cola_fed.federation.node_store import NodeStore, raw_private
from cola_fed.federation.protocol import (
    KIND_HELLO,
    KIND_TRAIN,
    LEARNER_PREFIX,
    PART_ADAPTERS,
    PART_TRAIN,
    Hello,
    HelloClaim,
    HelloReply,
    HelloTranscript,
    NodeCaps,
    NodeSession,
    Plan,
    Sealed,
    TrainOrder,
    TrainReport,
    adaptation_part,
    batch_part,
    eval_part,
    expect_parts,
    learner_key,
    open_bundle,
    seal_bundle,
)
from cola_fed.federation.records import blob_to_record, record_to_blob
from cola_fed.suggest import did_you_mean
from cola_fed.tasks import get_task
from cola_fed.tasks.base import ClientData
from cola_fed.tasks.registry import node_allowed_paths
from cola_fed.wire import (
    ChannelState,
    DecodeBudget,
    SecureChannel,
    decode_adaptation,
    encode_adapter_state,
    encode_batch,
    public_bytes,
    transcript_hash,
    verify_transcript,
)
from cola_fed.wire.crypto import sign_node_claim
from cola_fed.wire.identity import KnownServers

log = logging.getLogger("cola_fed")

STATE_SESSION = "cola-session"  # ConfigRecord: NodeSession
STATE_IDENTITY = "cola-node-identity"  # ConfigRecord: the node's identity, without state-dir
# and per learner state the session lists, an ArrayRecord: protocol.learner_key(number)


#: every node config key cola-fed reads (others may belong to other apps of the SuperNode)
NODE_CONFIG_KEYS = ("partition-id", "num-partitions", "data-path", "skip-invalid-rows",
                    "server-key-fingerprint",
                    "federation", "known-servers", "backend", "graph-cache", "onnx-threads",
                    "state-dir", "allow-tasks", *NodeCaps.keys())
#: the data file simulated nodes partition (``cola-fed simulate`` sets it from task.data-path)
DATA_PATH_ENV = "COLA_FED_DATA_PATH"
#: "1": simulated nodes skip the data rows their task cannot use (``cola-fed simulate`` sets
#: it from task.skip-invalid-rows); deployed nodes: node config ``skip-invalid-rows``
SKIP_INVALID_ROWS_ENV = "COLA_FED_SKIP_INVALID_ROWS"


def check_node_config(node_config: dict) -> None:
    """Refuse a node config key that looks like a misspelt cola-fed key: a silently ignored
    ``server_key_fingerprint`` would turn pinning off."""
    for key in node_config:
        if key in NODE_CONFIG_KEYS:
            continue
        if "state" in str(key).lower():  # a misspelt state-dir would quietly turn it off
            raise ConfigError(f"node config {key!r} is not a cola-fed key; did you mean "
                              "'state-dir'? (docs/configuration.md lists them)")
        hint = did_you_mean(str(key).replace("_", "-").lower(), NODE_CONFIG_KEYS, cutoff=0.8)
        if hint:
            raise ConfigError(f"node config {key!r} is not a cola-fed key{hint} "
                              "(docs/configuration.md lists them)")


def handle_hello(msg: Message, context: Context) -> Message:
    """Round 0, or a newcomer's first round: check the server's signed hello, then build the
    learner (or take back the one this node held in the run, from ``context.state`` or its
    ``state-dir``) and send the adapters and first batches. Nothing is read, run or sent before
    the hello is checked."""
    check_node_config(context.node_config)
    caps = NodeCaps.from_node_config(context.node_config)
    hello = Hello.from_record(msg.content)
    transcript = _checked_hello(hello, context, caps)
    plan = transcript.plan
    partition_id, num_partitions = _partition(context)
    store = NodeStore.for_context(context)
    prior = _prior_state(context, store, transcript, partition_id)
    backend = prior[0].backend if prior else _choose_backend(context, plan, partition_id)
    graph_hashes = _receive_graphs(hello, context, plan, partition_id) if backend == "onnx" else {}
    _receive_files(hello, plan, context)

    key = X25519PrivateKey.generate()
    digest = transcript_hash(hello.transcript)
    channel = SecureChannel(key, transcript.exchange_key, role="node", run_id=context.run_id,
                            node_id=context.node_id, transcript=digest)
    learner = _new_learner(plan, partition_id, context, backend, graph_hashes)
    states, learners, drawn = {}, {}, 0
    if prior:  # the node held this partition in this run: it goes on from its newest state
        previous, learners = prior
        states, drawn = dict(previous.states), previous.states[previous.latest]
        learner.load_bytes(learners[previous.latest])
        log.info("hello: partition %d goes on from its state #%d", partition_id,
                 previous.latest)
    number = (prior[0].latest if prior else 0) + 1
    data = _client_data(plan, context, partition_id, num_partitions)
    parts = {PART_ADAPTERS: encode_adapter_state(_numpy_state(learner.adapter_state()))}
    if plan.data_mode == "upload":  # the whole training split, once
        batches = []
        parts[PART_TRAIN] = encode_batch(data.train)
    else:
        batches = _draw(data, plan, partition_id, start=drawn)
        parts.update({batch_part(i): encode_batch(b) for i, b in enumerate(batches)})
    parts.update({eval_part(i): encode_batch(b) for i, b in enumerate(data.eval_batches)})
    states[number] = drawn + len(batches)
    learners[number] = learner.to_bytes()
    keep = {prior[0].acknowledged, prior[0].checkpointed} if prior else set()
    for old in [n for n in sorted(states) if n not in keep][:-NodeSession.MAX_STATES + 2]:
        del states[old], learners[old]  # hello after hello: the newest, and those named
    identity = _node_identity(context, store)
    claim = HelloClaim(partition_id=partition_id, num_examples=data.num_examples,
                       backend=backend, state=number, identity=public_bytes(identity).hex(),
                       signature=sign_node_claim(identity, digest, public_bytes(key)).hex(),
                       held=sorted(states))
    sealed = _bounded(seal_bundle(channel, KIND_HELLO, claim, parts), caps)

    session = NodeSession(node_key=_raw_key(key), transcript=hello.transcript,
                          partition_id=partition_id, backend=backend, sent=channel.state.sent,
                          received=channel.state.received, latest=number, states=states,
                          acknowledged=prior[0].acknowledged if prior else number,
                          checkpointed=prior[0].checkpointed if prior else number)
    _save(context, store, transcript, session, learners)
    log.info("hello: partition %d joins on the %s backend", partition_id, backend)
    return Message(HelloReply(public_bytes(key), sealed).to_record(), reply_to=msg)


def handle_train(msg: Message, context: Context) -> Message:
    """Round t: learn from the adaptation data, send new adapters and the next batches."""
    store = NodeStore.for_context(context)
    if STATE_SESSION not in context.state and not _restore(context, store):
        raise ProtocolError("TRAIN before hello: this node has no session for the run")
    session = NodeSession.from_record(context.state[STATE_SESSION])
    transcript = HelloTranscript.decode(session.transcript)
    plan, caps = transcript.plan, NodeCaps.from_node_config(context.node_config)
    key = X25519PrivateKey.from_private_bytes(session.node_key)
    channel = SecureChannel(key, transcript.exchange_key, role="node", run_id=context.run_id,
                            node_id=context.node_id,
                            transcript=transcript_hash(session.transcript),
                            state=ChannelState(session.sent, session.received))

    # Open and decode everything before touching the learner: a bad message changes nothing.
    limits = caps.limits(plan)
    order, parts = open_bundle(channel, Sealed.from_record(msg.content).sealed, KIND_TRAIN,
                               TrainOrder, limits=limits)
    if order.round <= session.last_round:
        raise ReplayError(f"a TRAIN order for round {order.round}, after round "
                          f"{session.last_round}: rounds only go forward")
    if order.acknowledged not in session.states:
        raise ProtocolError(f"the server holds this node's state #{order.acknowledged}; this "
                            f"node holds states {sorted(session.states)}")
    names = [adaptation_part(i) for i in range(plan.interval)]
    expect_parts(parts, names, "a TRAIN order")
    # one budget for the whole order: what every chunk of the interval takes decoded and
    # unfolded, together, stays within max-payload-mb, checked before anything is unfolded
    budget = DecodeBudget(limits.max_bytes)
    chunks = [decode_adaptation(parts.pop(name), layout=plan.layout, limits=limits,
                                budget=budget) for name in names]
    del parts  # the encoded parts: on a small device, memory for one copy of the data only
    # The server's adaptation data was computed at the adapters of the state it holds. If that
    # is not our latest (our reply was lost or refused, we restarted, or the server resumed
    # from a checkpoint), go on from that state, so the step and the batch stream stay
    # consistent with the server and no batch is skipped.
    base, drawn = order.acknowledged, session.states[order.acknowledged]
    previous_states = dict(session.states)
    if base != session.latest:  # expected after a hello that found this node's state: INFO
        log.log(logging.INFO if session.last_round == 0 else logging.WARNING,
                "round %d: the server holds this node's state #%d, not its latest #%d (a reply "
                "lost or refused, a restart, or a resumed server); going on from #%d",
                order.round, base, session.latest, base)
    base_blob = record_to_blob(context.state[learner_key(base)])
    graph_hashes = _graphs_needed(plan, session.partition_id) if session.backend == "onnx" else {}
    learner = _new_learner(plan, session.partition_id, context, session.backend, graph_hashes)
    learner.load_bytes(base_blob)
    metrics = [learner.fit(chunk) for chunk in chunks][-1]
    loss = sum(chunk.loss for chunk in chunks) / len(chunks)
    num_examples = sum(chunk.num_samples for chunk in chunks)
    # The adaptation data is spent (a learner that buffers it holds its own reference): drop
    # it, and the decrypted payload it views, before the data and the reply are built, so
    # that a round holds the plaintext only while it is learned from.
    del chunks

    batches = []
    if plan.data_mode == "stream":
        data = _client_data(plan, context, session.partition_id, _partition(context)[1])
        batches = _draw(data, plan, session.partition_id, start=drawn)
    number = session.latest + 1
    parts = {PART_ADAPTERS: encode_adapter_state(_numpy_state(learner.adapter_state()))}
    parts.update({batch_part(i): encode_batch(b) for i, b in enumerate(batches)})
    report = TrainReport(round=order.round,
                         loss=loss, num_examples=num_examples,
                         grad_norm=float(metrics.get("grad_norm", 0.0)), step=learner.step,
                         state=number)
    sealed = _bounded(seal_bundle(channel, KIND_TRAIN, report, parts), caps)
    session.sent, session.received = channel.state.sent, channel.state.received
    session.last_round, session.latest = order.round, number
    session.acknowledged = base
    learners = {base: base_blob, number: learner.to_bytes()}
    session.states = {base: drawn, number: drawn + len(batches)}
    if order.checkpointed in previous_states and order.checkpointed not in learners:
        # the server's checkpoint holds an older state: kept, for a server that resumes
        session.states[order.checkpointed] = previous_states[order.checkpointed]
        learners[order.checkpointed] = bytes(record_to_blob(
            context.state[learner_key(order.checkpointed)]))
    session.checkpointed = order.checkpointed
    _save(context, store, transcript, session, learners)
    return Message(Sealed(sealed).to_record(), reply_to=msg)


# --------------------------------------------------------------------------------------------
# the hello, checked before anything is acted on


def _checked_hello(hello: Hello, context: Context, caps: NodeCaps) -> HelloTranscript:
    """The hello's transcript, once its signature holds under a server identity this node pins
    or remembers, it is for this run and node, and its plan is within this node's caps."""
    verify_transcript(hello.identity, hello.transcript, hello.signature)
    config = context.node_config
    pinned = config.get("server-key-fingerprint") or None
    known = KnownServers(config.get("known-servers") or None)
    federation = str(config.get("federation") or "default")
    # a key this node pins or remembers otherwise is refused before its plan is even read
    # (reading it may load an installed adapter plugin the plan names)
    known.check(federation, hello.identity, pinned=pinned, remember=False)
    transcript = HelloTranscript.decode(hello.transcript)
    if transcript.identity != hello.identity:
        raise ProtocolError("the hello's transcript names another server identity")
    if (transcript.run_id, transcript.node_id) != (context.run_id, context.node_id):
        raise ProtocolError(f"a hello for run {transcript.run_id} and node {transcript.node_id} "
                            f"reached node {context.node_id} of run {context.run_id}")
    # only a hello fit to act on teaches trust on first use
    known.check(federation, hello.identity, pinned=pinned)
    caps.check(transcript.plan, _partition(context)[0])
    return transcript


def _prior_state(context: Context, store: NodeStore | None, transcript: HelloTranscript,
                 partition_id: int) -> tuple[NodeSession, dict[int, bytes]] | None:
    """The session and learner states this node held in this run (this process's, else its
    state directory's), if it held one. A hello that is not newer than the one that session
    accepted is a replay and resets nothing."""
    records = context.state if STATE_SESSION in context.state else (
        store.load(transcript.identity, transcript.lineage) if store else None)
    if records is None or STATE_SESSION not in records:
        return None
    session = NodeSession.from_record(records[STATE_SESSION])
    previous = HelloTranscript.decode(session.transcript)
    # (a hello of another run names that run: a resumed run's hellos need not be newer)
    if (previous.identity, previous.lineage) != (transcript.identity, transcript.lineage) or (
            previous.run_id == transcript.run_id and transcript.hello_id <= previous.hello_id):
        raise ReplayError("a second hello for this run that is not a newer one from the same "
                          "server; the session is kept")
    if session.partition_id != partition_id:
        raise ConfigError(f"this node held partition {session.partition_id} in this run, and "
                          f"its node config now says partition-id = {partition_id}; a node "
                          "keeps its partition for the whole run")
    learners = {n: bytes(record_to_blob(records[learner_key(n)])) for n in session.states}
    if session.latest not in learners:
        raise ProtocolError("this node's stored session is damaged; rejoin the run")
    return session, learners


def _restore(context: Context, store: NodeStore | None) -> bool:
    """Take back this run's session from the state directory, if this process lost it (the
    node restarted and kept its node id): the newest saved session of this run and node. A
    file that fails its checks is set aside and blocks nothing; the next one is tried."""
    for path in store.files() if store else []:
        records = store.read_or_set_aside(path)
        if records is None or STATE_SESSION not in records:
            continue
        transcript = HelloTranscript.decode(NodeSession.from_record(
            records[STATE_SESSION]).transcript)
        if (transcript.run_id, transcript.node_id) == (context.run_id, context.node_id):
            for name in list(records):
                context.state[name] = records[name]
            log.info("restored this node's session of run %d from %s", context.run_id, path)
            return True
    return False


def _node_identity(context: Context, store: NodeStore | None) -> Ed25519PrivateKey:
    """The node's long-term identity: from its state directory, else this process's own
    (kept in ``context.state`` for the run)."""
    if store is not None:
        return store.identity()
    record = context.state.get(STATE_IDENTITY)
    if record is None:
        key = Ed25519PrivateKey.generate()
        context.state[STATE_IDENTITY] = ConfigRecord({"key": raw_private(key)})
        return key
    return Ed25519PrivateKey.from_private_bytes(record["key"])


def _partition(context: Context) -> tuple[int, int]:
    config = context.node_config
    try:
        partition_id, num_partitions = config["partition-id"], config["num-partitions"]
    except KeyError as err:
        raise ConfigError(
            f"node config lacks {err}; start the SuperNode with --node-config "
            "\"partition-id=<i> num-partitions=<n>\""
        ) from None
    if not (isinstance(partition_id, int) and isinstance(num_partitions, int)
            and 0 <= partition_id < num_partitions <= 2**31 - 1):
        raise ConfigError(f"node config partition-id {partition_id!r} and num-partitions "
                          f"{num_partitions!r}: expected integers with 0 <= id < count")
    return partition_id, num_partitions


def _choose_backend(context: Context, plan: Plan, partition_id: int) -> str:
    """``torch`` or ``onnx``: the node config's ``backend``, else the run's choice for this
    partition, else torch when it is installed."""
    wanted = str(context.node_config.get("backend") or plan.backend_for(partition_id) or "auto")
    if wanted not in ("auto", "torch", "onnx"):
        raise ConfigError(f"node config backend: expected auto, torch or onnx, got {wanted!r}")
    if wanted == "onnx":
        return wanted
    if _torch_installed():
        return "torch"
    if wanted == "torch":
        raise ConfigError("this node is set to backend 'torch' but PyTorch is not installed; "
                          "install cola-fed[torch] or set backend = 'onnx'")
    return "onnx"


def _torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _graphs_needed(plan: Plan, partition_id: int) -> dict[str, str]:
    """``name -> sha256`` of the train-step graphs this node trains with, as the signed plan
    lists them: every rows graph of its adapters, and the graphs of the other exact forms the
    server lists (without them the server sends this node rows only)."""
    specs = [plan.specs_for(partition_id)]
    needed = graph_keys(plan.layout, specs, plan.optimizer)
    missing = sorted(set(needed) - set(plan.graphs))
    if missing:
        raise ProtocolError(f"this node trains on ONNX Runtime, but the server lists no "
                            f"train-step graph {missing}; run the server with edge.graphs = "
                            "true, or install PyTorch on this node")
    optional = graph_keys(plan.layout, specs, plan.optimizer, form="all")
    return {name: plan.graphs[name] for name in optional
            if name in needed or name in plan.graphs}


def _receive_graphs(hello: Hello, context: Context, plan: Plan,
                    partition_id: int) -> dict[str, str]:
    """Check the shipped graphs this node needs against the signed plan's hashes and the graph
    checks (``cola_fed.edge.graph_check``) and cache them; graphs not needed are ignored."""
    needed = _graphs_needed(plan, partition_id)
    shipped = hello.graphs
    cache = _graph_cache(context)
    for name, digest in needed.items():
        if not cache.has(name, digest):
            if name not in shipped:
                raise ProtocolError(f"train-step graph {name!r} is listed but was not shipped")
            cache.put(name, bytes(shipped[name]), digest)
    return needed


def _graph_cache(context: Context) -> GraphCache:
    return GraphCache(context.node_config.get("graph-cache") or None)


def _file_cache(context: Context) -> TaskFileCache:
    """Task files live beside the graphs when the node config moves those (``graph-cache``)."""
    return TaskFileCache(context.node_config.get("graph-cache") or None)


def _receive_files(hello: Hello, plan: Plan, context: Context) -> None:
    """Check the task files the signed plan lists (the tokenizer) against their hashes and
    what they must be, and cache them; a file not listed is ignored."""
    cache = _file_cache(context)
    for name, digest in plan.files.items():
        if not cache.has(name, digest):
            if name not in hello.files:
                raise ProtocolError(f"task file {name!r} is listed but was not shipped")
            cache.put(name, bytes(hello.files[name]), digest)


def _new_learner(plan: Plan, partition_id: int, context: Context, backend: str,
                 graph_hashes: dict[str, str]) -> Any:
    """A fresh learner with the run's seeded initial adapters, on this node's backend."""
    options = {"seed": plan.adapter_seed(partition_id), "interval": plan.interval}
    if backend == "onnx":
        from cola_fed.edge.ort_learner import OrtLearner

        cache = _graph_cache(context)
        graphs = {name: cache.get(name, digest) for name, digest in graph_hashes.items()}
        threads = context.node_config.get("onnx-threads", 1)
        if not isinstance(threads, int) or not 1 <= threads <= 256:
            raise ConfigError(f"node config onnx-threads: expected 1 to 256, got {threads!r}")
        return OrtLearner(plan.layout, plan.specs_for(partition_id), plan.optimizer, graphs,
                          threads=threads, **options)
    from cola_fed.gl.learner import GradientLearner

    return GradientLearner(plan.layout, plan.specs_for(partition_id), optimizer=plan.optimizer,
                           **options)


@functools.lru_cache(maxsize=4)
def _cached_client_data(config: TaskConfig, files: tuple[tuple[str, str], ...],
                        cache_dir: str | None, allowed: frozenset[str], partition_id: int,
                        num_partitions: int) -> ClientData:
    task = get_task(config, allowed_paths=allowed)
    if set(task.node_files) - {name for name, _ in files}:
        raise ProtocolError(f"task {config.name!r} needs the files {list(task.node_files)}, "
                            f"but the plan lists {[name for name, _ in files]}")
    cache = TaskFileCache(cache_dir)
    task.files = {name: cache.path(name, digest) for name, digest in files}
    try:
        return task.client_data(partition_id, num_partitions)
    except ConfigError as err:
        # The reply's error travels in the clear and may quote the data (a label value, the
        # columns): the details stay in this node's log, the server learns the key only.
        log.error("this node's data does not fit the run's task: %s", err)
        key = str(err).split(":", 1)[0].split()[0] if ":" in str(err) else "task"
        raise ConfigError(f"{key}: this node's data does not fit the run's task (the node's "
                          "log says why)") from None


def _client_data(plan: Plan, context: Context, partition_id: int,
                 num_partitions: int) -> ClientData:
    """This node's data: all of the local file its node config names (``data-path``), else its
    partition of the simulation's data file (``$COLA_FED_DATA_PATH``, set by ``cola-fed
    simulate``) or of the task's bundled data. The path never comes from the server."""
    task = plan.task
    local = context.node_config.get("data-path")
    if local:
        task = dataclasses.replace(task, data_path=str(local))
        partition_id, num_partitions = 0, 1
    elif os.environ.get(DATA_PATH_ENV):
        task = dataclasses.replace(task, data_path=os.environ[DATA_PATH_ENV])
    skip = context.node_config.get("skip-invalid-rows",
                                   os.environ.get(SKIP_INVALID_ROWS_ENV) == "1")
    if not isinstance(skip, bool):
        raise ConfigError(f"node config skip-invalid-rows: expected true or false, got "
                          f"{skip!r}")
    task = dataclasses.replace(task, skip_invalid_rows=skip)
    return _cached_client_data(task, tuple(sorted(plan.files.items())),
                               context.node_config.get("graph-cache") or None,
                               node_allowed_paths(context.node_config), partition_id,
                               num_partitions)


def _draw(data: ClientData, plan: Plan, partition_id: int, start: int) -> list:
    """Batches ``start .. start + interval`` of this node's endless, seeded batch stream."""
    stream = data.batches(plan.task.batch_size, seed=plan.batch_seed(partition_id))
    for _ in range(start):
        next(stream)
    return [next(stream) for _ in range(plan.interval)]


def _numpy_state(state: dict) -> dict:
    """Adapter state as numpy arrays, from either learner (torch tensors or numpy arrays)."""
    return {layer: {p: t.detach().cpu().numpy() if hasattr(t, "detach") else t
                    for p, t in params.items()} for layer, params in state.items()}


def _bounded(sealed: bytes, caps: NodeCaps) -> bytes:
    """A reply no larger than the node's ``max-payload-mb``: a plan cannot make a node send
    more than it allows."""
    if len(sealed) > caps.max_payload_bytes:
        raise ProtocolError(f"the reply would be {len(sealed) / 1e6:.1f} MB, above this node's "
                            f"max-payload-mb = {caps.max_payload_mb}; refused")
    return sealed


def _raw_key(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def _save(context: Context, store: NodeStore | None, transcript: HelloTranscript,
          session: NodeSession, learners: dict[int, bytes]) -> None:
    """Keep the session and the learner of each state it lists, in ``context.state`` and, with
    a state directory, on disk (before the reply leaves: a node that dies after sending it
    still holds the state the server may take)."""
    for name in [n for n in context.state if n.startswith(LEARNER_PREFIX)]:
        del context.state[name]
    context.state[STATE_SESSION] = session.to_record()
    for number in session.states:
        context.state[learner_key(number)] = blob_to_record(learners[number])
    if store is not None:
        records = RecordDict({name: context.state[name] for name in context.state
                              if name != STATE_IDENTITY})
        store.save(records, transcript.identity, transcript.lineage)
