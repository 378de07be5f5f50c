"""Conformance vectors of Flower 1.42's node-side wire, computed with flwr's own classes.

- ``messages``: Messages (an instruction with config/array/metric records of every value type,
  replies built by ``Message(content | error, reply_to=...)`` at a fixed clock, one with arrays
  larger than a chunk) with their whole object trees: ``objects`` maps each object id to its
  bytes (hex; ``null`` for ArrayChunks of the large vector, which only list their ids), ``order``
  is Flower's push order (children first) and ``tree`` the ``ObjectTree``.
- ``hostile``: object trees Flower refuses to inflate (tampered bytes, a missing child, unknown
  class, wrong lengths, bad references, ...) with the exception class Python raises; a
  JavaScript node must refuse each with ``FleetError``.
- ``blobs``: ``blob_to_record`` outputs and ``record_to_blob`` inputs, accepted or refused
  (``MalformedPayloadError``).
- ``auth``: a fixed P-384 key in the formats a node may be given (OpenSSH as
  ``--auth-supernode-private-key`` reads it, PKCS#8, SEC1), its PEM public key, timestamps as
  ``datetime.isoformat()`` writes them, and ECDSA signatures made by ``cryptography`` (randomised,
  so vectors of the verify side) that JavaScript must read back.

Typed record values are ``{"t": kind, "v": value}``: ``int`` (decimal string), ``float``
(16 hex digits of the big-endian IEEE double), ``bool``, ``str``, ``bytes`` (hex), and
``{"t": "list", "of": kind, "v": [values as above, untagged]}`` (``of`` is ``empty`` for []).
"""

from __future__ import annotations

import datetime
import struct
from typing import Any
from unittest import mock

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message import message as message_module
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from flwr.proto.recorddict_pb2 import ConfigRecord as ProtoConfigRecord  # pylint: disable=E0611
from flwr.supercore.inflatable.inflatable_object import (
    get_object_head_values_from_object_content,
    get_object_id,
)
from flwr.supercore.inflatable.inflatable_utils import (
    inflate_object_from_contents,
    validate_object_content,
)

from cola_fed.federation.records import blob_to_record, record_to_blob

INSTRUCTION_TIME = 1750000000.25
REPLY_TIME = 1750000123.5


# ------------------------------------------------------------------ describing values

def _float_hex(value: float) -> str:
    return struct.pack(">d", value).hex()


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bytes):
        return "bytes"
    raise TypeError(type(value))


def _raw(value: Any) -> Any:
    kind = _kind(value)
    if kind == "int":
        return str(value)
    if kind == "float":
        return _float_hex(value)
    if kind == "bytes":
        return value.hex()
    return value


def typed(value: Any) -> dict[str, Any]:
    """A record value as ``{"t", "v"}`` (lists say their element kind)."""
    if isinstance(value, list):
        return {"t": "list", "of": _kind(value[0]) if value else "empty",
                "v": [_raw(v) for v in value]}
    return {"t": _kind(value), "v": _raw(value)}


def _pattern(n: int) -> bytes:
    """Deterministic array data the JavaScript side regenerates: byte i = (7 i + 3) mod 256."""
    return ((np.arange(n, dtype=np.int64) * 7 + 3) % 256).astype(np.uint8).tobytes()


def describe_array(array: Array, *, large: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"dtype": array.dtype, "shape": list(array.shape), "stype": array.stype}
    data = bytes(array.data)
    if not large:
        out["data"] = data.hex()
    elif data == bytes(len(data)):
        out["zeros"] = len(data)
    else:
        assert data == _pattern(len(data))
        out["pattern"] = len(data)
    return out


def describe_content(content: RecordDict, *, large: bool = False) -> list[dict[str, Any]]:
    """Records in the RecordDict's order: ``{"name", "kind", "items"}`` (items in order)."""
    out = []
    for name, record in content.items():
        if isinstance(record, ConfigRecord):
            out.append({"name": name, "kind": "config",
                        "items": [[k, typed(v)] for k, v in record.items()]})
        elif isinstance(record, MetricRecord):
            out.append({"name": name, "kind": "metric",
                        "items": [[k, typed(v)] for k, v in record.items()]})
        else:
            out.append({"name": name, "kind": "array",
                        "items": [[k, describe_array(a, large=large)] for k, a in record.items()]})
    return out


