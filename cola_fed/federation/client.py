"""A node's side of the round protocol: keys, learner and data, kept in Flower's context.state.

Nothing here imports torch: a node trains either with PyTorch (``GradientLearner``) or with ONNX
Runtime (``OrtLearner``, from the train-step graphs the server ships at hello). Node config:

- ``partition-id``, ``num-partitions``: this node's share of the task's data;
- ``backend``: ``torch``, ``onnx`` or ``auto`` (default: the run's ``edge.backends`` choice, else
  torch when it is installed, else onnx);
- ``graph-cache``: where verified graphs are kept (default ``~/.cache/cola-fed/graphs``);
- ``onnx-threads``: ONNX Runtime intra-op threads (default 1);
- ``data-path``, ``server-key-fingerprint``: see docs/deployment.md.

Every message is handled the same way: restore the session from ``context.state``, open and
decode what came (strictly; a bad payload changes nothing), act, seal the reply, save the
session.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from cola_fed.config import TaskConfig
from cola_fed.edge.cache import GraphCache
from cola_fed.edge.graphs import graph_keys
from cola_fed.errors import ConfigError, ProtocolError
from cola_fed.federation.protocol import (
    CLEAR,
    GRAPHS,
    KIND_HELLO,
    KIND_TRAIN,
    METRICS,
    SEALED,
    RunSpec,
)
from cola_fed.federation.records import blob_to_record, record_to_blob
from cola_fed.tasks.base import ClientData, get_task
from cola_fed.wire import (
    ChannelState,
    SecureChannel,
    check_pinned,
    decode_adaptation,
    decode_bundle,
    encode_adapter_state,
    encode_batch,
    encode_bundle,
    public_bytes,
)
from cola_fed.wire.crypto import PROTOCOL_VERSION

log = logging.getLogger("cola_fed")

STATE_SESSION = "cola-session"  # ConfigRecord: key, run spec, counters, cursor
STATE_LEARNER = "cola-learner"  # ArrayRecord: the learner's latest state, as one blob
# the learner as the server last saw it: restored when the server did not get the latest reply
STATE_LEARNER_ACKED = "cola-learner-acked"


def handle_hello(msg: Message, context: Context) -> Message:
    """Round 0: agree on keys, build the learner, send the first adapters and batches."""
    clear = msg.content[CLEAR]
    if int(clear["protocol-version"]) != PROTOCOL_VERSION:
        raise ProtocolError(f"server speaks protocol {clear['protocol-version']}, this node "
                            f"{PROTOCOL_VERSION}")
    server_public = bytes(clear["server-public-key"])
    check_pinned(server_public, context.node_config.get("server-key-fingerprint"))
    spec = RunSpec.from_json(str(clear["run-spec"]))
    partition_id, num_partitions = _partition(context)
    backend = _choose_backend(context, spec, partition_id)
    graph_hashes = _receive_graphs(msg, context, spec, partition_id) if backend == "onnx" else {}

    key = X25519PrivateKey.generate()
    channel = SecureChannel(key, server_public, role="node", run_id=context.run_id,
                            node_id=context.node_id)
    learner = _new_learner(spec, partition_id, context, backend, graph_hashes)
    data = _client_data(spec, context, partition_id, num_partitions)
    parts = {"adapters": encode_adapter_state(_numpy_state(learner.adapter_state()))}
    if spec.data_mode == "upload":  # the whole training split, once
        batches = []
        parts["train"] = encode_batch(data.train)
    else:
        batches = _draw(data, spec, partition_id, start=0)
        parts.update({f"batch{i}": encode_batch(b) for i, b in enumerate(batches)})
    parts.update({f"eval{i}": encode_batch(b) for i, b in enumerate(data.eval_batches)})
    sealed = channel.seal(encode_bundle(parts), round=0, kind=KIND_HELLO)

    blob = learner.to_bytes()
    _save(context, key, server_public, spec, channel.state, drawn=len(batches),
          drawn_acked=len(batches), learner=blob, learner_acked=blob, backend=backend,
          graph_hashes=graph_hashes)
    log.info("hello: partition %d joins on the %s backend", partition_id, backend)
    reply = RecordDict({
        CLEAR: ConfigRecord({
            "node-public-key": public_bytes(key),
            "partition-id": partition_id,
            "backend": backend,
            "num-examples": data.num_examples,
        }),
        SEALED: blob_to_record(sealed),
    })
    return Message(reply, reply_to=msg)


def handle_train(msg: Message, context: Context) -> Message:
    """Round t: learn from the adaptation data, send new adapters and the next batches."""
    if STATE_SESSION not in context.state:
        raise ProtocolError("TRAIN before hello: this node has no session for the run")
    server_round = int(msg.content[CLEAR]["server-round"])
    session = context.state[STATE_SESSION]
    spec = RunSpec.from_json(str(session["run-spec"]))
    key = X25519PrivateKey.from_private_bytes(bytes(session["node-key"]))
    state = ChannelState(int(session["sent"]), int(session["received"]),
                         int(session["last-round"]))
    channel = SecureChannel(key, bytes(session["server-public-key"]), role="node",
                            run_id=context.run_id, node_id=context.node_id, state=state)
    partition_id, num_partitions = _partition(context)

    # Open and decode everything before touching the learner: a bad payload changes nothing.
    bundle = decode_bundle(channel.open(record_to_blob(msg.content[SEALED]), round=server_round,
                                        kind=KIND_TRAIN))
    chunks = [decode_adaptation(bundle.pop(f"adaptation{i}"), layout=spec.layout)
              for i in range(len(bundle))]
    del bundle  # the encoded parts: on a small device, memory for one copy of the data only
    # The server's adaptation data was computed at the adapters it last received. If it did not
    # receive our latest reply (dropped, or refused), roll back to the state it did see, so the
    # step and the batch stream stay consistent with the server and no batch is skipped.
    acknowledged = int(msg.content[CLEAR]["acknowledged"]) == int(session["sent"])
    base = STATE_LEARNER if acknowledged else STATE_LEARNER_ACKED
    drawn = int(session["drawn"] if acknowledged else session["drawn-acked"])
    if not acknowledged:
        log.warning("round %d: the server did not get this node's last reply; resuming from "
                    "the state it did get", server_round)
    base_blob = record_to_blob(context.state[base])
    backend, graph_hashes = str(session["backend"]), json.loads(str(session["graph-hashes"]))
    learner = _new_learner(spec, partition_id, context, backend, graph_hashes)
    learner.load_bytes(base_blob)
    metrics: dict[str, float] = {}
    for chunk in chunks:
        metrics = learner.fit(chunk)

    batches = []
    if spec.data_mode == "stream":
        data = _client_data(spec, context, partition_id, num_partitions)
        batches = _draw(data, spec, partition_id, start=drawn)
    parts = {"adapters": encode_adapter_state(_numpy_state(learner.adapter_state()))}
    parts.update({f"batch{i}": encode_batch(b) for i, b in enumerate(batches)})
    sealed = channel.seal(encode_bundle(parts), round=server_round, kind=KIND_TRAIN)
    _save(context, key, bytes(session["server-public-key"]), spec, channel.state,
          drawn=drawn + len(batches), drawn_acked=drawn, learner=learner.to_bytes(),
          learner_acked=base_blob, backend=backend, graph_hashes=graph_hashes)
    loss = sum(chunk.loss for chunk in chunks) / len(chunks)
    reply = RecordDict({
        SEALED: blob_to_record(sealed),
        METRICS: MetricRecord({
            "num-examples": sum(chunk.num_samples for chunk in chunks),
            "loss": loss,
            "grad-norm": float(metrics.get("grad_norm", 0.0)),
            "step": learner.step,
        }),
    })
    return Message(reply, reply_to=msg)


# --------------------------------------------------------------------------------------------


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ProtocolError(
            f"node config lacks {err}; start the SuperNode with --node-config "
            "\"partition-id=<i> num-partitions=<n>\""
        ) from None


def _choose_backend(context: Context, spec: RunSpec, partition_id: int) -> str:
    """``torch`` or ``onnx``: the node config's ``backend``, else the run's choice for this
    partition, else torch when it is installed."""
    wanted = str(context.node_config.get("backend") or spec.backend_for(partition_id) or "auto")
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


def _receive_graphs(msg: Message, context: Context, spec: RunSpec,
                    partition_id: int) -> dict[str, str]:
    """Check the shipped train-step graphs this node needs against their listed hashes and
    cache them; returns ``name -> sha256`` of the graphs the node will use."""
    listed = json.loads(str(msg.content[CLEAR].get("graph-hashes", "{}")))
    needed = graph_keys(spec.layout, [spec.specs_for(partition_id)], spec.optimizer)
    missing = sorted(set(needed) - set(listed))
    if missing:
        raise ProtocolError(f"this node trains on ONNX Runtime, but the server shipped no "
                            f"train-step graph {missing}; run the server with edge.graphs = "
                            "true, or install PyTorch on this node")
    shipped = msg.content.config_records.get(GRAPHS, ConfigRecord())
    cache = _graph_cache(context)
    for name in needed:
        if not cache.has(name, listed[name]):
            if name not in shipped:
                raise ProtocolError(f"train-step graph {name!r} is listed but was not shipped")
            cache.put(name, bytes(shipped[name]), listed[name])
    return {name: listed[name] for name in needed}


def _graph_cache(context: Context) -> GraphCache:
    return GraphCache(context.node_config.get("graph-cache") or None)


def _new_learner(spec: RunSpec, partition_id: int, context: Context, backend: str,
                 graph_hashes: dict[str, str]) -> Any:
    """A fresh learner with the run's seeded initial adapters, on this node's backend."""
    options = {"seed": spec.task.seed + partition_id, "interval": spec.interval}
    if backend == "onnx":
        from cola_fed.edge.ort_learner import OrtLearner

        cache = _graph_cache(context)
        graphs = {name: cache.get(name, digest) for name, digest in graph_hashes.items()}
        return OrtLearner(spec.layout, spec.specs_for(partition_id), spec.optimizer, graphs,
                          threads=int(context.node_config.get("onnx-threads", 1)), **options)
    from cola_fed.gl.learner import GradientLearner

    return GradientLearner(spec.layout, spec.specs_for(partition_id), optimizer=spec.optimizer,
                           **options)


@functools.lru_cache(maxsize=4)
def _cached_client_data(task_json: str, partition_id: int, num_partitions: int) -> ClientData:
    return get_task(TaskConfig(**json.loads(task_json))).client_data(partition_id, num_partitions)


def _client_data(spec: RunSpec, context: Context, partition_id: int,
                 num_partitions: int) -> ClientData:
    """This node's data: its partition of the task's data, or, when the node config names a
    ``data-path``, all of that local file."""
    task = dict(vars(spec.task))
    local = context.node_config.get("data-path")
    if local:
        task["data_path"], partition_id, num_partitions = str(local), 0, 1
    return _cached_client_data(json.dumps(task, sort_keys=True), partition_id, num_partitions)


def _draw(data: ClientData, spec: RunSpec, partition_id: int, start: int) -> list:
    """Batches ``start .. start + interval`` of this node's endless, seeded batch stream."""
    stream = data.batches(spec.task.batch_size, seed=spec.batch_seed(partition_id))
    for _ in range(start):
        next(stream)
    return [next(stream) for _ in range(spec.interval)]


def _numpy_state(state: dict) -> dict:
    """Adapter state as numpy arrays, from either learner (torch tensors or numpy arrays)."""
    return {layer: {p: t.detach().cpu().numpy() if hasattr(t, "detach") else t
                    for p, t in params.items()} for layer, params in state.items()}


def _save(context: Context, key: X25519PrivateKey, server_public: bytes, spec: RunSpec,
          channel: ChannelState, *, drawn: int, drawn_acked: int, learner: bytes,
          learner_acked: bytes, backend: str, graph_hashes: dict[str, str]) -> None:
    from cryptography.hazmat.primitives import serialization

    raw_key = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    context.state[STATE_SESSION] = ConfigRecord({
        "node-key": raw_key,
        "server-public-key": server_public,
        "run-spec": spec.to_json(),
        "sent": channel.sent,
        "received": channel.received,
        "last-round": channel.last_round,
        "drawn": drawn,
        "drawn-acked": drawn_acked,
        "backend": backend,
        "graph-hashes": json.dumps(graph_hashes),
    })
    context.state[STATE_LEARNER] = blob_to_record(learner)
    context.state[STATE_LEARNER_ACKED] = blob_to_record(learner_acked)
