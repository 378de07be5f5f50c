"""A node's side of the round protocol: keys, learner and data, kept in Flower's context.state.

Nothing here imports torch: a node trains either with PyTorch (``GradientLearner``) or with ONNX
Runtime (``OrtLearner``, from the train-step graphs the server ships at hello). Node config
(local settings; none of them ever comes from the wire):

- ``partition-id``, ``num-partitions``: this node's share of the task's data;
- ``data-path``: a local data file that replaces the partition;
- ``server-key-fingerprint``: the server identity to pin; without it the node trusts the first
  identity it sees for ``federation`` (default ``default``) and remembers it in
  ``known-servers`` (default ``$COLA_FED_HOME/known-servers.json``);
- ``backend``: ``torch``, ``onnx`` or ``auto`` (default: the run's choice for this partition,
  else torch when it is installed, else onnx);
- ``graph-cache``: where verified graphs are kept (default ``~/.cache/cola-fed/graphs``);
- ``onnx-threads``: ONNX Runtime intra-op threads (default 1);
- caps on what the server may ask (``max-interval``, ``max-batch-size``, ``max-length``,
  ``max-eval-batches``, ``max-layers``, ``max-width``, ``max-payload-mb``; see
  :class:`cola_fed.federation.protocol.NodeCaps`).

Every message is handled the same way: restore the session from ``context.state``, check and
decode what came (strictly; a bad message changes nothing), act, seal the reply, save the
session.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import logging
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import Context, Message

from cola_fed.config import TaskConfig
from cola_fed.edge.cache import GraphCache
from cola_fed.edge.graphs import graph_keys
from cola_fed.errors import ConfigError, ProtocolError, ReplayError
from cola_fed.federation.protocol import (
    KIND_HELLO,
    KIND_TRAIN,
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
    open_bundle,
    seal_bundle,
)
from cola_fed.federation.records import blob_to_record, record_to_blob
from cola_fed.tasks.base import ClientData, get_task
from cola_fed.wire import (
    ChannelState,
    SecureChannel,
    decode_adaptation,
    encode_adapter_state,
    encode_batch,
    public_bytes,
    transcript_hash,
    verify_transcript,
)
from cola_fed.wire.identity import KnownServers

log = logging.getLogger("cola_fed")

STATE_SESSION = "cola-session"  # ConfigRecord: NodeSession
STATE_LEARNER = "cola-learner"  # ArrayRecord: the learner's latest state, as one blob
# the learner as the server last saw it: restored when the server did not get the latest reply
STATE_LEARNER_ACKED = "cola-learner-acked"


#: every node config key cola-fed reads (others may belong to other apps of the SuperNode)
NODE_CONFIG_KEYS = ("partition-id", "num-partitions", "data-path", "server-key-fingerprint",
                    "federation", "known-servers", "backend", "graph-cache", "onnx-threads",
                    *NodeCaps.keys())


def check_node_config(node_config: dict) -> None:
    """Refuse a node config key that looks like a misspelt cola-fed key: a silently ignored
    ``server_key_fingerprint`` would turn pinning off."""
    for key in node_config:
        if key in NODE_CONFIG_KEYS:
            continue
        close = difflib.get_close_matches(str(key).replace("_", "-").lower(), NODE_CONFIG_KEYS,
                                          n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"node config {key!r} is not a cola-fed key; did you mean "
                              f"{close[0]!r}? (docs/configuration.md lists them)")


def handle_hello(msg: Message, context: Context) -> Message:
    """Round 0: check the server's signed hello, then build the learner and send the first
    adapters and batches. Nothing is read, run or sent before the hello is checked."""
    check_node_config(context.node_config)
    caps = NodeCaps.from_node_config(context.node_config)
    hello = Hello.from_record(msg.content)
    transcript = _checked_hello(hello, context, caps)
    plan = transcript.plan
    partition_id, num_partitions = _partition(context)
    backend = _choose_backend(context, plan, partition_id)
    graph_hashes = _receive_graphs(hello, context, plan, partition_id) if backend == "onnx" else {}

    key = X25519PrivateKey.generate()
    channel = SecureChannel(key, transcript.exchange_key, role="node", run_id=context.run_id,
                            node_id=context.node_id,
                            transcript=transcript_hash(hello.transcript))
    learner = _new_learner(plan, partition_id, context, backend, graph_hashes)
    data = _client_data(plan, context, partition_id, num_partitions)
    parts = {PART_ADAPTERS: encode_adapter_state(_numpy_state(learner.adapter_state()))}
    if plan.data_mode == "upload":  # the whole training split, once
        batches = []
        parts[PART_TRAIN] = encode_batch(data.train)
    else:
        batches = _draw(data, plan, partition_id, start=0)
        parts.update({batch_part(i): encode_batch(b) for i, b in enumerate(batches)})
    parts.update({eval_part(i): encode_batch(b) for i, b in enumerate(data.eval_batches)})
    claim = HelloClaim(partition_id=partition_id, num_examples=data.num_examples,
                       backend=backend)
    sealed = _bounded(seal_bundle(channel, KIND_HELLO, claim, parts), caps)

    blob = learner.to_bytes()
    session = NodeSession(node_key=_raw_key(key), transcript=hello.transcript,
                          partition_id=partition_id, backend=backend, sent=channel.state.sent,
                          received=channel.state.received, drawn=len(batches),
                          drawn_acked=len(batches), acked=channel.state.sent)
    _save(context, session, learner=blob, learner_acked=blob)
    log.info("hello: partition %d joins on the %s backend", partition_id, backend)
    return Message(HelloReply(public_bytes(key), sealed).to_record(), reply_to=msg)


def handle_train(msg: Message, context: Context) -> Message:
    """Round t: learn from the adaptation data, send new adapters and the next batches."""
    if STATE_SESSION not in context.state:
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
    if order.acknowledged not in (session.sent, session.acked):
        raise ProtocolError(f"the server acknowledges message #{order.acknowledged}; this node "
                            f"holds the states of #{session.sent} and #{session.acked}")
    names = [adaptation_part(i) for i in range(plan.interval)]
    expect_parts(parts, names, "a TRAIN order")
    chunks = [decode_adaptation(parts.pop(name), layout=plan.layout, limits=limits)
              for name in names]
    del parts  # the encoded parts: on a small device, memory for one copy of the data only
    # The server's adaptation data was computed at the adapters it last received. If it did not
    # receive our latest reply (dropped, or refused), roll back to the state it did see, so the
    # step and the batch stream stay consistent with the server and no batch is skipped.
    acknowledged = order.acknowledged == session.sent
    base = STATE_LEARNER if acknowledged else STATE_LEARNER_ACKED
    drawn = session.drawn if acknowledged else session.drawn_acked
    if not acknowledged:
        log.warning("round %d: the server did not take this node's last reply (lost, or "
                    "refused: its log says which); resuming from the state it holds",
                    order.round)
    base_blob = record_to_blob(context.state[base])
    graph_hashes = _graphs_needed(plan, session.partition_id) if session.backend == "onnx" else {}
    learner = _new_learner(plan, session.partition_id, context, session.backend, graph_hashes)
    learner.load_bytes(base_blob)
    metrics: dict[str, float] = {}
    for chunk in chunks:
        metrics = learner.fit(chunk)

    batches = []
    if plan.data_mode == "stream":
        data = _client_data(plan, context, session.partition_id, _partition(context)[1])
        batches = _draw(data, plan, session.partition_id, start=drawn)
    parts = {PART_ADAPTERS: encode_adapter_state(_numpy_state(learner.adapter_state()))}
    parts.update({batch_part(i): encode_batch(b) for i, b in enumerate(batches)})
    report = TrainReport(round=order.round,
                         loss=sum(chunk.loss for chunk in chunks) / len(chunks),
                         num_examples=sum(chunk.num_samples for chunk in chunks),
                         grad_norm=float(metrics.get("grad_norm", 0.0)), step=learner.step)
    sealed = _bounded(seal_bundle(channel, KIND_TRAIN, report, parts), caps)
    session.sent, session.received = channel.state.sent, channel.state.received
    session.last_round, session.drawn, session.drawn_acked = (order.round, drawn + len(batches),
                                                              drawn)
    session.acked = order.acknowledged
    _save(context, session, learner=learner.to_bytes(), learner_acked=base_blob)
    return Message(Sealed(sealed).to_record(), reply_to=msg)


# --------------------------------------------------------------------------------------------
# the hello, checked before anything is acted on


def _checked_hello(hello: Hello, context: Context, caps: NodeCaps) -> HelloTranscript:
    """The hello's transcript, once its signature holds under a server identity this node pins
    or remembers, it is for this run and node, it is newer than any hello accepted before (a
    replayed hello does not reset the session), and its plan is within this node's caps."""
    verify_transcript(hello.identity, hello.transcript, hello.signature)
    transcript = HelloTranscript.decode(hello.transcript)
    if transcript.identity != hello.identity:
        raise ProtocolError("the hello's transcript names another server identity")
    if (transcript.run_id, transcript.node_id) != (context.run_id, context.node_id):
        raise ProtocolError(f"a hello for run {transcript.run_id} and node {transcript.node_id} "
                            f"reached node {context.node_id} of run {context.run_id}")
    config = context.node_config  # only a hello fit to act on teaches trust on first use
    pinned = config.get("server-key-fingerprint") or None
    KnownServers(config.get("known-servers") or None).check(
        str(config.get("federation") or "default"), hello.identity, pinned=pinned)
    if STATE_SESSION in context.state:
        previous = HelloTranscript.decode(
            NodeSession.from_record(context.state[STATE_SESSION]).transcript)
        if previous.identity != transcript.identity or transcript.hello_id <= previous.hello_id:
            raise ReplayError("a second hello for this run that is not a newer one from the same "
                              "server; the session is kept")
    caps.check(transcript.plan, _partition(context)[0])
    return transcript


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
    lists them."""
    needed = graph_keys(plan.layout, [plan.specs_for(partition_id)], plan.optimizer)
    missing = sorted(set(needed) - set(plan.graphs))
    if missing:
        raise ProtocolError(f"this node trains on ONNX Runtime, but the server lists no "
                            f"train-step graph {missing}; run the server with edge.graphs = "
                            "true, or install PyTorch on this node")
    return {name: plan.graphs[name] for name in needed}


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
def _cached_client_data(task: TaskConfig, partition_id: int, num_partitions: int) -> ClientData:
    return get_task(task).client_data(partition_id, num_partitions)


def _client_data(plan: Plan, context: Context, partition_id: int,
                 num_partitions: int) -> ClientData:
    """This node's data: its partition of the task's bundled data, or, when the node config
    names a ``data-path``, all of that local file. The path never comes from the server."""
    task = plan.task
    local = context.node_config.get("data-path")
    if local:
        task = dataclasses.replace(task, data_path=str(local))
        partition_id, num_partitions = 0, 1
    return _cached_client_data(task, partition_id, num_partitions)


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


def _save(context: Context, session: NodeSession, *, learner: bytes,
          learner_acked: bytes) -> None:
    context.state[STATE_SESSION] = session.to_record()
    context.state[STATE_LEARNER] = blob_to_record(learner)
    context.state[STATE_LEARNER_ACKED] = blob_to_record(learner_acked)