def describe_metadata(meta: Metadata) -> dict[str, Any]:
    out = {"run_id": str(meta.run_id), "message_id": meta.message_id,
           "src_node_id": str(meta.src_node_id), "dst_node_id": str(meta.dst_node_id),
           "reply_to_message_id": meta.reply_to_message_id, "group_id": meta.group_id,
           "ttl": _float_hex(meta.ttl), "message_type": meta.message_type,
           "created_at": _float_hex(meta.created_at)}
    if meta.src_task_id is not None:
        out["src_task_id"] = str(meta.src_task_id)
    if meta.dst_task_id is not None:
        out["dst_task_id"] = str(meta.dst_task_id)
    return out


def _tree(obj) -> dict[str, Any]:
    return {"id": obj.object_id,
            "children": [_tree(c) for c in (obj.children or {}).values()]}


def _all_objects(obj, out: dict[str, bytes]) -> None:
    for child in (obj.children or {}).values():
        _all_objects(child, out)
    out.setdefault(obj.object_id, obj.deflate())


def describe_message(message: Message, *, large: bool = False) -> dict[str, Any]:
    objects: dict[str, bytes] = {}
    _all_objects(message, objects)
    out: dict[str, Any] = {
        "metadata": describe_metadata(message.metadata),
        "message_id": message.object_id,
        "tree": _tree(message),
        "order": list(objects),
        "objects": {k: (None if large and v.startswith(b"ArrayChunk ") else v.hex())
                    for k, v in objects.items()},
    }
    if message.has_content():
        out["content"] = describe_content(message.content, large=large)
    else:
        out["error"] = {"code": str(message.error.code), "reason": message.error.reason or ""}
    # Flower itself must read the tree back to the same message.
    back = inflate_object_from_contents(message.object_id, dict(objects))
    assert isinstance(back, Message) and back.object_id == message.object_id
    return out


# ------------------------------------------------------------------ messages

def instruction_content() -> RecordDict:
    clear = ConfigRecord({
        "int": 42, "negative": -7, "int64-min": -(2**63), "int64-max": 2**63 - 1,
        "uint64": 2**64 - 1, "float": 0.1, "minus-zero": -0.0, "integral-float": 3.0,
        "tiny": 5e-324, "true": True, "false": False,
        "str": "h\u00e9llo \u2713 \U0001d11e \"q\" \\ \n\t\x01", "empty-str": "",
        "bytes": bytes(range(256)), "empty-bytes": b"",
        "ints": [1, -2, 2**62], "uints": [1, 2**64 - 1], "floats": [1.5, -2.25, 1e300],
        "bools": [True, False, True], "strs": ["a", "", "\u00fc"], "bytes-list": [b"\x00", b""],
        "empty-list": [],
    })
    arrays = ArrayRecord({
        "1": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "0": Array(np.array([-1, 0, 2**40], dtype=np.int64)),
        "empty": Array(np.zeros((0,), dtype=np.float32)),
        "n\u00e4me \"x\"": Array(np.array([True, False])),
        "raw": Array(dtype="custom", shape=(3,), stype="raw-bytes", data=b"abc"),
        "same-as-1": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
    })
    metrics = MetricRecord({"loss": 0.5, "steps": 10, "big": 2**64 - 2, "curve": [1.0, 2.5],
                            "counts": [3, 4], "none": []})
    return RecordDict({"clear": clear, "graphs": ConfigRecord({"a.onnx": b"\x08\x07"}),
                       "arrays": arrays, "sealed": blob_to_record(b"sealed bytes"),
                       "metrics": metrics})


