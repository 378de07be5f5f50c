"""Conformance vectors of the whole node: a real server and the real Python ONNX node through a
short session, message by message, so that a second node implementation can be held to the
Python node's bytes (issue 24: "a server cannot tell a JavaScript node from a Python ONNX node
except by speed").

The server side is the real ``ColaStrategy`` over ``LocalGrid`` (hello building, adaptation
data, TRAIN sealing), with its identity and hello id fixed; the node under test is node 1001
(partition 1 of 2, the only node connected) running ``cola_fed.federation.client``'s
``handle_hello`` / ``handle_train`` on the ONNX backend with its own digits CSV
(``data-path``), a state directory, a graph cache and a known-servers file that already
remembers the server. The node's randomness is fixed for the
vectors: its per-session X25519 key (``client.X25519PrivateKey.generate`` patched here, for
the vectors only) and its identity (``node-identity.key`` in its state directory).

Recorded: every server message to node 1001 (``steps``: hello, TRAIN round 1, TRAIN round 2,
each a RecordDict value by value) and the Python node's exact reply to each. Then, each run on
a fresh node that replayed the honest steps before it:

- ``hostile``: messages the Python node refuses, each with its error class, checked in Python
  to leave the node's state (its ``context.state`` and every file it wrote) unchanged and its
  next honest reply byte-equal to the honest run's;
- ``resume``: a restarted node (a fresh context over the same state directory) given the next
  TRAIN, a TRAIN that acknowledges an older state (the node's reply was lost), and a new hello
  after a restart (the node rejoins from the state it holds), each with the Python node's reply.

Byte strings of 1 KiB or more are stored once in ``blobs`` by SHA-256 (typed value ``blob``).
The digits task ships no tokenizer (``plan.files`` is empty): tokenizer swaps are covered by the
protocol vectors' hello cases, not here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from cola_fed.config import RunConfig
from cola_fed.federation import client
from cola_fed.federation.adversary import (
    RELAY_HELLO_REWRITES,
    replace_graphs,
    rewrite_transcript,
    set_in_plan,
)
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.protocol import (
    CLEAR,
    KIND_TRAIN,
    SEALED,
    Hello,
    HelloTranscript,
    Sealed,
    TrainOrder,
    open_bundle,
    seal_bundle,
)
from cola_fed.federation.records import blob_to_record, record_to_blob
from cola_fed.federation.server import build_strategy
from cola_fed.tasks.digits import load_digits
from cola_fed.wire import (
    ChannelState,
    DecodeBudget,
    SecureChannel,
    decode_adaptation,
    encode_adaptation,
    exchange_key_for_run,
    public_bytes,
    transcript_hash,
)
from cola_fed.wire.crypto import fingerprint
from cola_fed.wire.identity import KnownServers, save_identity, write_private_file

RUN_ID, NODE, OTHER_NODE = 4242, 1001, 1000
#: a resumed server's run (same lineage), and node 1001 restarted under a new node id
RESUMED_RUN, NEW_NODE = 4243, 1005
#: above any time.time_ns() until 2116: the strategy's hellos get ids HELLO_BASE + 1, + 2, ...
HELLO_BASE = 2**62
SERVER_SEED, OTHER_SERVER_SEED, RELAY_SEED = (bytes([b]) * 32 for b in (0x51, 0x52, 0x53))
NODE_KEY = bytes(range(1, 33))  # the node's per-session X25519 key (raw)
NODE_IDENTITY = bytes(range(101, 133))  # the node's long-term Ed25519 identity (seed)
#: the node's caps: 0.2 MB lets every honest payload through and makes an oversized one small
MAX_PAYLOAD_MB = 0.2
RUN_CONFIG = {"task.name": "digits", "task.batch-size": 16, "task.eval-batches": 2,
              "optimizer.lr": 0.01, "data.interval": 2, "edge.graphs": True,
              "wire.form": "parameter-gradient",
              "strategy.min-available-nodes": 1, "num-server-rounds": 2}

BLOBS: dict[str, str] = {}


# --------------------------------------------------------------------------------------------
# typed values and RecordDicts (as tests/conformance/protocol.py, with a blob table of our own)


def typed(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": value}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hexed(bytes(value))
    if isinstance(value, list):
        return {"t": "list", "v": [typed(v) for v in value]}
    raise TypeError(type(value))


def hexed(data: bytes) -> dict[str, Any]:
    """Bytes as a typed value: hex, or (1 KiB and more) a blob stored once by SHA-256."""
    if len(data) < 1024:
        return {"t": "bytes", "v": data.hex()}
    digest = hashlib.sha256(data).hexdigest()
    BLOBS[digest] = data.hex()
    return {"t": "blob", "v": digest}


def described(content: RecordDict) -> dict[str, Any]:
    """A RecordDict value by value: configs and metrics as typed values, arrays as Flower
    Arrays (dtype, shape, stype, data as a typed bytes value)."""
    return {
        "configs": {name: {k: typed(v) for k, v in record.items()}
                    for name, record in content.config_records.items()},
        "arrays": {name: {k: {"dtype": a.dtype, "shape": list(a.shape), "stype": a.stype,
                              "data": hexed(bytes(a.data))} for k, a in record.items()}
                   for name, record in content.array_records.items()},
        "metrics": {name: {k: typed(v) for k, v in record.items()}
                    for name, record in content.metric_records.items()},
    }


def copied(content: RecordDict) -> RecordDict:
    """A deep copy (a filter that edits a message must not edit the recorded one)."""
    from flwr.common import serde

    return serde.recorddict_from_proto(serde.recorddict_to_proto(content))


# --------------------------------------------------------------------------------------------
# the Python node under test


def write_digits_csv(path: Path, rows: np.ndarray) -> str:
    """The node's own digits CSV (tests/test_js_node.py's format): 64 pixel columns in [0, 1],
    then ``label``; the text is returned too (the JavaScript test reads it from memory)."""
    features, labels = load_digits()
    lines = [",".join([*(f"p{i}" for i in range(64)), "label"])]
    for row in rows:
        lines.append(",".join([*(repr(float(v)) for v in features[row]), str(int(labels[row]))]))
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


class PythonNode:
    """Node 1001's Python handlers over a folder of its own: state dir (with the fixed
    identity), graph cache, known-servers (remembering ``server``), and the CSV."""

    def __init__(self, folder: Path, csv_text: str, server_public: bytes) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data.csv").write_text(csv_text)
        state = folder / "state"
        state.mkdir(mode=0o700)
        write_private_file(state / "node-identity.key", NODE_IDENTITY, what="node identity")
        known = folder / "known-servers.json"
        KnownServers(known).check("default", server_public)
        self.config = {"partition-id": 1, "num-partitions": 2, "backend": "onnx",
                       "max-payload-mb": MAX_PAYLOAD_MB, "data-path": str(folder / "data.csv"),
                       "state-dir": str(state), "graph-cache": str(folder / "cache"),
                       "known-servers": str(known)}
        self.restart()

    def restart(self, changes: dict[str, Any] | None = None) -> None:
        """A new process (with node config ``changes``): Flower's contexts are empty, the
        folder is kept."""
        self.changes = dict(changes or {})
        self.contexts: dict[tuple[int, int], Context] = {}
        self.context = self.context_for(RUN_ID, NODE)

    def context_for(self, run_id: int, node_id: int) -> Context:
        """Flower's context of a run on this node (one per run and node id)."""
        if (run_id, node_id) not in self.contexts:
            self.contexts[run_id, node_id] = Context(run_id, node_id,
                                                     {**self.config, **self.changes},
                                                     RecordDict(), {})
        return self.contexts[run_id, node_id]

    def handle(self, kind: str, content: RecordDict, run_id: int = RUN_ID,
               node_id: int = NODE) -> RecordDict:
        """The reply content to a server message, or the handler's exception."""
        message = server_message(kind, copied(content), node_id)
        with fixed_node_key():
            handler = client.handle_hello if kind == "query" else client.handle_train
            return handler(message, self.context_for(run_id, node_id)).content

    def snapshot(self) -> dict[str, Any]:
        """Everything the node keeps: its context.state and the bytes of every file, but for
        its cache of verified graphs (:meth:`cached`)."""
        files = {str(p.relative_to(self.folder)): p.read_bytes()
                 for p in sorted(self.folder.rglob("*"))
                 if p.is_file() and p.parent.name != "cache"}
        states = {f"{run}/{node}": described(c.state) for (run, node), c in self.contexts.items()}
        return {"state": json.dumps(states, sort_keys=True), "files": files}

    def cached(self) -> list[str]:
        """The SHA-256 of every graph in the node's cache (each checked against the signed
        plan before it was stored)."""
        return sorted(p.stem for p in (self.folder / "cache").glob("*.onnx"))


