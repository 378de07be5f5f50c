"""Sealing and the signed hello: known answers, and every tampered, replayed or misdirected
payload or transcript refused."""

import hashlib
import hmac
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cola_fed.errors import (
    AuthenticationError,
    MalformedPayloadError,
    PayloadError,
    ReplayError,
)
from cola_fed.wire import (
    ChannelState,
    SecureChannel,
    exchange_key_for_run,
    fingerprint,
    public_bytes,
    sign_transcript,
    transcript_hash,
    verify_transcript,
)
from cola_fed.wire.crypto import HELLO_CONTEXT, associated_data, derive_keys

SERVER = X25519PrivateKey.from_private_bytes(bytes(range(32)))
NODE = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
IDENTITY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
RUN, NODE_ID = 1234567890123, 2**63 + 17
TRANSCRIPT = b'{"plan":{}}'
HASH = transcript_hash(TRANSCRIPT)


def pair(run=RUN, node_id=NODE_ID, transcript=HASH):
    server = SecureChannel(SERVER, public_bytes(NODE), role="server", run_id=run,
                           node_id=node_id, transcript=transcript)
    node = SecureChannel(NODE, public_bytes(SERVER), role="node", run_id=run, node_id=node_id,
                         transcript=transcript)
    return server, node


# --------------------------------------------------------------------------------------------
# known answers: a change here breaks every deployed client

def test_known_answer_public_keys_and_fingerprint():
    assert public_bytes(SERVER).hex() == (
        "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f")
    assert fingerprint(public_bytes(SERVER)) == (
        "eedd:883d:a0a9:4515:93dc:0a38:e583:fb77:0fa2:7dbb:ed20:9c20:404e:075e:68c4:f0c9")
    assert public_bytes(IDENTITY).hex() == (
        "2543b92ff1095511476adc8369db6ddc933665a11978dda1404ee1066ca9559d")
    assert fingerprint(public_bytes(IDENTITY)) == (
        "0339:6219:237f:75a6:4f12:aeb7:f397:23ab:f400:b160:c364:980a:765d:ac24:aeba:2464")


def test_known_answer_exchange_key_and_signature():
    exchange = exchange_key_for_run(IDENTITY, RUN)
    assert public_bytes(exchange).hex() == (
        "37c2af1ef66b52504ffde72eb16f55494e19483a79fd15af104075026b3ed75b")
    assert exchange_key_for_run(IDENTITY, RUN + 1) != exchange  # one key per run
    # the exchange key is HKDF-SHA256(identity seed, salt = run id, info = label), as specified
    prk = hmac.new(RUN.to_bytes(8, "big"), bytes(range(64, 96)), hashlib.sha256).digest()
    okm = hmac.new(prk, b"cola-fed v2 exchange key\x01", hashlib.sha256).digest()
    assert public_bytes(X25519PrivateKey.from_private_bytes(okm)) == public_bytes(exchange)
    signature = sign_transcript(IDENTITY, TRANSCRIPT)
    assert signature.hex() == (
        "9fdc3d846c9e93c2c36e3b3620eaf2e864a890889fcf2a04c6829c5188b2b04d"
        "dfbe4696b254e8770d0d9e03a196cb85be30ecc423f2ac640cee260f6f44520e")
    IDENTITY.public_key().verify(signature, HELLO_CONTEXT + TRANSCRIPT)  # the documented context


def test_known_answer_key_derivation_labels():
    shared = SERVER.exchange(NODE.public_key())
    keys = derive_keys(shared, run_id=RUN, node_id=NODE_ID, transcript=HASH)
    assert HASH.hex() == "1257ec5b35f40db9189a7737d8c23311c8424d40b698977bac3a211658941e0c"
    assert keys["server->node"].hex() == (
        "53cfbc69ce4481d759af1fa1a3513746f4e8167e688384e7bd5d81ce2e3d00b6")
    assert keys["node->server"].hex() == (
        "a678a2ad98b0f2faa3ce39efb432c17743fcb5883492ea36079cd604014f29ad")
    # the same keys from RFC 5869 written out with the standard library: the labels are as
    # docs/security.md specifies them
    for direction, key in keys.items():
        prk = hmac.new(RUN.to_bytes(8, "big"), shared, hashlib.sha256).digest()
        info = f"cola-fed v4 {direction} node {NODE_ID} ".encode() + HASH
        assert hmac.new(prk, info + b"\x01", hashlib.sha256).digest() == key


def test_known_answer_associated_data_and_envelope():
    aad = associated_data(version=4, run_id=RUN, node_id=NODE_ID, counter=2,
                          direction="node->server", kind="train")
    assert aad.hex() == (
        "636f6c612d666564" "0004" "0000011f71fb04cb" "8000000000000011"
        "0000000000000002" "02" "747261696e")
    server, _ = pair()
    envelope = server.seal(b"adaptation data", kind="train")
    assert envelope[:12].hex() == "43465332" "0000000000000001"
    assert envelope.hex() == KNOWN_ENVELOPE


KNOWN_ENVELOPE = (
    "434653320000000000000001ef6a46ad5e81a0d15d4ad2f493c6b6f8d505379e736f89459156eca81704b5")


