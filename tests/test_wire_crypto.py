"""Sealing: known answers, and every tampered, replayed or misdirected payload refused."""

import hashlib
import hmac
import os
import stat

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cola_fed.errors import (
    AuthenticationError,
    ConfigError,
    MalformedPayloadError,
    PayloadError,
    ReplayError,
    UntrustedKeyError,
)
from cola_fed.wire import (
    ChannelState,
    SecureChannel,
    check_pinned,
    fingerprint,
    load_private_key,
    public_bytes,
    save_private_key,
)
from cola_fed.wire.crypto import associated_data, derive_keys

SERVER = X25519PrivateKey.from_private_bytes(bytes(range(32)))
NODE = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
RUN, NODE_ID = 1234567890123, 2**63 + 17


def pair(run=RUN, node_id=NODE_ID):
    server = SecureChannel(SERVER, public_bytes(NODE), role="server", run_id=run, node_id=node_id)
    node = SecureChannel(NODE, public_bytes(SERVER), role="node", run_id=run, node_id=node_id)
    return server, node


# --------------------------------------------------------------------------------------------
# known answers: a change here breaks every deployed client

def test_known_answer_public_keys_and_fingerprint():
    assert public_bytes(SERVER).hex() == (
        "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f")
    assert fingerprint(public_bytes(SERVER)) == (
        "eedd:883d:a0a9:4515:93dc:0a38:e583:fb77:0fa2:7dbb:ed20:9c20:404e:075e:68c4:f0c9")


def test_known_answer_key_derivation_labels():
    shared = SERVER.exchange(NODE.public_key())
    keys = derive_keys(shared, run_id=RUN, node_id=NODE_ID)
    assert keys["server->node"].hex() == (
        "b9c787b160d5f1d1748e57f56ec9dc7cd84fb8204f7efb1d07f470e7941ad70c")
    assert keys["node->server"].hex() == (
        "e8a83756da6e5c272fa049ae834ed1b99532717517be4e1c17f998081a3a2da1")
    # the same keys from RFC 5869 written out with the standard library: the labels are as
    # docs/security.md specifies them
    for direction, key in keys.items():
        prk = hmac.new(RUN.to_bytes(8, "big"), shared, hashlib.sha256).digest()
        info = f"cola-fed v1 {direction} node {NODE_ID}".encode()
        assert hmac.new(prk, info + b"\x01", hashlib.sha256).digest() == key


def test_known_answer_associated_data_and_envelope():
    aad = associated_data(version=1, run_id=RUN, node_id=NODE_ID, round=3, counter=2,
                          direction="node->server", kind="train")
    assert aad.hex() == (
        "636f6c612d666564" "0001" "0000011f71fb04cb" "8000000000000011"
        "0000000000000003" "0000000000000002" "02" "747261696e")
    server, _ = pair()
    envelope = server.seal(b"adaptation data", round=1, kind="train")
    assert envelope[:12].hex() == "43465331" "0000000000000001"
    assert envelope.hex() == KNOWN_ENVELOPE


KNOWN_ENVELOPE = (
    "4346533100000000000000011d45de33cc0c0ffa532646430dc91ad6221a6b409ae5f5fc554dcc0e2547a3")


# --------------------------------------------------------------------------------------------
# behaviour

def test_round_trip_both_directions_and_state_persistence():
    server, node = pair()
    for rnd in range(1, 4):
        down = server.seal(f"down {rnd}".encode(), round=rnd, kind="train")
        assert node.open(down, round=rnd, kind="train") == f"down {rnd}".encode()
        up = node.seal(b"up" * rnd, round=rnd, kind="train")
        assert server.open(up, round=rnd, kind="train") == b"up" * rnd
    saved = ChannelState(**vars(node.state))
    resumed = SecureChannel(NODE, public_bytes(SERVER), role="node", run_id=RUN,
                            node_id=NODE_ID, state=saved)
    up = resumed.seal(b"after restart", round=4, kind="train")
    assert server.open(up, round=4, kind="train") == b"after restart"