@contextlib.contextmanager
def fixed_node_key() -> Iterator[None]:
    """The node's per-session X25519 key, fixed (for the vectors only)."""
    shim = SimpleNamespace(generate=lambda: X25519PrivateKey.from_private_bytes(NODE_KEY),
                           from_private_bytes=X25519PrivateKey.from_private_bytes)
    with mock.patch.object(client, "X25519PrivateKey", shim):
        yield


def server_message(kind: str, content: RecordDict, node_id: int = NODE) -> Message:
    message = Message(content, dst_node_id=node_id, group_id="0",
                      message_type=MessageType.QUERY if kind == "query" else MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "ab" * 32
    return message


def outcome(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except Exception as err:
        return type(err).__name__
    return "ok"


# --------------------------------------------------------------------------------------------
# the honest session, from the real server


def honest_session(tmp: Path, csv_text: str) -> tuple[list[dict[str, Any]], Any]:
    """hello, TRAIN 1, TRAIN 2 from the real strategy to node 1001 (a Python ONNX node), each
    with the node's reply content: [{"kind", "message", "reply"}], and the strategy."""
    key_path = tmp / "server-identity.pem"
    save_identity(Ed25519PrivateKey.from_private_bytes(SERVER_SEED), key_path)
    config = RunConfig.from_flat({**RUN_CONFIG, "wire.server-key": str(key_path)})
    strategy = build_strategy(config)
    strategy._hello_id = HELLO_BASE  # the hello ids are the clock's otherwise
    node = PythonNode(tmp / "honest", csv_text, public_bytes(strategy.identity))
    steps: list[dict[str, Any]] = []

    def recording(message: Message, context: Context) -> Message:
        kind = message.metadata.message_type
        sent = copied(message.content)
        reply = Message(node.handle(kind, message.content), reply_to=message)
        steps.append({"kind": kind, "message": sent, "reply": copied(reply.content)})
        return reply

    # node 1001 alone (partition 1 of 2): no other node shares the server's passes, and
    # nothing is written outside this folder (another node would trust on first use in $HOME)
    grid = LocalGrid(1, run_id=RUN_ID, handlers={NODE: recording})
    grid.contexts = {NODE: node.context}
    strategy.start(grid, num_rounds=2, timeout=30)
    assert [s["kind"] for s in steps] == ["query", "train", "train"], steps
    assert all(s.rounds_trained == 2 for s in strategy.sessions.values())
    return steps, strategy


# --------------------------------------------------------------------------------------------
# messages the server never sends: sealed with the run's real keys, by the real functions


class Forger:
    """Seals TRAIN orders as the server would (the run's exchange key, the node's public key,
    the hello transcript), at any counter; opens the honest ones."""

    def __init__(self, strategy: Any, transcript: bytes, node_id: int = NODE,
                 run_id: int = RUN_ID) -> None:
        self.exchange = exchange_key_for_run(strategy.identity, run_id)
        self.transcript = transcript
        self.node_id, self.run_id = node_id, run_id
        self.node_public = public_bytes(X25519PrivateKey.from_private_bytes(NODE_KEY))

    def seal(self, counter: int, order: TrainOrder, parts: dict[str, bytes], *,
             node_id: int | None = None) -> RecordDict:
        channel = SecureChannel(self.exchange, self.node_public, role="server",
                                run_id=self.run_id,
                                node_id=node_id or self.node_id,
                                transcript=transcript_hash(self.transcript),
                                state=ChannelState(sent=counter - 1))
        return Sealed(seal_bundle(channel, KIND_TRAIN, order, parts)).to_record()

    def open(self, counter: int, content: RecordDict) -> tuple[TrainOrder, dict[str, bytes]]:
        channel = SecureChannel(X25519PrivateKey.from_private_bytes(NODE_KEY),
                                public_bytes(self.exchange), role="node", run_id=self.run_id,
                                node_id=self.node_id, transcript=transcript_hash(self.transcript),
                                state=ChannelState(received=counter - 1))
        order, parts = open_bundle(channel, Sealed.from_record(content).sealed, KIND_TRAIN,
                                   TrainOrder)
        return order, {k: bytes(v) for k, v in parts.items()}


def with_sealed(content: RecordDict, edit: Callable[[bytes], bytes]) -> RecordDict:
    out = copied(content)
    out[SEALED] = blob_to_record(edit(bytes(record_to_blob(out[SEALED]))))
    return out


def stale(parts: dict[str, bytes], plan: Any) -> dict[str, bytes]:
    """Adaptation data whose parameter gradients claim other adapters (a digest changed)."""
    out = dict(parts)
    for name, data in parts.items():
        chunk = decode_adaptation(data, layout=plan.layout)
        if chunk.param_at:  # (the interval's parameter gradients travel in its first chunk)
            chunk.param_at = {n: "0" * 64 for n in chunk.param_at}
            out[name] = encode_adaptation(chunk, dtype=plan.wire_dtype)
    assert out != parts, "the run sends no parameter gradient: no stale digest to test"
    return out


def hostile_cases(steps: list[dict[str, Any]], strategy: Any
                  ) -> list[tuple[str, int, str, RecordDict, dict[str, Any]]]:
    """(name, honest steps handled before it, kind, content, node config changes): with
    changes, the node is restarted with them before the message (and restarted again with
    its own config after it)."""
    hello, train1, train2 = (s["message"] for s in steps)
    transcript = bytes(hello[CLEAR]["transcript"])
    plan = HelloTranscript.decode(transcript).plan
    forge = Forger(strategy, transcript)
    order1, parts1 = forge.open(1, train1)
    order2, parts2 = forge.open(2, train2)
    assert (order1.round, order1.acknowledged, order2.round, order2.acknowledged) == (1, 1, 2, 2)

    def relay(edit: Callable[[Message], Message]) -> RecordDict:
        return edit(server_message("query", copied(hello))).content

    relay_rewrites = {name: edit for name, edit in RELAY_HELLO_REWRITES.items()
                      if name != "re-signed by the relay's own key"}
    relay_rewrites["re-signed by the relay's own key"] = lambda m: rewrite_transcript(
        m, set_in_plan(["interval"], 2),
        resign_with=Ed25519PrivateKey.from_private_bytes(RELAY_SEED))
    graphs = dict(hello["graphs"])
    first = sorted(graphs)[0]
    evil = _relu_graph()
    other = Ed25519PrivateKey.from_private_bytes(OTHER_SERVER_SEED)
    decoded = HelloTranscript.decode(transcript)

    def resigned(identity: Ed25519PrivateKey, **changes: Any) -> RecordDict:
        return Hello.signed(identity, dataclasses.replace(
            decoded, identity=public_bytes(identity), **changes), graphs).to_record()

    rehello = resigned(strategy.identity, hello_id=decoded.hello_id + 1)
    cases: list[tuple[str, int, str, RecordDict]] = []
    # a hello rewritten on the way (the relay holds no server key)
    for name, edit in sorted(relay_rewrites.items()):
        cases.append((f"hello rewritten: {name}", 0, "query", relay(edit)))
    # an authentic hello that this node's own settings refuse
    configured = [
        ("hello from a server other than the pinned one", 0, "query", hello,
         {"server-key-fingerprint": fingerprint(public_bytes(other))}),
        ("hello asking beyond the node's max-interval", 0, "query", hello, {"max-interval": 1}),
        ("hello whose adapters alone exceed the node's max-payload-mb", 0, "query", hello,
         {"max-payload-mb": 0.01}),
        ("hello whose reply would exceed the node's max-payload-mb", 0, "query", hello,
         {"max-payload-mb": 0.02}),
        ("a newer hello to a node restarted with another partition-id", 1, "query", rehello,
         {"partition-id": 0}),
        _over_the_order_budget(forge, order1, parts1, plan),
    ]
    cases += [
        ("hello signed by another server key", 0, "query", resigned(other)),
        ("hello for another node", 0, "query", resigned(strategy.identity, node_id=OTHER_NODE)),
        ("hello graphs swapped", 0, "query",
         relay(lambda m: replace_graphs(m, {name: evil for name in graphs}))),
        ("hello graph modified", 0, "query", relay(lambda m: replace_graphs(
            m, {**graphs, first: bytes(graphs[first])[:-1] + b"\x00"}))),
        ("hello graph missing", 0, "query", relay(lambda m: replace_graphs(
            m, {k: v for k, v in graphs.items() if k != first}))),
        ("TRAIN before any hello", 0, "train", train1),
        ("hello replayed", 1, "query", hello),
        ("hello signed by another server key, after the session began", 1, "query",
         resigned(other, hello_id=decoded.hello_id + 1)),
        ("TRAIN sealed blob: bad magic", 1, "train",
         with_sealed(train1, lambda b: b"XXXX" + b[4:])),
        ("TRAIN sealed blob: too short", 1, "train", with_sealed(train1, lambda b: b[:20])),
        ("TRAIN sealed blob: a byte flipped", 1, "train",
         with_sealed(train1, lambda b: b[:-1] + bytes([b[-1] ^ 1]))),
        ("TRAIN sealed for another node", 1, "train",
         forge.seal(1, order1, parts1, node_id=OTHER_NODE)),
        ("TRAIN sealed under another hello", 1, "train",
         Forger(strategy, transcript + b" ").seal(1, order1, parts1)),
        ("TRAIN oversized (above max-payload-mb)", 1, "train",
         forge.seal(1, order1, {**parts1, "padding": bytes(int(MAX_PAYLOAD_MB * 1e6))})),
        ("TRAIN acknowledging a state the node does not hold", 1, "train",
         forge.seal(1, TrainOrder(1, 7, 1), parts1)),
        ("TRAIN with an extra adaptation part", 1, "train",
         forge.seal(1, TrainOrder(1, 1, 1), {**parts1, "adaptation2": parts1["adaptation0"]})),
        ("TRAIN missing an adaptation part", 1, "train",
         forge.seal(1, order1, {"adaptation0": parts1["adaptation0"]})),
        ("TRAIN with a stale parameter-gradient digest", 1, "train",
         forge.seal(1, order1, stale(parts1, plan))),
        ("TRAIN with a clear field added", 1, "train", _with_clear(train1)),
        ("TRAIN replayed", 2, "train", train1),
        ("TRAIN for an older round", 2, "train", forge.seal(2, TrainOrder(1, 2, 1), parts2)),
        ("TRAIN for the same round again", 2, "train", forge.seal(2, TrainOrder(1, 1, 1), parts1)),
        ("TRAIN with round 1's gradient (stale digest) for round 2", 2, "train",
         forge.seal(2, TrainOrder(2, 2, 1), parts1)),
    ]
    return [(*case, {}) for case in cases] + configured


def _over_the_order_budget(forge: Forger, order: TrainOrder, parts: dict[str, bytes],
                           plan: Any) -> tuple[str, int, str, RecordDict, dict[str, Any]]:
    """A TRAIN order whose chunks each fit the node's max-payload-mb decoded (and unfolded),
    but not all of them together (issue 22): round 1's parameter gradients in every chunk, in
    float16 on the wire (4 bytes a value decoded), the cap between one chunk and all."""
    first = next(data for data in parts.values()
                 if decode_adaptation(data, layout=plan.layout).param_at)
    half = encode_adaptation(decode_adaptation(first, layout=plan.layout), dtype="float16")
    budget = DecodeBudget(2**62)
    decode_adaptation(half, layout=plan.layout, budget=budget)
    chunk = budget.spent
    forged = {name: half for name in parts}
    cap = chunk * len(forged) - 1  # one byte short of the whole order
    megabytes = cap / 1e6
    assert int(megabytes * 1e6) == cap, cap
    content = forge.seal(1, order, forged)
    assert len(record_to_blob(content[SEALED])) <= cap and chunk <= cap
    return ("TRAIN whose chunks fit max-payload-mb one by one but not together", 1, "train",
            content, {"max-payload-mb": megabytes})


def _with_clear(content: RecordDict) -> RecordDict:
    out = copied(content)
    out[CLEAR] = ConfigRecord({"acknowledged": 0})
    return out


def _relu_graph() -> bytes:
    """A well-formed ONNX model that is not the train-step graph the plan lists."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]), producer_name="conformance")
    return model.SerializeToString()


# --------------------------------------------------------------------------------------------


def replayed(folder: Path, csv_text: str, server_public: bytes, steps: list[dict[str, Any]],
             upto: int) -> PythonNode:
    """A fresh node that handled the first ``upto`` honest steps (and checks its replies)."""
    node = PythonNode(folder, csv_text, server_public)
    for step in steps[:upto]:
        reply = node.handle(step["kind"], step["message"])
        assert described(reply) == described(step["reply"]), "the Python node is not deterministic"
    return node


def vectors() -> dict[str, Any]:
    logging.getLogger("cola_fed").setLevel(logging.ERROR)
    BLOBS.clear()
    client._cached_client_data.cache_clear()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        csv_text = write_digits_csv(tmp / "node.csv", np.arange(1, 400, 2))
        steps, strategy = honest_session(tmp, csv_text)
        server_public = public_bytes(strategy.identity)
        known_before = (tmp / "honest" / "known-servers.json").read_bytes()
        count = iter(range(10**6))

        def fresh(upto: int) -> PythonNode:
            return replayed(tmp / f"node{next(count)}", csv_text, server_public, steps, upto)

        hostile = []
        for case_name, at, kind, content, changes in hostile_cases(steps, strategy):
            node = fresh(at)
            if changes:
                node.restart(changes)
            before = node.snapshot()
            expect = outcome(lambda n=node, k=kind, c=content: n.handle(k, c))
            assert expect != "ok", case_name
            after_case = node.snapshot()
            if changes and kind == "train":
                # a restarted node takes its session back from its state dir before the order
                # is refused: its files, not its fresh context, are what must not change
                before, after_case = before["files"], after_case["files"]
            unchanged = after_case == before
            assert unchanged, f"{case_name}: the Python node's state changed"
            cached = node.cached()
            if changes:
                node.restart()
            after = steps[at]
            reply = node.handle(after["kind"], after["message"])
            assert described(reply) == described(after["reply"]), case_name
            hostile.append({"name": case_name, "at": at, "kind": kind,
                            "message": described(content), "expect": expect,
                            "config": {k: typed(v) for k, v in changes.items()},
                            "cached_after": cached})
        resume = resume_cases(fresh, steps, strategy)
    return {
        "run_id": str(RUN_ID), "node_id": str(NODE),
        "node_config": {"partition-id": typed(1), "num-partitions": typed(2),
                        "backend": typed("onnx"), "max-payload-mb": typed(MAX_PAYLOAD_MB),
                        "data-path": typed("data.csv")},
        "csv": csv_text, "node_key": NODE_KEY.hex(), "node_identity_seed": NODE_IDENTITY.hex(),
        "server_identity": server_public.hex(), "known_servers": known_before.decode(),
        "task_files": "none: the digits task ships no tokenizer (plan.files is empty)",
        "steps": [{"kind": s["kind"], "message": described(s["message"]),
                   "reply": described(s["reply"])} for s in steps],
        "hostile": hostile, "resume": resume, "blobs": dict(BLOBS),
    }


def resume_cases(fresh: Callable[[int], PythonNode], steps: list[dict[str, Any]],
                 strategy: Any) -> list[dict[str, Any]]:
    """A node restarted (a fresh context over the same state directory) before a message, and
    messages of a server that lost the node's reply or that the node rejoins: each as
    [(kind, message, reply, restart before it, run id, node id)], after ``at`` honest
    steps."""
    hello, train1, train2 = (s["message"] for s in steps)
    transcript = bytes(hello[CLEAR]["transcript"])
    forge = Forger(strategy, transcript)
    _, parts1 = forge.open(1, train1)
    _, parts2 = forge.open(2, train2)
    decoded = HelloTranscript.decode(transcript)
    rehello = Hello.signed(strategy.identity, dataclasses.replace(
        decoded, hello_id=decoded.hello_id + 1), dict(hello["graphs"])).to_record()
    rejoined = Forger(strategy, bytes(rehello[CLEAR]["transcript"]))
    lost = forge.seal(2, TrainOrder(2, 1, 1), parts1)  # the round-1 reply never arrived
    # node 1001 restarted and registered anew: the server says hello to its new node id
    renamed = Hello.signed(strategy.identity, dataclasses.replace(
        decoded, node_id=NEW_NODE, hello_id=decoded.hello_id + 2), dict(hello["graphs"]))
    renamed_forge = Forger(strategy, renamed.transcript, node_id=NEW_NODE)
    # the server resumed from its checkpoint as a new run of the same lineage
    resumed = Hello.signed(strategy.identity, dataclasses.replace(
        decoded, run_id=RESUMED_RUN, hello_id=decoded.hello_id + 3,
        exchange_key=public_bytes(exchange_key_for_run(strategy.identity, RESUMED_RUN))),
        dict(hello["graphs"]))
    resumed_forge = Forger(strategy, resumed.transcript, run_id=RESUMED_RUN)
    ids = (RUN_ID, NODE)
    scenarios = {
        "restart before TRAIN 1": (1, [("train", train1, True, ids)]),
        "restart before TRAIN 2": (2, [("train", train2, True, ids)]),
        "TRAIN 2 acknowledging state #1 (the node's reply was lost)": (
            2, [("train", lost, False, ids)]),
        "restart, then TRAIN 2 acknowledging state #1": (2, [("train", lost, True, ids)]),
        "restart, a newer hello (the node rejoins), then TRAIN 2 in the new session": (
            2, [("query", rehello, True, ids),
                ("train", rejoined.seal(1, TrainOrder(2, 2, 2), parts2), False, ids)]),
        "restart under a new node id: its hello finds the state, then TRAIN 2": (
            2, [("query", renamed.to_record(), True, (RUN_ID, NEW_NODE)),
                ("train", renamed_forge.seal(1, TrainOrder(2, 2, 2), parts2), False,
                 (RUN_ID, NEW_NODE))]),
        "the server resumed as a new run of the same lineage: hello, then TRAIN 2": (
            2, [("query", resumed.to_record(), False, (RESUMED_RUN, NODE)),
                ("train", resumed_forge.seal(1, TrainOrder(2, 2, 2), parts2), False,
                 (RESUMED_RUN, NODE))]),
    }
    out = []
    for name, (at, messages) in scenarios.items():
        node = fresh(at)
        recorded = []
        for kind, content, restart, (run_id, node_id) in messages:
            if restart:
                node.restart()
            reply = node.handle(kind, content, run_id, node_id)
            recorded.append({"kind": kind, "restart": restart, "run_id": str(run_id),
                             "node_id": str(node_id), "message": described(content),
                             "reply": described(reply)})
        out.append({"name": name, "at": at, "messages": recorded})
    # a restart changes nothing: the restarted node's replies are the honest ones
    assert out[0]["messages"][0]["reply"] == described(steps[1]["reply"])
    assert out[1]["messages"][0]["reply"] == described(steps[2]["reply"])
    assert out[2]["messages"][0]["reply"] == out[3]["messages"][0]["reply"]
    return out