# --------------------------------------------------------------------------------------------
# behaviour

def test_round_trip_both_directions_and_state_persistence():
    server, node = pair()
    for rnd in range(1, 4):
        down = server.seal(f"down {rnd}".encode(), kind="train")
        assert node.open(down, kind="train") == f"down {rnd}".encode()
        up = node.seal(b"up" * rnd, kind="train")
        assert server.open(up, kind="train") == b"up" * rnd
    saved = ChannelState(**vars(node.state))
    resumed = SecureChannel(NODE, public_bytes(SERVER), role="node", run_id=RUN,
                            node_id=NODE_ID, transcript=HASH, state=saved)
    up = resumed.seal(b"after restart", kind="train")
    assert server.open(up, kind="train") == b"after restart"


def test_tamper_fuzz_every_case_is_refused_and_changes_nothing():
    rng = np.random.default_rng(0)
    cases = 0
    for _ in range(12):
        server, node = pair()
        plaintext = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        # the node has received one earlier message, so replays have something to hit
        node.open(server.seal(b"hello", kind="hello"), kind="hello")
        good = server.seal(plaintext, kind="train")
        attacks = []
        for _ in range(60):  # bit flips anywhere
            bad = bytearray(good)
            pos = int(rng.integers(0, len(bad)))
            bad[pos] ^= 1 << int(rng.integers(0, 8))
            attacks.append((bytes(bad), "train", node))
        for cut in rng.integers(0, len(good), 10):  # truncation
            attacks.append((good[:int(cut)], "train", node))
        for extra in (b"\x00", b"junk" * 8, os.urandom(17)):  # extension
            attacks.append((good + extra, "train", node))
        header_edits = [good[:4] + (int.from_bytes(good[4:12], "big") + k).to_bytes(8, "big")
                        + good[12:] for k in (1, 2, 2**32)]
        attacks += [(b, "train", node) for b in header_edits]  # edited counter
        attacks.append((b"XXXX" + good[4:], "train", node))  # edited magic
        attacks.append((good, "hello", node))  # another kind
        attacks.append((good, "train", pair(node_id=NODE_ID + 1)[1]))  # another node
        attacks.append((good, "train", pair(run=RUN + 1)[1]))  # another run
        other_hello = transcript_hash(b'{"plan":{"interval":9}}')
        attacks.append((good, "train", pair(transcript=other_hello)[1]))  # another hello
        attacks.append((good, "train", server))  # reflected back: another direction
        stranger = SecureChannel(X25519PrivateKey.generate(), public_bytes(SERVER), role="node",
                                 run_id=RUN, node_id=NODE_ID, transcript=HASH)
        attacks.append((good, "train", stranger))  # wrong key
        before = vars(node.state).copy()
        for blob, kind, receiver in attacks:
            with pytest.raises(PayloadError):
                receiver.open(blob, kind=kind)
            cases += 1
        assert vars(node.state) == before  # nothing was applied
        assert node.open(good, kind="train") == plaintext
        with pytest.raises(ReplayError):  # replay of an accepted payload
            node.open(good, kind="train")
        cases += 1
    assert cases >= 1000


def test_reordering_is_refused():
    server, node = pair()
    first = server.seal(b"1", kind="train")
    second = server.seal(b"2", kind="train")
    assert node.open(second, kind="train") == b"2"
    with pytest.raises(ReplayError, match="out of order"):
        node.open(first, kind="train")


def test_error_kinds():
    server, node = pair()
    good = server.seal(b"x", kind="train")
    with pytest.raises(AuthenticationError, match="failed authentication"):
        node.open(good[:-1] + bytes([good[-1] ^ 1]), kind="train")
    with pytest.raises(MalformedPayloadError, match="too short"):
        node.open(good[:10], kind="train")
    with pytest.raises(MalformedPayloadError, match="32 raw bytes"):
        SecureChannel(NODE, b"short", role="node", run_id=1, node_id=1, transcript=HASH)


def test_a_rewritten_or_resigned_transcript_fails_verification():
    signature = sign_transcript(IDENTITY, TRANSCRIPT)
    verify_transcript(public_bytes(IDENTITY), TRANSCRIPT, signature)
    rng = np.random.default_rng(1)
    for _ in range(200):  # any edit of the transcript or the signature
        data, sig = bytearray(TRANSCRIPT), bytearray(signature)
        target = data if rng.random() < 0.5 else sig
        target[int(rng.integers(0, len(target)))] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(AuthenticationError):
            verify_transcript(public_bytes(IDENTITY), bytes(data), bytes(sig))
    impostor = Ed25519PrivateKey.generate()
    with pytest.raises(AuthenticationError):  # signed by another key, claimed as ours
        verify_transcript(public_bytes(IDENTITY), TRANSCRIPT,
                          sign_transcript(impostor, TRANSCRIPT))
    with pytest.raises(AuthenticationError):  # a plain signature, without the hello context
        verify_transcript(public_bytes(IDENTITY), TRANSCRIPT, IDENTITY.sign(TRANSCRIPT))
    with pytest.raises(MalformedPayloadError):
        verify_transcript(b"short", TRANSCRIPT, signature)