def instruction(content: RecordDict | None = None, *, ttl: float = 43200.0) -> Message:
    meta = Metadata(run_id=2**63 + 5, message_id="", src_node_id=1,
                    dst_node_id=12345678901234567890, reply_to_message_id="", group_id="3",
                    created_at=INSTRUCTION_TIME, ttl=ttl, message_type="query",
                    src_task_id=None, dst_task_id=77)
    msg = make_message(metadata=meta, content=content if content is not None else RecordDict())
    msg.metadata.__dict__["_message_id"] = msg.object_id  # as the SuperLink sets it
    return msg


def reply_to(ins: Message, body: RecordDict | Error) -> Message:
    """``Message(body, reply_to=ins)`` with Flower's clock fixed at REPLY_TIME."""
    fixed = datetime.datetime.fromtimestamp(REPLY_TIME, tz=datetime.UTC)
    with mock.patch.object(message_module, "now", return_value=fixed):
        reply = Message(body, reply_to=ins)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    return reply


def large_content() -> RecordDict:
    chunk = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    return RecordDict({"big": ArrayRecord({
        "pattern": Array(dtype="uint8", shape=(chunk + 1000,), stype="raw",
                         data=_pattern(chunk + 1000)),
        "zeros": Array(dtype="uint8", shape=(2 * chunk,), stype="raw", data=bytes(2 * chunk)),
    })})


def message_vectors() -> dict[str, Any]:
    ins = instruction(instruction_content())
    hello_reply = RecordDict({"clear": ConfigRecord({"node-public-key": bytes(range(32))}),
                              "sealed": blob_to_record(bytes(range(200)))})
    return {
        "chunk_size": FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE,
        "reply_time": _float_hex(REPLY_TIME),
        "instruction": describe_message(ins),
        "empty_instruction": describe_message(instruction()),
        "reply_content": describe_message(reply_to(ins, hello_reply)),
        "reply_error": describe_message(reply_to(ins, Error(code=3, reason="boom \u2717"))),
        "reply_error_no_reason": describe_message(reply_to(ins, Error(code=-1))),
        "large": describe_message(instruction(large_content()), large=True),
    }


# ------------------------------------------------------------------ hostile trees

def _obj(cls: str, children: list[str], body: bytes) -> bytes:
    return f"{cls} {','.join(children)} {len(body)}".encode() + b"\x00" + body


def _tree_from_heads(object_id: str, objects: dict[str, bytes]) -> dict[str, Any]:
    content = objects.get(object_id)
    if content is None:
        return {"id": object_id, "children": []}
    try:
        _, children, _ = get_object_head_values_from_object_content(content)
    except Exception:  # pylint: disable=broad-except
        children = []
    children = [c for c in children if len(c) == 64]
    return {"id": object_id, "children": [_tree_from_heads(c, objects) for c in children]}


def _python_refusal(root: str, objects: dict[str, bytes]) -> str:
    """The exception class Flower's node-side code raises on this tree (or "ok")."""
    try:
        def visit(tree):
            for child in tree["children"]:
                visit(child)
            content = objects[tree["id"]]
            if get_object_id(content) != tree["id"]:  # InMemoryObjectStore.put
                raise ValueError("Object ID does not match content hash")
            validate_object_content(content)
        visit(_tree_from_heads(root, objects))
        msg = inflate_object_from_contents(root, dict(objects), keep_object_contents=True)
        if not isinstance(msg, Message):  # pull_and_inflate_object_from_tree
            raise TypeError(f"Expected object of type Message, but got {type(msg).__name__}")
        return "ok"
    except Exception as err:  # pylint: disable=broad-except
        return type(err).__name__


def _replace(objects: dict[str, bytes], old: str,
             new_content: bytes) -> tuple[dict[str, bytes], str]:
    """Replace one object and rewrite every ancestor's references to it (ids change upwards)."""
    new_id = get_object_id(new_content)
    out = {k: v for k, v in objects.items() if k != old}
    out[new_id] = new_content
    changed = {old: new_id}
    while changed:
        (o, n), = [changed.popitem()]
        for k, v in list(out.items()):
            if o.encode() in v and k != n:
                updated = v.replace(o.encode(), n.encode())
                del out[k]
                uid = get_object_id(updated)
                out[uid] = updated
                changed[k] = uid
    return out, new_id