def test_tamper_fuzz_every_case_is_refused_and_changes_nothing():
    rng = np.random.default_rng(0)
    cases = 0
    for trial in range(12):
        server, node = pair()
        plaintext = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        # the node has received one earlier message, so replays have something to hit
        node.open(server.seal(b"hello", round=0, kind="query"), round=0, kind="query")
        good = server.seal(plaintext, round=trial + 1, kind="train")
        rnd = trial + 1
        attacks = []
        for _ in range(60):  # bit flips anywhere
            bad = bytearray(good)
            pos = int(rng.integers(0, len(bad)))
            bad[pos] ^= 1 << int(rng.integers(0, 8))
            attacks.append((bytes(bad), rnd, "train", node))
        for cut in rng.integers(0, len(good), 10):  # truncation
            attacks.append((good[:int(cut)], rnd, "train", node))
        for extra in (b"\x00", b"junk" * 8, os.urandom(17)):  # extension
            attacks.append((good + extra, rnd, "train", node))
        header_edits = [good[:4] + (int.from_bytes(good[4:12], "big") + k).to_bytes(8, "big")
                        + good[12:] for k in (1, 2, 2**32)]
        attacks += [(b, rnd, "train", node) for b in header_edits]  # edited counter
        attacks.append((b"XXXX" + good[4:], rnd, "train", node))  # edited magic
        attacks.append((good, rnd + 1, "train", node))  # another round
        attacks.append((good, rnd, "evaluate", node))  # another kind
        other_node = pair(node_id=NODE_ID + 1)[1]
        attacks.append((good, rnd, "train", other_node))  # another node
        attacks.append((good, rnd, "train", pair(run=RUN + 1)[1]))  # another run
        attacks.append((good, rnd, "train", server))  # reflected back: another direction
        stranger = SecureChannel(X25519PrivateKey.generate(), public_bytes(SERVER), role="node",
                                 run_id=RUN, node_id=NODE_ID)
        attacks.append((good, rnd, "train", stranger))  # wrong key
        before = vars(node.state).copy()
        for blob, at_round, kind, receiver in attacks:
            with pytest.raises(PayloadError):
                receiver.open(blob, round=at_round, kind=kind)
            cases += 1
        assert vars(node.state) == before  # nothing was applied
        assert node.open(good, round=rnd, kind="train") == plaintext
        with pytest.raises(ReplayError):  # replay of an accepted payload
            node.open(good, round=rnd, kind="train")
        cases += 1
    assert cases >= 1000


def test_reordering_is_refused():
    server, node = pair()
    first = server.seal(b"1", round=1, kind="train")
    second = server.seal(b"2", round=2, kind="train")
    assert node.open(second, round=2, kind="train") == b"2"
    with pytest.raises(ReplayError, match="out of order"):
        node.open(first, round=1, kind="train")


def test_error_kinds():
    server, node = pair()
    good = server.seal(b"x", round=1, kind="train")
    with pytest.raises(AuthenticationError, match="failed authentication"):
        node.open(good[:-1] + bytes([good[-1] ^ 1]), round=1, kind="train")
    with pytest.raises(MalformedPayloadError, match="too short"):
        node.open(good[:10], round=1, kind="train")
    with pytest.raises(MalformedPayloadError, match="32 raw bytes"):
        SecureChannel(NODE, b"short", role="node", run_id=1, node_id=1)


def test_pinning_and_trust_on_first_use(caplog):
    server_pub = public_bytes(SERVER)
    seen = fingerprint(server_pub)
    assert check_pinned(server_pub, seen.replace(":", "").upper()) == seen
    with caplog.at_level("WARNING", logger="cola_fed"):
        check_pinned(server_pub, None)
    assert seen in caplog.text
    with pytest.raises(UntrustedKeyError, match="refusing"):
        check_pinned(public_bytes(NODE), seen)
    with pytest.raises(ConfigError, match="64 hex digits"):
        check_pinned(server_pub, "abcd")


def test_private_key_file_is_owner_only(tmp_path):
    path = save_private_key(SERVER, tmp_path / "server.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_bytes(load_private_key(path)) == public_bytes(SERVER)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(path)
