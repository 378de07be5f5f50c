"""Hostile peers for trying the trust boundary: a node with valid keys that rewrites what it
seals, and relay rewrites of what travels between server and node. For tests and
``benchmarks.hostile``; nothing in a run uses it.

A hostile node runs the real client handler, then opens its own sealed reply with its own
session keys, changes the bundle, and seals it again under the same counter: the server receives
an authentic reply whose content is hostile, exactly what a modified client could send.
"""

from __future__ import annotations

from collections.abc import Callable

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
from cola_fed.wire import decode_bundle, encode_bundle, sign_transcript, transcript_hash
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
                       resign_with=None) -> Message:
    """A relay's rewrite of a hello: the transcript JSON edited, and signed again with
    ``resign_with`` (an attacker's own identity key, also put in the clear) or left with the
    server's signature."""
    import json

    clear = msg.content[CLEAR]
    raw = edit(json.loads(bytes(clear["transcript"])))
    data = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    fields = {"identity": clear["identity"], "transcript": data,
              "signature": clear["signature"]}
    if resign_with is not None:
        from cola_fed.wire import public_bytes

        raw["identity"] = public_bytes(resign_with).hex()
        data = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
        fields = {"identity": public_bytes(resign_with), "transcript": data,
                  "signature": sign_transcript(resign_with, data)}
    msg.content[CLEAR] = ConfigRecord(fields)
    return msg


def replace_graphs(msg: Message, graphs: dict[str, bytes]) -> Message:
    """A relay's rewrite of the graphs a hello ships."""
    msg.content[GRAPHS] = ConfigRecord(graphs)
    return msg
