"""Hostile peers for trying the trust boundary: a node with valid keys that rewrites what it
seals, and relay rewrites of what travels between server and node. For tests and
``benchmarks.hostile``; nothing in a run uses it.

A hostile node runs the real client handler, then opens its own sealed reply with its own
session keys, changes the bundle, and seals it again under the same counter: the server receives
an authentic reply whose content is hostile, exactly what a modified client could send.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flwr.app import ConfigRecord, Context, Message, MessageType

from cola_fed.federation.client import STATE_SESSION, handle_hello, handle_train
from cola_fed.federation.protocol import (
    CLEAR,
    GRAPHS,
    KIND_HELLO,
    KIND_TRAIN,
    SEALED,
    HelloTranscript,
    NodeSession,
)
from cola_fed.federation.records import blob_to_record, record_to_blob
from cola_fed.wire import (
    decode_adapter_state,
    decode_batch,
    decode_bundle,
    encode_adapter_state,
    encode_batch,
    encode_bundle,
    public_bytes,
    sign_transcript,
    transcript_hash,
)
from cola_fed.wire.crypto import (
    MAGIC,
    NODE_TO_SERVER,
    PROTOCOL_VERSION,
    associated_data,
    derive_keys,
)

#: ``parts -> parts``: rewrites the named payloads of a sealed bundle (``control`` included)
Rewrite = Callable[[dict[str, bytes]], dict[str, bytes]]


def reseal(reply: Message, context: Context, rewrite: Rewrite) -> Message:
    """The node's own sealed reply, opened with its session keys, rewritten and sealed again
    under the same counter: authentic, and hostile."""
    session = NodeSession.from_record(context.state[STATE_SESSION])
    transcript = HelloTranscript.decode(session.transcript)
    key = X25519PrivateKey.from_private_bytes(session.node_key)
    shared = key.exchange(X25519PublicKey.from_public_bytes(transcript.exchange_key))
    aes = AESGCM(derive_keys(shared, run_id=context.run_id, node_id=context.node_id,
                             transcript=transcript_hash(session.transcript))[NODE_TO_SERVER])
    envelope = bytes(record_to_blob(reply.content[SEALED]))
    counter = int.from_bytes(envelope[4:12], "big")
    kind = KIND_HELLO if reply.metadata.message_type == MessageType.QUERY else KIND_TRAIN
    aad = associated_data(version=PROTOCOL_VERSION, run_id=context.run_id,
                          node_id=context.node_id, counter=counter, direction=NODE_TO_SERVER,
                          kind=kind)
    nonce = bytes(4) + counter.to_bytes(8, "big")
    parts = {k: bytes(v) for k, v in decode_bundle(aes.decrypt(nonce, envelope[12:], aad)).items()}
    sealed = aes.encrypt(nonce, encode_bundle(rewrite(parts)), aad)
    reply.content[SEALED] = blob_to_record(MAGIC + counter.to_bytes(8, "big") + sealed)
    return reply


def hostile_node(rewrite: Rewrite, *, on: str = "train",
                 rounds: Callable[[int], bool] = lambda n: True
                 ) -> Callable[[Message, Context], Message]:
    """A node handler that rewrites its sealed replies: at hello (``on="hello"``), in TRAIN
    rounds (``"train"``) or both (``"both"``); ``rounds(n)`` picks which TRAIN replies (the
    n-th, from 1)."""
    seen = {"train": 0}

    def handle(msg: Message, context: Context) -> Message:
        hello = msg.metadata.message_type == MessageType.QUERY
        reply = (handle_hello if hello else handle_train)(msg, context)
        if not hello:
            seen["train"] += 1
        wanted = on in ("both", "hello") if hello else (
            on in ("both", "train") and rounds(seen["train"]))
        return reseal(reply, context, rewrite) if wanted and not reply.has_error() else reply

    return handle


def rewrite_transcript(msg: Message, edit: Callable[[dict], dict], *,
                       resign_with: Ed25519PrivateKey | None = None) -> Message:
    """A relay's rewrite of a hello: the transcript JSON edited, and signed again with
    ``resign_with`` (an attacker's own identity key, also put in the clear) or left with the
    server's signature."""
    clear = msg.content[CLEAR]
    raw = edit(json.loads(bytes(clear["transcript"])))
    identity, signature = clear["identity"], clear["signature"]
    if resign_with is not None:
        identity = public_bytes(resign_with)
        raw["identity"] = identity.hex()
    data = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    if resign_with is not None:
        signature = sign_transcript(resign_with, data)
    msg.content[CLEAR] = ConfigRecord({"identity": identity, "transcript": data,
                                       "signature": signature})
    return msg


def replace_graphs(msg: Message, graphs: dict[str, bytes]) -> Message:
    """A relay's rewrite of the graphs a hello ships."""
    msg.content[GRAPHS] = ConfigRecord(graphs)
    return msg


# --------------------------------------------------------------------------------------------
# classes of attack, shared by the tests and ``benchmarks.hostile``


def batch_edit(edit: Callable[[dict], dict]) -> Rewrite:
    """Rewrite every batch part (``batch*``, ``eval*``, ``train``) of a bundle with ``edit``."""
    def rewrite(parts):
        for name in list(parts):
            if name.startswith(("batch", "eval", "train")):
                parts[name] = encode_batch(edit(decode_batch(parts[name])))
        return parts
    return rewrite


def adapter_edit(edit: Callable[[dict], dict]) -> Rewrite:
    """Rewrite the adapter state of a bundle with ``edit``."""
    def rewrite(parts):
        parts["adapters"] = encode_adapter_state(edit(decode_adapter_state(parts["adapters"])))
        return parts
    return rewrite


def control_edit(edit: Callable[[dict], bytes]) -> Rewrite:
    """Replace the control message with ``edit`` of its decoded fields (raw bytes out)."""
    def rewrite(parts):
        parts["control"] = edit(json.loads(parts["control"]))
        return parts
    return rewrite


def raw_control(text: bytes) -> Rewrite:
    """Replace the control message with these exact bytes."""
    return lambda parts: {**parts, "control": text}


def deep_header(parts: dict[str, bytes]) -> dict[str, bytes]:
    """A batch whose safetensors header nests 5,000 levels deep."""
    header = b'{"a":' * 5000 + b"1" + b"}" * 5000
    parts["batch0"] = len(header).to_bytes(8, "little") + header
    return parts


def unhashable_header(parts: dict[str, bytes]) -> dict[str, bytes]:
    """A batch whose cola header lists a list where a key name belongs."""
    blob = bytes(parts["batch0"])
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    header["__metadata__"]["cola"] = json.dumps({"format": 1, "kind": "batch",
                                                 "keys": [["x"], "labels"]})
    text = json.dumps(header).encode()
    parts["batch0"] = len(text).to_bytes(8, "little") + text + blob[8 + size:]
    return parts


def scale(factor: float) -> Rewrite:
    """Multiply every adapter parameter by ``factor``."""
    return adapter_edit(lambda state: {layer: {p: v * np.float32(factor) for p, v in ps.items()}
                                       for layer, ps in state.items()})


def drop_part(name: str) -> Rewrite:
    """Leave out one part of the bundle."""
    def rewrite(parts):
        parts.pop(name)
        return parts
    return rewrite


#: class -> (rewrite of a hostile node's TRAIN reply, the error the server names): digits task
NODE_TRAIN_ATTACKS: dict[str, tuple[Rewrite, str]] = {
    "labels out of range": (batch_edit(lambda b: {**b, "labels": b["labels"] + 10}),
                            "ContractError"),
    "float64 inputs": (batch_edit(lambda b: {**b, "x": b["x"].astype(np.float64)}),
                       "ContractError"),
    "short batch": (batch_edit(lambda b: {k: v[:3] for k, v in b.items()}), "ContractError"),
    "extra key": (batch_edit(lambda b: {**b, "token_type_ids": b["labels"]}), "ContractError"),
    "inputs out of range": (batch_edit(lambda b: {**b, "x": b["x"] * 1e6}), "ContractError"),
    "NaN inputs": (batch_edit(lambda b: {**b, "x": np.full_like(b["x"], np.nan)}),
                   "MalformedPayloadError"),
    "huge finite adapters": (scale(1e20), "AdapterBoundsError"),
    "adapter of the wrong shape": (adapter_edit(
        lambda s: {k: {p: v[..., :1] for p, v in ps.items()} for k, ps in s.items()}),
        "MalformedPayloadError"),
    "deeply nested header": (deep_header, "MalformedPayloadError"),
    "unhashable header value": (unhashable_header, "MalformedPayloadError"),
    "NaN loss literal": (raw_control(b'{"grad-norm":0,"loss":NaN,"num-examples":16,'
                                     b'"round":1,"step":1}'), "MalformedPayloadError"),
    "loss of the wrong type": (control_edit(lambda c: json.dumps({**c, "loss": "nan"})
                                            .encode()), "ProtocolError"),
    "negative metric": (control_edit(lambda c: json.dumps({**c, "num-examples": -5})
                                     .encode()), "ProtocolError"),
    "another round": (control_edit(lambda c: json.dumps({**c, "round": c["round"] + 7})
                                   .encode()), "ProtocolError"),
    "extra control field": (control_edit(lambda c: json.dumps({**c, "acknowledged": 1})
                                         .encode()), "ProtocolError"),
    "duplicate control key": (raw_control(b'{"grad-norm":0,"loss":1.0,"loss":0.1,'
                                          b'"num-examples":16,"round":1,"step":1}'),
                              "MalformedPayloadError"),
    "missing batch": (drop_part("batch0"), "ProtocolError"),
}


#: class -> (rewrite of a hostile node's hello reply, what the server's refusal names)
NODE_HELLO_ATTACKS: dict[str, tuple[Rewrite, str]] = {
    "a partition another node holds": (control_edit(lambda c: json.dumps(
        {**c, "partition-id": 0}).encode()), "claimed by several nodes"),
    "another node's identity (unsigned)": (control_edit(lambda c: json.dumps(
        {**c, "identity": "ab" * 32}).encode()), "AuthenticationError"),
    "a partition id out of range": (control_edit(lambda c: json.dumps(
        {**c, "partition-id": 2**40}).encode()), "ProtocolError"),
    "an unknown backend": (control_edit(lambda c: json.dumps(
        {**c, "backend": "cuda"}).encode()), "ProtocolError"),
    "huge finite adapters": (scale(1e20), "AdapterBoundsError"),
    "held-out labels out of range": (batch_edit(lambda b: {**b, "labels": b["labels"] - 1}),
                                     "ContractError"),
    "a missing held-out batch": (drop_part("eval1"), "ProtocolError"),
}


def set_in_plan(path: list, value) -> Callable[[dict], dict]:
    """Set one field of a transcript's plan."""
    def edit(transcript):
        target = transcript["plan"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return transcript
    return edit


#: rewrites of a hello by a relay that does not hold the server's identity key
RELAY_HELLO_REWRITES: dict[str, Callable[[Message], Message]] = {
    "more batches per step": lambda m: rewrite_transcript(m, set_in_plan(["interval"], 64)),
    "upload mode": lambda m: rewrite_transcript(m, set_in_plan(["data-mode"], "upload")),
    "huge batches": lambda m: rewrite_transcript(m, set_in_plan(["task", "batch_size"], 10**6)),
    "a local file to upload": lambda m: rewrite_transcript(
        m, set_in_plan(["task", "data_path"], "/etc/passwd")),
    "an attacker's graph hash": lambda m: rewrite_transcript(
        m, set_in_plan(["graphs"], {"lowrank-r8-64x64-adamw": "0" * 64})),
    "another run": lambda m: rewrite_transcript(m, lambda t: {**t, "run-id": "1"}),
    "re-signed by the relay's own key": lambda m: rewrite_transcript(
        m, set_in_plan(["interval"], 2), resign_with=Ed25519PrivateKey.generate()),
}


def json_paths(value, prefix: tuple = ()):
    """Every path to a field or item of a decoded JSON value (for fuzzers that rewrite one)."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from json_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from json_paths(child, (*prefix, i))