def hostile_vectors() -> list[dict[str, Any]]:
    base_msg = instruction(RecordDict({
        "cfg": ConfigRecord({"a": 1}),
        "arr": ArrayRecord({"x": Array(dtype="uint8", shape=(3,), stype="raw", data=b"xyz")}),
    }))
    base: dict[str, bytes] = {}
    _all_objects(base_msg, base)
    kinds = {k: v.split(b" ", 1)[0].decode() for k, v in base.items()}
    by_kind = {v: k for k, v in kinds.items()}
    root = base_msg.object_id
    cases: list[tuple[str, str, dict[str, bytes]]] = []

    def root_of(objs: dict[str, bytes]) -> str:
        return next(k for k, v in objs.items() if v.startswith(b"Message "))

    # Bytes that do not match their id.
    tampered = dict(base)
    cfg = by_kind["ConfigRecord"]
    tampered[cfg] = tampered[cfg][:-1] + bytes([tampered[cfg][-1] ^ 1])
    cases.append(("tampered_bytes", root, tampered))
    # A child missing.
    missing = {k: v for k, v in base.items() if kinds[k] != "ArrayChunk"}
    cases.append(("missing_chunk", root, missing))
    # Unknown class name.
    objs, _ = _replace(base, cfg, base[cfg].replace(b"ConfigRecord", b"ConfigRecorx", 1))
    cases.append(("unknown_class", root_of(objs), objs))
    # A chunk that claims to be a ConfigRecord.
    chunk = by_kind["ArrayChunk"]
    objs, _ = _replace(base, chunk, _obj("ConfigRecord", [], b"xyz"))
    cases.append(("chunk_as_config_record", root_of(objs), objs))
    # A body length that does not match.
    body = base[cfg].split(b"\x00", 1)[1]
    objs, _ = _replace(base, cfg, _obj("ConfigRecord", [], body)[:-1])
    cases.append(("body_length_mismatch", root_of(objs), objs))
    # An ArrayRecord whose head lists a child its body does not reference.
    arr_rec = by_kind["ArrayRecord"]
    array_id = by_kind["Array"]
    body = base[arr_rec].split(b"\x00", 1)[1]
    objs, _ = _replace(base, arr_rec, _obj("ArrayRecord", [array_id, chunk], body))
    cases.append(("extra_child_in_head", root_of(objs), objs))
    # Chunk index out of range.
    objs, _ = _replace(base, array_id, _obj(
        "Array", [chunk],
        b'{"dtype": "uint8", "shape": [3], "stype": "raw", "arraychunk_ids": [1]}'))
    cases.append(("chunk_index_out_of_range", root_of(objs), objs))
    # An ArrayRecord body that is not a JSON object.
    objs, _ = _replace(base, arr_rec, _obj("ArrayRecord", [array_id], b"[]"))
    cases.append(("array_record_body_not_object", root_of(objs), objs))
    # A RecordDict entry that is an ArrayChunk.
    rd = by_kind["RecordDict"]
    objs, _ = _replace(base, rd, _obj("RecordDict", [chunk], b'{"x": "%s"}' % chunk.encode()))
    cases.append(("record_is_a_chunk", root_of(objs), objs))
    # A ConfigRecord item without a value.
    empty_value = ProtoConfigRecord(items=[ProtoConfigRecord.Item(key="a")]).SerializeToString()
    objs, _ = _replace(base, cfg, _obj("ConfigRecord", [], empty_value))
    cases.append(("config_value_unset", root_of(objs), objs))
    # A Message with neither content nor error.
    msg_body = base[root].split(b"\x00", 1)[1]
    objs = {k: v for k, v in base.items()}
    lonely = _obj("Message", [], msg_body)
    objs[get_object_id(lonely)] = lonely
    cases.append(("message_without_content_or_error", get_object_id(lonely), objs))
    # The root is not a Message.
    cases.append(("root_not_message", rd, {k: v for k, v in base.items() if k != root}))
    # A child id in a head that is not a SHA-256.
    objs, _ = _replace(base, arr_rec, _obj("ArrayRecord", [array_id, "z" * 64], body))
    cases.append(("invalid_child_id", root_of(objs), objs))
    # Protobuf garbage as a ConfigRecord.
    objs, _ = _replace(base, cfg, _obj("ConfigRecord", [], b"\xff\xff\xff"))
    cases.append(("config_record_garbage", root_of(objs), objs))

    out = []
    for name, root_id, objs in cases:
        error = _python_refusal(root_id, objs)
        assert error != "ok", f"Flower accepts hostile case {name}"
        tree = _tree_from_heads(root_id, objs)
        reachable: set[str] = set()

        def collect(node: dict[str, Any], reachable: set[str] = reachable) -> None:
            reachable.add(node["id"])
            for child in node["children"]:
                collect(child, reachable)
        collect(tree)
        out.append({"name": name, "python_error": error, "error": "FleetError", "tree": tree,
                    "objects": {k: v.hex() for k, v in objs.items() if k in reachable}})
    assert _python_refusal(root, base) == "ok"
    return out


