"""Conformance vectors of the wire: strict and canonical JSON, the seal (keys, associated data,
envelopes both ways, signatures, fingerprints), the known-servers file, and payloads of every
codec kind and wire form, each with hostile variants and the Python error class they raise.

Everything is deterministic: keys come from fixed bytes, and ``SecureChannel`` draws no random
nonces (the nonce is the sender's message counter), so every envelope is reproducible.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layer_data import output_size
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.gl.parameter_gradient import digest
from cola_fed.wire import codec
from cola_fed.wire.crypto import (
    SecureChannel,
    associated_data,
    derive_keys,
    exchange_key_for_run,
    fingerprint,
    normalise_fingerprint,
    public_bytes,
    sign_node_claim,
    sign_transcript,
    transcript_hash,
)
from cola_fed.wire.identity import KnownServers
from cola_fed.wire.strict_json import dumps_canonical, loads_strict

RUN_ID = 2**63 + 12345
NODE_ID = 2**64 - 3
NODE_KEY = bytes(range(32))  # the node's per-run X25519 key
SERVER_SEED = bytes(range(32, 64))  # the server's Ed25519 identity
NODE_IDENTITY_SEED = bytes(range(64, 96))  # the node's long-term Ed25519 identity
TRANSCRIPT = b'{"plan":"fixed","run":"conformance"}'


def _hex(data: bytes | bytearray | memoryview) -> str:
    return bytes(data).hex()


def _error(call: Callable[[], Any]) -> str:
    """The class name of the error ``call`` raises; it must raise one."""
    try:
        call()
    except Exception as err:
        return type(err).__name__
    raise AssertionError("a hostile vector was accepted by the Python code")


# --------------------------------------------------------------------------------------------
# strict and canonical JSON

_JSON_ACCEPT = [
    b'{"a": [1, -2.5e3, "[[[{", {"b": null}], "c": true, "\xc3\xa9": -9223372036854775808}',
    b' \t\n\r{"z": 1, "a": 2, "10": 3, "2": 4, "__proto__": 5} ', b"0", b"-0", b"-0.0", b"1E2",
    b"1e-400", b"9999999999999999999", b"-9999999999999999999", b"0.1", b"1.5e300",
    b'"\\u0041\\n\\t\\"\\\\\\/\\b\\f\\r\\u00e9\\ud83d\\ude00"',
    b'"\x7f\xe2\x82\xac\xf0\x9f\x98\x80"',
    b'{"\\uffff": 1, "\\ud83d\\ude00": 2, "\\ue000": 3, "a": 4}', b'"\\\\ud800"',
    b'["\\u0001", "\\u001f", "\\u007f"]', b"[" * 16 + b"]" * 16, b"[]", b"{}", b'""',
    b'[1.0, 100.0, 1e16, 1e15, 0.0001, 0.00001, 123456789012345678, 1.7976931348623157e308, '
    b'5e-324, 2.5e-7, 0.30000000000000004]',
    b'{"a": "[", "b": "\\"]]]]]]]]]]]]]]]]]]]]"}',
]

# (input, max_bytes, max_depth)
_JSON_REFUSE: list[tuple[bytes, int, int]] = [
    (b'{"a": 1, "a": 1}', 2**20, 16), (b'{"o": {"b": [], "b": []}}', 2**20, 16),
    (b'{"a": 1, "\\u0061": 2}', 2**20, 16), (b"NaN", 2**20, 16), (b"[Infinity]", 2**20, 16),
    (b"-Infinity", 2**20, 16), (b"[1e999]", 2**20, 16), (b"-1e400", 2**20, 16),
    (b"1" * 20, 2**20, 16), (b"-" + b"9" * 20, 2**20, 16), (b"[" * 17 + b"]" * 17, 2**20, 16),
    (b"[[[]]]", 2**20, 2), (b'{"a": {"b": {}}}', 2**20, 2), (b"\xef\xbb\xbf{}", 2**20, 16),
    ('{"a": 1}'.encode("utf-16"), 2**20, 16), ('{"a": 1}'.encode("utf-16-be"), 2**20, 16),
    ('{"a": 1}'.encode("utf-32"), 2**20, 16), (b'"\xff"', 2**20, 16),
    (b'"\xed\xa0\x80"', 2**20, 16), (b'"\xc0\xaf"', 2**20, 16), (b'"\xf4\x90\x80\x80"', 2**20, 16),
    (b"{", 2**20, 16), (b"", 2**20, 16), (b" ", 2**20, 16), (b'"unterminated', 2**20, 16),
    (b"[1,]", 2**20, 16), (b'{"a": 1,}', 2**20, 16), (b"01", 2**20, 16), (b"1.", 2**20, 16),
    (b".5", 2**20, 16), (b"+1", 2**20, 16), (b"1e", 2**20, 16), (b"-", 2**20, 16),
    (b"nan", 2**20, 16), (b"True", 2**20, 16), (b"[1 2]", 2**20, 16), (b"{} {}", 2**20, 16),
    (b"{'a': 1}", 2**20, 16), (b'{"a" 1}', 2**20, 16), (b'{1: 2}', 2**20, 16),
    (b'"\\x41"', 2**20, 16), (b'"\\u12"', 2**20, 16), (b'"\\u12g4"', 2**20, 16),
    (b'"a\tb"', 2**20, 16), (b'"a\nb"', 2**20, 16), (b'"\x1f"', 2**20, 16),
    (b'"\\ud800"', 2**20, 16), (b'"\\udfff"', 2**20, 16), (b'["\\uD83D"]', 2**20, 16),
    (b'{"\\udc00": 1}', 2**20, 16), (b'"\\ud800\\u0041"', 2**20, 16),
    (b'"\\ude00\\ud83d"', 2**20, 16), (b'"\\ud83d\\ud83d\\ude00"', 2**20, 16),
    (b"[1, 2, 3]", 8, 16), (b'"' + "é".encode() * 5 + b'"', 11, 16), (b"\x00", 2**20, 16),
    (b"[\x00]", 2**20, 16), (b"\xa0[]", 2**20, 16), (b"\xc2\xa0[]", 2**20, 16),
]

_FLOATS = [
    0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 1 / 3, 2 / 3, 1e16, 1e15, 9999999999999998.0, 1e17, 1e22,
    1e21, 1e-4, 1e-5, 0.00012345, 1.2345e-5, 123456789.0, 123456789012345678.0, 2.0**53,
    2.0**53 + 2, 2.0**63, 2.0**64, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
    0.30000000000000004, 1e100, 1.5e-300, 100.0, 1234.5678, 3.141592653589793, -2.5e-7,
    float(np.float32(0.1)), float(np.float32(1 / 3)), 4.35, 0.3, 9.5367431640625e-07,
]


def _float_vectors() -> list[dict]:
    rng = np.random.default_rng(7)
    values = list(_FLOATS)
    values += [float(v) for v in rng.standard_normal(40) * 10.0 ** rng.integers(-30, 30, 40)]
    values += [float(np.frombuffer(rng.bytes(8), "<f8")[0]) for _ in range(60)]
    values = [v for v in values if math.isfinite(v)]
    return [{"bits": struct.pack(">d", v).hex(), "repr": repr(v)} for v in values]


def _json_vectors() -> dict:
    accept = []
    for text in _JSON_ACCEPT:
        value = loads_strict(text, what="x", max_bytes=2**20)
        accept.append({
            "text": _hex(text),
            "canonical": _hex(dumps_canonical(value)),
            # key order and types kept: json.dumps as the codec's pack writes headers
            "ordered": json.dumps(value, separators=(",", ":")),
        })
    refuse = [{"text": _hex(t), "max_bytes": b, "max_depth": d,
               "error": _error(lambda t=t, b=b, d=d: loads_strict(t, what="x", max_bytes=b,
                                                                  max_depth=d))}
              for t, b, d in _JSON_REFUSE]
    # str inputs (the JS string path): a lone surrogate, and a cap counted in characters
    refuse_str = [{"text": t, "max_bytes": b,
                   "error": _error(lambda t=t, b=b: loads_strict(t, what="x", max_bytes=b))}
                  for t, b in (("\ud800", 100), ('"\udc00"', 100), ("[1, 2]", 5),
                               ('"' + "é" * 5 + '"', 11))]
    return {"accept": accept, "refuse": refuse, "refuse_str": refuse_str,
            "floats": _float_vectors()}


# --------------------------------------------------------------------------------------------
# the seal


def _channels(node_id: int = NODE_ID, run_id: int = RUN_ID, transcript: bytes | None = None):
    identity = Ed25519PrivateKey.from_private_bytes(SERVER_SEED)
    server_key = exchange_key_for_run(identity, RUN_ID)
    node_key = X25519PrivateKey.from_private_bytes(NODE_KEY)
    digest = transcript if transcript is not None else transcript_hash(TRANSCRIPT)
    server = SecureChannel(server_key, public_bytes(node_key), role="server", run_id=run_id,
                           node_id=node_id, transcript=digest)
    node = SecureChannel(node_key, public_bytes(server_key), role="node", run_id=run_id,
                         node_id=node_id, transcript=digest)
    return server, node


def _seal_vectors() -> dict:
    identity = Ed25519PrivateKey.from_private_bytes(SERVER_SEED)
    server_key = exchange_key_for_run(identity, RUN_ID)
    node_key = X25519PrivateKey.from_private_bytes(NODE_KEY)
    raw = serialization.Encoding.Raw
    digest = transcript_hash(TRANSCRIPT)
    shared = node_key.exchange(server_key.public_key())
    keys = derive_keys(shared, run_id=RUN_ID, node_id=NODE_ID, transcript=digest)

    server, node = _channels()
    messages = [("hello", b"hello from the server"), ("train", b"\x00" * 40),
                ("train", bytes(range(256))), ("hello", b"")]
    server_envelopes = [{"kind": k, "plaintext": _hex(p), "envelope": _hex(server.seal(p, kind=k))}
                        for k, p in messages]
    node_envelopes = [{"kind": k, "plaintext": _hex(p), "envelope": _hex(node.seal(p, kind=k))}
                      for k, p in messages]
    for e in server_envelopes:  # Python opens what it sealed, in order
        assert node.open(bytes.fromhex(e["envelope"]), kind=e["kind"]).hex() == e["plaintext"]

    first = bytes.fromhex(server_envelopes[0]["envelope"])
    second = bytes.fromhex(server_envelopes[1]["envelope"])
    tampered = bytearray(second)
    tampered[20] ^= 1
    bad_tag = bytearray(first)
    bad_tag[-1] ^= 0x80
    bad_counter = bytearray(first)
    bad_counter[11] ^= 1
    bad_magic = b"CFS1" + first[4:]
    own_node_envelope = bytes.fromhex(node_envelopes[0]["envelope"])

    def opening(steps: list[tuple[bytes, str]], node_id: int = NODE_ID,
                transcript: bytes | None = None) -> list[dict]:
        """Open ``steps`` in order on a fresh node channel; what each gives."""
        _, channel = _channels(node_id=node_id, transcript=transcript)
        out = []
        for envelope, kind in steps:
            entry = {"envelope": _hex(envelope), "kind": kind}
            try:
                entry["plaintext"] = _hex(channel.open(envelope, kind=kind))
            except Exception as err:
                entry["error"] = type(err).__name__
            out.append(entry)
        return out

    hostile = {
        "replayed": opening([(first, "hello"), (first, "hello")]),
        "out_of_order": opening([(second, "train"), (first, "hello")]),
        "tampered_ciphertext": opening([(bytes(tampered), "train")]),
        "tampered_tag": opening([(bytes(bad_tag), "hello")]),
        "tampered_counter": opening([(bytes(bad_counter), "hello")]),
        "wrong_kind": opening([(first, "train")]),
        "wrong_node": opening([(first, "hello")], node_id=NODE_ID - 1),
        "wrong_transcript": opening([(first, "hello")], transcript=bytes(32)),
        "wrong_direction": opening([(own_node_envelope, "hello")]),
        "bad_magic": opening([(bad_magic, "hello")]),
        "too_short": opening([(first[:27], "hello"), (b"", "hello")]),
        "failure_keeps_state": opening([(bytes(tampered), "train"), (first, "hello"),
                                        (second, "train")]),
    }
    node_public = public_bytes(node_key)
    creation = []
    for label, peer, role, transcript in (
            ("low_order_peer", bytes(32), "node", digest),
            ("short_peer", bytes(31), "node", digest),
            ("bad_role", public_bytes(server_key), "relay", digest),
            ("short_transcript", public_bytes(server_key), "node", digest[:31])):
        creation.append({"label": label, "peer": _hex(peer), "role": role,
                         "transcript": _hex(transcript),
                         "error": _error(lambda p=peer, r=role, t=transcript: SecureChannel(
                             node_key, p, role=r, run_id=RUN_ID, node_id=NODE_ID, transcript=t))})

    signature = sign_transcript(identity, TRANSCRIPT)
    node_identity = Ed25519PrivateKey.from_private_bytes(NODE_IDENTITY_SEED)
    claim = sign_node_claim(node_identity, digest, node_public)
    aad = [{"version": v, "run_id": str(r), "node_id": str(n), "counter": str(c), "direction": d,
            "kind": k, "aad": _hex(associated_data(version=v, run_id=r, node_id=n, counter=c,
                                                   direction=d, kind=k))}
           for v, r, n, c, d, k in ((4, RUN_ID, NODE_ID, 1, "server->node", "hello"),
                                    (4, 7, 3, 2**64 - 1, "node->server", "train"),
                                    (3, 0, 0, 0, "server->node", ""),
                                    (4, 1, 2, 5, "node->server", "héllo"))]
    fingerprints = {"server_identity": fingerprint(public_bytes(identity)),
                    "node_key": fingerprint(node_public)}
    normalise_ok = [(s, normalise_fingerprint(s)) for s in (
        fingerprints["server_identity"].upper(), fingerprints["node_key"].replace(":", ""),
        " ".join(fingerprints["node_key"].split(":")))]
    normalise_bad = [s for s in ("", "abc", fingerprints["node_key"] + "0",
                                 fingerprints["node_key"][:-1] + "g")]
    return {
        "run_id": str(RUN_ID), "node_id": str(NODE_ID), "protocol_version": 4,
        "node_key": _hex(NODE_KEY), "node_public": _hex(node_public),
        "server_seed": _hex(SERVER_SEED),
        "server_identity_public": _hex(public_bytes(identity)),
        "server_exchange_key": _hex(server_key.private_bytes(
            raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())),
        "server_exchange_public": _hex(public_bytes(server_key)),
        "shared_secret": _hex(shared),
        "transcript": _hex(TRANSCRIPT), "transcript_hash": _hex(digest),
        "keys": {d: _hex(k) for d, k in keys.items()},
        "aad": aad,
        "server_envelopes": server_envelopes, "node_envelopes": node_envelopes,
        "hostile_opens": hostile, "hostile_channels": creation,
        "transcript_signature": _hex(signature),
        "transcript_hostile": [
            {"public": _hex(public_bytes(identity)), "transcript": _hex(TRANSCRIPT + b" "),
             "signature": _hex(signature), "error": "AuthenticationError"},
            {"public": _hex(public_bytes(node_identity)), "transcript": _hex(TRANSCRIPT),
             "signature": _hex(signature), "error": "AuthenticationError"},
            {"public": _hex(public_bytes(identity)), "transcript": _hex(TRANSCRIPT),
             "signature": _hex(signature[:63]), "error": "MalformedPayloadError"},
            {"public": _hex(public_bytes(identity)[:31]), "transcript": _hex(TRANSCRIPT),
             "signature": _hex(signature), "error": "MalformedPayloadError"},
        ],
        "node_identity_seed": _hex(NODE_IDENTITY_SEED),
        "node_identity_public": _hex(public_bytes(node_identity)),
        "node_claim": _hex(claim),
        "fingerprints": fingerprints,
        "normalise_ok": [{"input": a, "output": b} for a, b in normalise_ok],
        "normalise_bad": [{"input": s, "error": _error(lambda s=s: normalise_fingerprint(s))}
                          for s in normalise_bad],
    }


# --------------------------------------------------------------------------------------------
# the known-servers file


def _identity_vectors() -> dict:
    server_a = public_bytes(Ed25519PrivateKey.from_private_bytes(SERVER_SEED))
    server_b = public_bytes(Ed25519PrivateKey.from_private_bytes(NODE_IDENTITY_SEED))
    fp_a, fp_b = fingerprint(server_a), fingerprint(server_b)
    quiet = logging.getLogger("cola_fed")
    level, quiet.level = quiet.level, logging.ERROR  # no trust-on-first-use warnings here
    with tempfile.TemporaryDirectory() as folder:
        known = KnownServers(Path(folder) / "known-servers.json")
        steps = []

        def step(op: dict, call: Callable[[], Any]) -> None:
            entry = dict(op)
            try:
                entry["result"] = call()
            except Exception as err:
                entry["error"] = type(err).__name__
            entry["file"] = (_hex(known.path.read_bytes()) if known.path.exists() else None)
            steps.append(entry)

        for name, public, pinned, remember in (
                ("superlink.example:9092", server_a, None, False),  # first look: not remembered
                ("superlink.example:9092", server_a, None, True),  # trust on first use
                ("superlink.example:9092", server_a, None, True),  # same key again
                ("superlink.example:9092", server_b, None, True),  # a changed key
                ("superlink.example:9092", server_b, None, False),  # also at a first look
                ("other", server_b, None, True), ("A-server", server_a, None, True),
                ("pinned", server_a, fp_a.upper(), True),  # pinned: the file is not touched
                ("pinned", server_a, fp_b, True),  # a pinned mismatch
                ("pinned", server_a, "not a fingerprint", True),
                ("bad name!", server_a, None, True), ("", server_a, None, True),
                ("x" * 129, server_a, None, True), ("short-key", server_a[:31], None, True)):
            step({"op": "check", "name": name, "public": _hex(public), "pinned": pinned,
                  "remember": remember},
                 lambda n=name, p=public, pin=pinned, r=remember: known.check(
                     n, p, pinned=pin, remember=r))
        step({"op": "forget", "name": "other"}, lambda: known.forget("other"))
        step({"op": "forget", "name": "other"}, lambda: known.forget("other"))
        step({"op": "check", "name": "other", "public": _hex(server_a), "pinned": None,
              "remember": True}, lambda: known.check("other", server_a))

        def parse(data: bytes) -> dict:
            return {"file": _hex(data), **_outcome(lambda: known._parse(data))}

        good_files = [
            b'{"version": 1, "servers": {}}',
            b'{"version": 1.0, "servers": {"a": "' + fp_a.upper().encode() + b'"}}',
            b'{"version": true, "servers": {"a": "' + fp_a.replace(":", "").encode() + b'"}}',
            b'{"servers": {"a": "' + fp_a.encode() + b'", "b": "' + fp_b.encode() + b'"}, '
            b'"version": 1, "extra": NaN, "more": [1e999, -Infinity]}',
            b'{"version": 1, "servers": {"a": "' + fp_b.encode() + b'", "a": "' + fp_a.encode()
            + b'"}}',  # duplicate keys: json.loads keeps the last
            b'{"version": 2, "version": 1, "servers": {}}',
            b' \n{"version":1,"servers":{"x.y:1-2_3":"' + " ".join(fp_a.split(":")).encode()
            + b'"}}\n',
        ]
        bad_files = [
            b"", b"not json", b"\xef\xbb\xbf{}", b"\xff", b'{"version": 2, "servers": {}}',
            b'{"version": "1", "servers": {}}', b'{"servers": {}}', b"[]", b"1",
            b'{"version": 1}', b'{"version": 1, "servers": []}',
            b'{"version": 1, "servers": {"a": 1}}', b'{"version": 1, "servers": {"a": "abc"}}',
            b'{"version": 1, "servers": {"bad name": "' + fp_a.encode() + b'"}}',
            b'{"version": 1, "servers": {"a": "' + fp_a.encode() + b'"}',
            b'{"version": 1, "servers": {"a": "' + fp_a.encode() + b'",}}',
            b'{"version": 1, "servers": {"\\ud800": "' + fp_a.encode() + b'"}}',
            b'{"version": 1, "servers": {}} x',
        ]
        written = []
        for servers in ({}, {"b": fp_b, "a": fp_a, "Z": fp_a, "0": fp_b}):
            known._write(dict(servers))
            written.append({"servers": servers, "file": _hex(known.path.read_bytes())})
    quiet.setLevel(level)
    return {"fingerprints": {"a": fp_a, "b": fp_b}, "steps": steps,
            "good_files": [parse(f) for f in good_files],
            "bad_files": [parse(f) for f in bad_files], "written": written}


def _outcome(call: Callable[[], Any]) -> dict:
    try:
        return {"result": call()}
    except Exception as err:
        return {"error": type(err).__name__}


# --------------------------------------------------------------------------------------------
# payloads


def _array(value: np.ndarray) -> dict:
    """An array as the JS test compares it: numpy dtype name, shape, little-endian bytes."""
    value = np.ascontiguousarray(value)
    return {"dtype": value.dtype.name, "shape": list(value.shape),
            "data": _hex(value.astype(value.dtype.newbyteorder("<")).tobytes())}


def _state(state: dict) -> list:
    """An adapter state as ordered pairs (the vectors file sorts object keys)."""
    return [[k, [[p, _array(v)] for p, v in ps.items()]] for k, ps in state.items()]


def _rng_f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


LAYOUT = Layout((
    LayerInfo("enc.0.q", 6, 4), LayerInfo("enc.0.v", 6, 5), LayerInfo("enc.0.o", 4, 6),
    LayerInfo("classifier", 6, 3), LayerInfo("head", 4, 2),
    LayerInfo("conv", 2 * 3 * 3, 4, module_type="conv2d", kernel_size=(3, 3), stride=(2, 1),
              padding=(1, 0), dilation=(1, 2)),
))


def _adaptation_data(rng: np.random.Generator) -> dict[str, AdaptationData]:
    shared = _rng_f32(rng, 7, 6)
    rows = AdaptationData(
        {"enc.0.q": shared, "enc.0.o": _rng_f32(rng, 3, 4), "conv": _rng_f32(rng, 2, 2, 5, 7)},
        {"enc.0.q": _rng_f32(rng, 4, 4), "enc.0.v": _rng_f32(rng, 5, 5),
         "enc.0.o": _rng_f32(rng, 3, 6), "conv": _rng_f32(rng, 2, 4, 3, 3)},
        {"enc.0.q": "enc.0.q", "enc.0.v": "enc.0.q", "enc.0.o": "enc.0.o", "conv": "conv"},
        {"enc.0.q": np.array([0, 2, 4, 6]), "enc.0.v": np.array([6, 5, 4, 3, 0]),
         "enc.0.o": None, "conv": None},
        loss=0.6931471805599453, num_samples=2)
    weight = AdaptationData({}, {}, {}, loss=1.25, num_samples=9,
                            weight_grads={"classifier": (_rng_f32(rng, 3, 6), _rng_f32(rng, 3)),
                                          "head": (_rng_f32(rng, 2, 4), _rng_f32(rng, 2))})
    adapter = {"A": _rng_f32(rng, 2, 4), "B": _rng_f32(rng, 2, 2)}
    param = AdaptationData({}, {}, {}, num_samples=4,  # loss not computed: NaN, null on the wire
                           param_grads={"head": {"A": _rng_f32(rng, 2, 4),
                                                 "B": _rng_f32(rng, 2, 2)}},
                           param_at={"head": digest(adapter)})
    mixed = AdaptationData({"enc.0.o": _rng_f32(rng, 3, 4)}, {"enc.0.o": _rng_f32(rng, 3, 6)},
                           {"enc.0.o": "enc.0.o"}, {"enc.0.o": None}, loss=2.0, num_samples=3,
                           weight_grads={"classifier": (_rng_f32(rng, 3, 6), _rng_f32(rng, 3))},
                           param_grads={"head": {"A": _rng_f32(rng, 2, 4)}},
                           param_at={"head": digest({"A": adapter["A"]})})
    return {"rows": rows, "weight_gradient": weight, "parameter_gradient": param, "mixed": mixed}


def _decoded_adaptation(data: AdaptationData) -> dict:
    return {
        "inputs": {k: _array(v) for k, v in data.inputs.items()},
        "grads": [[k, _array(v)] for k, v in data.grads.items()],
        "input_of": list(map(list, data.input_of.items())),
        "rows": {k: None if v is None else [int(i) for i in v] for k, v in data.rows.items()},
        "loss": None if math.isnan(data.loss) else repr(float(data.loss)),
        "num_samples": int(data.num_samples),
        "weight_grads": [[k, [_array(g), _array(b)]] for k, (g, b) in data.weight_grads.items()],
        "param_grads": [[k, [[p, _array(v)] for p, v in ps.items()]]
                        for k, ps in data.param_grads.items()],
        "param_at": list(map(list, data.param_at.items())),
    }


def _split(blob: bytes) -> tuple[dict, bytes]:
    """A payload's safetensors header (as a dict) and its data section."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header: Any, data: bytes, *, raw: bytes | None = None) -> bytes:
    """A safetensors blob of ``header`` (or ``raw`` header bytes) and ``data``."""
    text = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    return len(text).to_bytes(8, "little") + text + data