# ------------------------------------------------------------------ blobs

def _npy(header: str, *, version: tuple[int, int] = (1, 0), data: bytes = b"") -> bytes:
    raw = header.encode("latin1")
    if version == (1, 0):
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(raw)) + raw + data


def blob_vectors() -> dict[str, Any]:
    made = []
    for blob in (b"", b"hello", bytes(range(256)) * 5):
        record = blob_to_record(blob)
        made.append({"blob": blob.hex(),
                     "record": [[k, describe_array(a)] for k, a in record.items()]})

    def arr(data: bytes, *, dtype="uint8", shape=None, stype="numpy.ndarray") -> Array:
        return Array(dtype=dtype, shape=shape if shape is not None else (len(data),),
                     stype=stype, data=data)

    good = bytes(blob_to_record(b"abc")["payload"].data)
    cases: dict[str, ArrayRecord] = {
        "made_by_blob_to_record": ArrayRecord({"payload": arr(good)}),
        "v2_header": ArrayRecord({"payload": arr(_npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }\n", version=(2, 0),
            data=b"abc"))}),
        "descr_B_double_quotes_any_order": ArrayRecord({"payload": arr(_npy(
            '{"shape": (3,), "fortran_order": True, "descr": "B"}', data=b"abc"))}),
        "extra_record": ArrayRecord({"payload": arr(good), "more": arr(good)}),
        "wrong_name": ArrayRecord({"blob": arr(good)}),
        "wrong_dtype": ArrayRecord({"payload": arr(good, dtype="int8")}),
        "two_dimensional": ArrayRecord({"payload": arr(good, shape=(1, len(good)))}),
        "wrong_stype": ArrayRecord({"payload": arr(good, stype="raw")}),
        "bad_magic": ArrayRecord({"payload": arr(b"\x93NUMPZ" + good[6:])}),
        "version_3": ArrayRecord({"payload": arr(b"\x93NUMPY\x03\x00" + good[8:])}),
        "length_mismatch": ArrayRecord({"payload": arr(good + b"!")}),
        "float_descr": ArrayRecord({"payload": arr(_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", data=b"abc"))}),
        "truncated_header": ArrayRecord({"payload": arr(good[:20])}),
        "fortran_order_not_bool": ArrayRecord({"payload": arr(_npy(
            "{'descr': '|u1', 'fortran_order': 0, 'shape': (3,), }", data=b"abc"))}),
        "header_not_dict": ArrayRecord({"payload": arr(_npy("[1, 2]", data=b"abc"))}),
        "shape_not_tuple": ArrayRecord({"payload": arr(_npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (3), }", data=b"abc"))}),
        "missing_key": ArrayRecord({"payload": arr(_npy(
            "{'descr': '|u1', 'shape': (3,), }", data=b"abc"))}),
        "two_d_header": ArrayRecord({"payload": arr(_npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 3), }", data=b"abc"))}),
        "syntax_error": ArrayRecord({"payload": arr(_npy("{'descr': ", data=b"abc"))}),
    }
    read = []
    for name, record in cases.items():
        try:
            blob = bytes(record_to_blob(record))
            outcome: dict[str, Any] = {"blob": blob.hex(), "error": None}
        except Exception as err:  # pylint: disable=broad-except
            outcome = {"error": type(err).__name__}
        read.append({"name": name, "record": [[k, describe_array(a)] for k, a in record.items()],
                     **outcome})
    return {"made": made, "read": read}


# ------------------------------------------------------------------ node auth

def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def openssh_private_key(key: ec.EllipticCurvePrivateKey, comment: bytes = b"node") -> bytes:
    """The unencrypted openssh-key-v1 file of an ECDSA key with fixed check integers (OpenSSH
    draws them at random), checked to load with ``load_ssh_private_key`` as Flower loads it."""
    curve = {"secp256r1": b"nistp256", "secp384r1": b"nistp384"}[key.curve.name]
    q = key.public_key().public_bytes(serialization.Encoding.X962,
                                      serialization.PublicFormat.UncompressedPoint)
    d = key.private_numbers().private_value
    # mpint: a leading 0 when the top bit is set
    d_bytes = d.to_bytes((d.bit_length() + 8) // 8, "big")
    key_type = b"ecdsa-sha2-" + curve
    public_blob = _ssh_string(key_type) + _ssh_string(curve) + _ssh_string(q)
    private = (struct.pack(">II", 0x01020304, 0x01020304) + _ssh_string(key_type)
               + _ssh_string(curve) + _ssh_string(q) + _ssh_string(d_bytes) + _ssh_string(comment))
    pad = 1
    while len(private) % 8:
        private += bytes([pad])
        pad += 1
    body = (b"openssh-key-v1\x00" + _ssh_string(b"none") + _ssh_string(b"none") + _ssh_string(b"")
            + struct.pack(">I", 1) + _ssh_string(public_blob) + _ssh_string(private))
    import base64
    b64 = base64.b64encode(body).decode()
    pem = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
           + "\n".join(b64[i:i + 70] for i in range(0, len(b64), 70))
           + "\n-----END OPENSSH PRIVATE KEY-----\n").encode()
    loaded = serialization.load_ssh_private_key(pem, None)
    assert loaded.private_numbers() == key.private_numbers()
    return pem


def auth_vectors() -> dict[str, Any]:
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, verify_signature

    keys = {}
    for name, curve, scalar in (("p384", ec.SECP384R1(), 0x1234567890ABCDEF * 2**300 + 99),
                                ("p256", ec.SECP256R1(), 0xC0FFEE * 2**200 + 7)):
        key = ec.derive_private_key(scalar, curve)
        public_pem = public_key_to_bytes(key.public_key())
        signatures = []
        for i in range(8):
            message = f"2025-03-01T12:34:{i:02d}.123456+00:00".encode()
            sig = key.sign(message, ec.ECDSA(hashes.SHA256()))
            assert verify_signature(key.public_key(), message, sig)
            signatures.append({"message": message.hex(), "der": sig.hex()})
        keys[name] = {
            "openssh": openssh_private_key(key).decode(),
            "pkcs8": key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode(),
            "sec1": key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()).decode(),
            "public_pem": public_pem.decode(),
            "signatures": signatures,
        }
    stamps = []
    for micro in (789000, 0, 1000):
        when = datetime.datetime(2025, 3, 1, 2, 4, 6, micro, tzinfo=datetime.UTC)
        stamps.append({"ms": round(when.timestamp() * 1000), "iso": when.isoformat()})
    return {"keys": keys, "timestamps": stamps}


def vectors() -> dict[str, Any]:
    return {"messages": message_vectors(), "hostile": hostile_vectors(),
            "blobs": blob_vectors(), "auth": auth_vectors()}