def _with_cola(blob: bytes, change: Callable[[dict], Any]) -> bytes:
    """``blob`` with its cola-fed header changed by ``change`` (in place, or what it returns)."""
    header, data = _split(blob)
    cola = json.loads(header["__metadata__"]["cola"])
    result = change(cola)
    header["__metadata__"]["cola"] = result if isinstance(result, str) else json.dumps(cola)
    return _join(header, data)


def _with_header(blob: bytes, change: Callable[[dict], Any]) -> bytes:
    header, data = _split(blob)
    change(header)
    return _join(header, data)


def _set_value(blob: bytes, name: str, index: int, raw: bytes) -> bytes:
    """``blob`` with element ``index`` of tensor ``name`` overwritten by ``raw`` bytes."""
    header, _ = _split(blob)
    n = int.from_bytes(blob[:8], "little")
    start = 8 + n + header[name]["data_offsets"][0] + index * len(raw)
    return blob[:start] + raw + blob[start + len(raw):]


def _codec_vectors() -> dict:
    rng = np.random.default_rng(2024)
    state = {"enc.0.q": {"A": _rng_f32(rng, 2, 6), "B": _rng_f32(rng, 4, 2)},
             "classifier": {"weight": _rng_f32(rng, 3, 6), "bias": np.zeros(3, np.float32)},
             "empty": {}}
    batch = {"input_ids": rng.integers(0, 30522, (2, 5)).astype(np.int64),
             "attention_mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64),
             "labels": np.array([1, 0], np.int64), "pixels": _rng_f32(rng, 2, 3),
             "weights": np.array([0.5, 2.0], np.float64), "mask": np.array([True, False]),
             "small": np.array([3, 4], np.int32), "bytes": np.array([255, 0], np.uint8),
             "half": np.array([1.5, -0.25], np.float16)}
    metrics = {"loss": 0.6931471805599453, "accuracy": 1, "count": 12, "lr": 1e-05,
               "big": 9223372036854775807, "neg": -0.0}
    state_blob = codec.encode_adapter_state(state)
    batch_blob = codec.encode_batch(batch)
    metrics_blob = codec.encode_metrics(metrics)
    bundle_blob = codec.encode_bundle({"state": state_blob, "batches": batch_blob, "none": b""})
    valid = {
        "adapter_state": {"blob": _hex(state_blob),
                          "state": _state(codec.decode_adapter_state(state_blob))},
        "batch": {"blob": _hex(batch_blob),
                  "batch": [[k, _array(v)] for k, v in codec.decode_batch(batch_blob).items()]},
        "metrics": {"blob": _hex(metrics_blob),
                    "metrics": [[k, {"int": str(v)} if isinstance(v, int) else {"float": repr(v)}]
                                for k, v in codec.decode_metrics(metrics_blob).items()]},
        "bundle": {"blob": _hex(bundle_blob),
                   "parts": {k: _hex(v) for k, v in codec.decode_bundle(bundle_blob).items()}},
    }
    layout = LAYOUT.to_dict()
    adaptations = []
    for form, data in _adaptation_data(rng).items():
        for dtype in codec.WIRE_DTYPES:
            blob = codec.encode_adaptation(data, dtype=dtype)
            decoded = codec.decode_adaptation(blob, layout=LAYOUT)
            assert codec.encode_adaptation(decoded, dtype=dtype) == blob
            adaptations.append({"form": form, "dtype": dtype, "blob": _hex(blob),
                                "decoded": _decoded_adaptation(decoded)})
    casts_source = np.array([0.0, -0.0, 1.0, 0.1, 1 / 3, 65504.0, 65519.0, 65520.0, 1e6, -1e6,
                             6e-8, 3e-8, 2.98e-8, 6.1e-5, 6.09e-5, 1e-10, 1.00048828125,
                             1.000732421875, 1.0009765625, 3.0e38, -3.4e38, np.inf, -np.inf,
                             np.nan, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 1.0039062,
                             1.00390625, 1.01171875, 65536.0, 5.877472e-39],
                            np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        casts = _casts(casts_source, rng)
    return {"layout": layout, "valid": valid, "adaptations": adaptations, "casts": casts,
            "sources": {"state": _state(state),
                        "batch": [[k, _array(v)] for k, v in batch.items()],
                        "metrics": valid["metrics"]["metrics"],
                        "bundle_order": ["state", "batches", "none"]},
            "hostile": _hostile_payloads(state_blob, batch_blob, metrics_blob, bundle_blob,
                                         rng),
            "orders": _order_budgets()}


def _order_budgets() -> list[dict]:
    """The chunks of one TRAIN order decoded with one shared ``DecodeBudget`` (issue 22): what
    they take decoded and unfolded, all together, is within ``max_bytes`` or the chunk that
    overdraws it is refused, though every chunk passes the per-chunk rule alone. ``spent``:
    the budget after each chunk taken; ``error``: the refused chunk's error, else None."""
    rng = np.random.default_rng(22)
    rows = _adaptation_data(rng)["rows"]  # shared x, row indices, linear layers and a conv

    def conv(samples: int, height: int, width: int) -> bytes:
        d_shape = (samples, 4, *output_size(LAYOUT["conv"], height, width))
        return codec.encode_adaptation(AdaptationData(
            {"conv": _rng_f32(rng, samples, 2, height, width)}, {"conv": _rng_f32(rng, *d_shape)},
            {"conv": "conv"}, {"conv": None}, loss=1.0, num_samples=samples))

    convs = [conv(3, 9, 11), conv(2, 12, 8), conv(3, 9, 11)]
    mixed = [codec.encode_adaptation(rows, dtype="float16"), conv(2, 6, 6),
             codec.encode_adaptation(rows, dtype="bfloat16")]
    out = []
    for label, blobs in (("an interval of convolution chunks", convs),
                         ("rows and shared inputs in float16 and bfloat16, and a convolution",
                          mixed)):
        costs = []
        for blob in blobs:
            budget = codec.DecodeBudget(2**62)
            codec.decode_adaptation(blob, layout=LAYOUT, budget=budget)
            costs.append(budget.spent)
        total = sum(costs)
        assert max(costs) < total - 1 and max(len(b) for b in blobs) <= max(costs)
        for max_bytes, what in ((total, "exactly at the order's bound"),
                                (total - 1, "one byte above the order's bound"),
                                (max(costs), "each chunk within the cap, not all together")):
            budget = codec.DecodeBudget(max_bytes)
            limits = codec.Limits(max_bytes=max_bytes)
            spent, error = [], None
            for blob in blobs:
                # every chunk alone passes the per-chunk rule
                codec.decode_adaptation(blob, layout=LAYOUT, limits=limits)
                try:
                    codec.decode_adaptation(blob, layout=LAYOUT, limits=limits, budget=budget)
                except codec.MalformedPayloadError as err:
                    error = type(err).__name__
                    break
                spent.append(str(budget.spent))
            assert (error is None) is (max_bytes == total), (label, what)
            out.append({"label": f"{label}: {what}", "blobs": [_hex(b) for b in blobs],
                        "max_bytes": max_bytes, "spent": spent, "error": error})
    return out


def _casts(casts_source: np.ndarray, rng: np.random.Generator) -> dict:
    """float32 values and their fp16/bf16 wire bits (the lossy casts an encoder makes)."""
    casts_source = np.concatenate([casts_source, _rng_f32(rng, 64) * 100,
                                   np.frombuffer(rng.bytes(4 * 64), "<f4")])
    casts = {"float32": _hex(casts_source.astype("<f4").tobytes()),
             "float16": _hex(codec._to_wire(casts_source, "float16").view("<u2").tobytes()),
             "bfloat16": _hex(codec._to_wire(casts_source, "bfloat16").astype("<u2").tobytes())}
    return casts


def _hostile_payloads(state_blob: bytes, batch_blob: bytes, metrics_blob: bytes,
                      bundle_blob: bytes, rng: np.random.Generator) -> list[dict]:
    data = _adaptation_data(np.random.default_rng(5))
    rows = codec.encode_adaptation(data["rows"])
    rows16 = codec.encode_adaptation(data["rows"], dtype="float16")
    weight = codec.encode_adaptation(data["weight_gradient"])
    param = codec.encode_adaptation(data["parameter_gradient"])
    out: list[dict] = []

    def add(label: str, kind: str, blob: bytes, **options: Any) -> None:
        kwargs = dict(options)
        if "layout" in kwargs:
            kwargs["layout"] = LAYOUT
        if "limits" in kwargs:
            kwargs["limits"] = codec.Limits(**kwargs["limits"])
        if "expected_keys" in kwargs:
            kwargs["expected_keys"] = set(kwargs["expected_keys"])
        error = _error(lambda: codec.DECODERS[kind](blob, **kwargs))
        out.append({"label": label, "kind": kind, "blob": _hex(blob), "options": options,
                    "error": error})

    def drop(name: str) -> Callable[[dict], None]:
        return lambda h: h.pop(name)

    def add_tensor(name: str, dtype: str, shape: list[int]) -> Callable[[bytes], bytes]:
        """A blob with one more tensor at the end of the data section."""
        def make(blob: bytes) -> bytes:
            header, body = _split(blob)
            size = math.prod(shape) * {"F32": 4, "F16": 2, "U16": 2, "I32": 4, "I64": 8,
                                       "U8": 1, "BOOL": 1, "F64": 8}[dtype]
            header[name] = {"dtype": dtype, "shape": shape,
                            "data_offsets": [len(body), len(body) + size]}
            return _join(header, body + bytes(size))
        return make

    # the envelope
    add("empty", "batch", b"")
    add("seven bytes", "batch", b"\x08" + bytes(6))
    add("header length beyond the payload", "batch", (10**6).to_bytes(8, "little") + b"{}")
    add("header length past 2^63", "batch", (2**64 - 1).to_bytes(8, "little") + b"{}")
    add("header above the cap", "batch", batch_blob, limits={"max_header_bytes": 64})
    add("payload above the cap", "batch", batch_blob, limits={"max_bytes": 100})
    add("header not JSON", "batch", _join(None, b"", raw=b"{not json}"))
    add("header a list", "batch", _join([], b""))
    add("duplicate tensor names", "batch", _join(None, b"\x00" * 8, raw=(
        b'{"__metadata__":{"cola":"{\\"format\\":1,\\"kind\\":\\"batch\\",\\"keys\\":[\\"x\\"]}"},'
        b'"b/x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},'
        b'"b/x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}')))
    add("header nests too deep", "batch", _join(None, b"", raw=b'{"a":' + b"[" * 17 + b"]" * 17
                                                 + b"}"))
    add("header NaN", "batch", _join(None, b"", raw=b'{"a": NaN}'))
    add("header 20-digit integer", "batch", _join(None, b"", raw=b'{"a": 10000000000000000000}'))
    add("header BOM", "batch", _join(None, b"", raw=b"\xef\xbb\xbf{}"))
    add("header not UTF-8", "batch", _join(None, b"", raw=b'{"\xff": 1}'))
    add("no metadata", "batch", _with_header(batch_blob, drop("__metadata__")))
    add("metadata null", "batch", _with_header(batch_blob,
                                               lambda h: h.update({"__metadata__": None})))
    add("metadata extra key", "batch", _with_header(
        batch_blob, lambda h: h["__metadata__"].update({"other": "x"})))
    add("metadata not a string", "batch", _with_header(
        batch_blob, lambda h: h["__metadata__"].update({"cola": {"format": 1}})))
    add("cola header not JSON", "batch", _with_cola(batch_blob, lambda c: "{"))
    add("cola header a list", "batch", _with_cola(batch_blob, lambda c: "[]"))
    add("cola header duplicate key", "batch", _with_cola(
        batch_blob, lambda c: '{"format":1,"kind":"batch","keys":[],"keys":[]}'))
    add("cola header unpaired surrogate", "batch", _with_cola(
        batch_blob, lambda c: json.dumps(c)[:-1] + ',"x":"\\ud800"}'))
    add("format 2", "batch", _with_cola(batch_blob, lambda c: c.update({"format": 2})))
    add("format 1.0", "batch", _with_cola(batch_blob, lambda c: c.update({"format": 1.0})))
    add("format true", "batch", _with_cola(batch_blob, lambda c: c.update({"format": True})))
    add("wrong kind", "adapter-state", batch_blob)
    add("unknown field", "batch", _with_cola(batch_blob, lambda c: c.update({"extra": 1})))
    add("missing field", "batch", _with_cola(batch_blob, lambda c: c.pop("keys")))
    add("keys not a list", "batch", _with_cola(batch_blob, lambda c: c.update({"keys": "x"})))
    add("keys repeated", "batch", _with_cola(batch_blob, lambda c: c["keys"].append(
        c["keys"][0])))
    # tensor entries
    first = "b/input_ids"
    add("tensor name with a space", "batch", _with_header(
        batch_blob, lambda h: h.update({"b/a b": h.pop(first)})))
    add("tensor name too long", "batch", _with_header(
        batch_blob, lambda h: h.update({"b/" + "x" * 511: h.pop(first)})))
    add("tensor entry extra field", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"extra": 1})))
    add("tensor entry not an object", "batch", _with_header(
        batch_blob, lambda h: h.update({first: [1, 2]})))
    add("unknown dtype", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"dtype": "F8_E4M3"})))
    add("dtype I8", "batch", _with_header(batch_blob, lambda h: h[first].update({"dtype": "I8"})))
    add("five dimensions", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"shape": [1, 1, 1, 2, 5]})))
    add("negative dimension", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"shape": [-2, -5]})))
    add("dimension a float", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"shape": [2.0, 5]})))
    add("dimension a bool", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"shape": [True, 10]})))
    add("rows above the cap", "batch", batch_blob, limits={"max_rows": 1})
    add("empty tensor of huge dimensions", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"shape": [0, 2**40, 2**40]})))
    add("byte range of the wrong size", "batch", _with_header(
        batch_blob, lambda h: h[first]["data_offsets"].__setitem__(1, h[first]["data_offsets"][1]
                                                                  - 8)))
    add("byte range past the data", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"data_offsets": [10**6, 10**6 + 80]})))
    add("byte range reversed", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"data_offsets": [80, 0]})))
    add("byte range of three", "batch", _with_header(
        batch_blob, lambda h: h[first].update({"data_offsets": [0, 80, 80]})))
    add("too many tensors", "batch", batch_blob, limits={"max_tensors": 3})
    def overlap(h: dict) -> None:
        start = h["b/input_ids"]["data_offsets"][0]
        h["b/labels"]["data_offsets"] = [start, start + 16]

    add("tensors overlap", "batch", _with_header(batch_blob, overlap))
    add("trailing data", "batch", batch_blob + b"\x00" * 8)
    add("metrics trailing data", "metrics", metrics_blob + b"\x00")
    # values
    add("NaN in a float32 tensor", "batch", _set_value(batch_blob, "b/pixels", 1,
                                                       np.float32(np.nan).tobytes()))
    add("Inf in a float64 tensor", "batch", _set_value(batch_blob, "b/weights", 0,
                                                       np.float64(-np.inf).tobytes()))
    add("Inf in a float16 tensor", "batch", _set_value(batch_blob, "b/half", 1, b"\x00\x7c"))
    add("boolean 2", "batch", _set_value(batch_blob, "b/mask", 1, b"\x02"))
    add("NaN in an adapter state", "adapter-state", _set_value(
        state_blob, "a/enc.0.q/A", 3, np.float32(np.nan).tobytes()))
    add("NaN in x", "adaptation", _set_value(rows, "x/enc.0.q", 5, np.float32(np.nan).tobytes()))
    add("Inf in fp16 d", "adaptation", _set_value(rows16, "d/enc.0.v", 2, b"\x00\xfc"))
    add("NaN in G", "adaptation", _set_value(weight, "g/head", 0, np.float32(np.nan).tobytes()))
    add("NaN in a parameter gradient", "adaptation", _set_value(
        param, "p/head/B", 0, np.float32(np.nan).tobytes()))
    # batches
    add("batch tensors not in the header", "batch", _with_cola(
        batch_blob, lambda c: c.update({"keys": c["keys"][1:]})))
    add("batch keys not expected", "batch", batch_blob, expected_keys=["input_ids", "labels"])
    add("batch leading dimensions differ", "batch", add_tensor("b/odd", "I64", [3])(
        _with_cola(batch_blob, lambda c: c["keys"].append("odd"))))
    add("batch scalar tensor", "batch", add_tensor("b/odd", "I64", [])(
        _with_cola(batch_blob, lambda c: c["keys"].append("odd"))))
    # adapter states
    add("state tensor without prefix", "adapter-state", _with_header(
        state_blob, lambda h: h.update({"x/enc.0.q/A": h.pop("a/enc.0.q/A")})))
    add("state tensor of an unknown layer", "adapter-state", _with_header(
        state_blob, lambda h: h.update({"a/other/A": h.pop("a/enc.0.q/A")})))
    add("state tensor without a layer", "adapter-state", _with_header(
        state_blob, lambda h: h.update({"a/A": h.pop("a/enc.0.q/A")})))
    add("state float64 tensor", "adapter-state", add_tensor("a/empty/C", "F64", [1])(state_blob))
    add("state layer not adapted", "adapter-state",
        codec.encode_adapter_state({"ghost": {"A": np.zeros(2, np.float32)}}), layout=True)
    add("state shapes not expected", "adapter-state", state_blob, expected_shapes={
        "enc.0.q": {"A": [2, 6], "B": [4, 3]}, "classifier": {"weight": [3, 6], "bias": [3]},
        "empty": {}})
    add("state layers not expected", "adapter-state", state_blob, expected_shapes={
        "enc.0.q": {"A": [2, 6], "B": [4, 2]}, "classifier": {"weight": [3, 6], "bias": [3]}})
    add("state layer names invalid", "adapter-state", _with_cola(
        state_blob, lambda c: c.update({"layers": c["layers"] + ["bad name"]})))
    # bundles and metrics
    add("bundle part not uint8", "bundle", _with_header(
        bundle_blob, lambda h: h["part/state"].update(
            {"dtype": "I32", "shape": [h["part/state"]["shape"][0] // 4]})))
    add("bundle part 2-D", "bundle", _with_header(
        bundle_blob, lambda h: h["part/none"].update({"shape": [0, 1]})))
    add("bundle part not in the header", "bundle", _with_cola(
        bundle_blob, lambda c: c.update({"parts": ["state", "batches"]})))
    add("metrics with a tensor", "metrics", add_tensor("m/x", "F32", [1])(metrics_blob))
    add("metric a string", "metrics", _with_cola(
        metrics_blob, lambda c: c["metrics"].update({"loss": "0.5"})))
    add("metric a bool", "metrics", _with_cola(
        metrics_blob, lambda c: c["metrics"].update({"ok": True})))
    add("metric Infinity", "metrics", _with_cola(
        metrics_blob, lambda c: json.dumps(c)[:-2] + ',"inf":Infinity}}'))
    # adaptation data
    add("dtype float64", "adaptation", _with_cola(rows, lambda c: c.update({"dtype": "float64"})))
    add("wire dtype differs from the header", "adaptation", _with_cola(
        rows, lambda c: c.update({"dtype": "float16"})))
    add("layer in two forms", "adaptation", _with_cola(
        weight, lambda c: c.update({"layers": ["head"], "input_of": {"head": "head"},
                                    "rows": {"head": False}})))
    add("input_of disagrees", "adaptation", _with_cola(
        rows, lambda c: c["input_of"].pop("enc.0.o")))
    add("rows disagree", "adaptation", _with_cola(rows, lambda c: c["rows"].pop("conv")))
    add("rows flag not a bool", "adaptation", _with_cola(
        rows, lambda c: c["rows"].update({"conv": 0})))
    add("loss a string", "adaptation", _with_cola(rows, lambda c: c.update({"loss": "1"})))
    add("num_samples negative", "adaptation", _with_cola(
        rows, lambda c: c.update({"num_samples": -1})))
    add("num_samples a float", "adaptation", _with_cola(
        rows, lambda c: c.update({"num_samples": 2.0})))
    add("layer name invalid", "adaptation", _with_cola(
        rows, lambda c: c.update({"weight_gradient": ["a b"]})))
    add("digest not hex", "adaptation", _with_cola(
        param, lambda c: c["parameter_gradient"].update({"head": "X" * 64})))
    add("a tensor missing", "adaptation", _with_header(rows, drop("d/enc.0.o")))
    add("an x missing", "adaptation", _with_cola(
        rows, lambda c: c["input_of"].update({"enc.0.o": "ghost"})))
    add("a stray tensor", "adaptation", add_tensor("y/enc.0.q", "F32", [1])(rows))
    add("rows marked absent but sent", "adaptation", _with_cola(
        rows, lambda c: c["rows"].update({"enc.0.q": False})))
    add("a parameter gradient of an unnamed layer", "adaptation",
        add_tensor("p/classifier/A", "F32", [1])(param))
    add("a parameter-gradient layer with no tensor", "adaptation", _with_cola(
        param, lambda c: c["parameter_gradient"].update({"enc.0.o": "0" * 64})))
    add("a parameter gradient with an empty name", "adaptation",
        add_tensor("p/head/", "F32", [1])(param))
    add("x of another dtype", "adaptation", _with_header(
        rows, lambda h: h["x/enc.0.o"].update({"dtype": "F16", "shape": [3, 8]})))
    add("x 3-D", "adaptation", _with_header(rows, lambda h: h["x/enc.0.o"].update(
        {"shape": [3, 2, 2]})))
    add("layer not in the layout", "adaptation", _with_cola(_with_header(
        rows, lambda h: (h.update({"d/other": h.pop("d/enc.0.o")}),
                         h.update({"x/other": h.pop("x/enc.0.o")}))), lambda c: c.update(
        {"layers": ["enc.0.q", "enc.0.v", "other", "conv"],
         "input_of": {"enc.0.q": "enc.0.q", "enc.0.v": "enc.0.q", "other": "other",
                      "conv": "conv"},
         "rows": {"enc.0.q": True, "enc.0.v": True, "other": False, "conv": False}})),
        layout=True)
    add("d of the wrong width", "adaptation", _with_header(rows, lambda h: h["d/enc.0.o"].update(
        {"shape": [2, 9]})), layout=True)
    add("rows count differs", "adaptation", _with_header(rows, lambda h: h["d/enc.0.o"].update(
        {"shape": [2, 6], "data_offsets": [h["d/enc.0.o"]["data_offsets"][0],
                                           h["d/enc.0.o"]["data_offsets"][0] + 48]})))
    add("rows of floats", "adaptation", _with_header(
        rows, lambda h: h["rows/enc.0.q"].update({"dtype": "F32"})))
    add("rows of the wrong length", "adaptation", _with_header(
        rows, lambda h: h["rows/enc.0.q"].update({"shape": [2], "data_offsets": [
            h["rows/enc.0.q"]["data_offsets"][0], h["rows/enc.0.q"]["data_offsets"][0] + 8]})))
    add("row index out of range", "adaptation", _set_value(
        rows, "rows/enc.0.v", 0, np.int32(7).tobytes()))
    add("row index negative", "adaptation", _set_value(
        rows, "rows/enc.0.q", 3, np.int32(-1).tobytes()))
    add("conv geometry wrong", "adaptation", _with_header(rows, lambda h: h["d/conv"].update(
        {"shape": [2, 4, 3, 2], "data_offsets": [h["d/conv"]["data_offsets"][0],
                                                 h["d/conv"]["data_offsets"][0] + 4 * 48]})),
        layout=True)
    conv = data["rows"]
    conv_only = codec.encode_adaptation(AdaptationData(
        {"conv": conv.inputs["conv"]}, {"conv": conv.grads["conv"]}, {"conv": "conv"},
        {"conv": None}, loss=1.0, num_samples=2))
    add("conv unfolding above the cap", "adaptation", conv_only, layout=True,
        limits={"max_bytes": len(conv_only)})
    add("G of the wrong layout shape", "adaptation", _with_header(
        weight, lambda h: h["g/head"].update({"shape": [4, 2]})), layout=True)
    add("g_bias of the wrong length", "adaptation", _with_header(
        weight, lambda h: (h["g/head"].update({"shape": [1, 8]}),)))
    add("G 1-D", "adaptation", _with_header(weight, lambda h: h["g/head"].update({"shape": [8]})))
    add("a parameter gradient of another dtype", "adaptation", _with_header(
        param, lambda h: h["p/head/B"].update({"dtype": "F16", "shape": [2, 4]})))
    out.sort(key=lambda v: v["label"])
    assert len({v["label"] for v in out}) == len(out)
    return out


def vectors() -> dict:
    return {"json": _json_vectors(), "seal": _seal_vectors(), "identity": _identity_vectors(),
            "codec": _codec_vectors()}
