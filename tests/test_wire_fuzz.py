"""Hostile bytes against every decoder: each input decodes or raises MalformedPayloadError.

Random bytes, bit flips, truncations and header mutations (duplicate keys, NaN/Infinity, floats
overflowing to inf, 10 000-deep nesting, 5000-digit integers, wrong types for every field,
containers where strings belong, UTF-16 headers, unknown fields) reach the decoders; no other
exception type may escape. Pinned cases check that each named malformed class is refused, also
where Python's own :func:`json.loads` would accept it.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cola_fed import AdaptationData
from cola_fed.errors import MalformedPayloadError
from cola_fed.wire import (
    DECODERS,
    decode_adaptation,
    encode_adaptation,
    encode_adapter_state,
    encode_batch,
    encode_bundle,
    encode_metrics,
)
from cola_fed.wire.strict_json import dumps_canonical, loads_strict

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def valid_payloads() -> dict[str, bytes]:
    """One small valid payload per kind; the adaptation shares ``x`` and maps rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    adaptation = AdaptationData(
        {"x": x}, {"q": rng.standard_normal((4, 2)).astype(np.float32),
                   "v": rng.standard_normal((2, 5)).astype(np.float32)},
        {"q": "x", "v": "x"}, {"q": None, "v": np.array([0, 3])}, loss=0.5, num_samples=2)
    state = encode_adapter_state({"q": {"A": rng.standard_normal((2, 3)).astype(np.float32),
                                        "B": np.zeros((3, 2), np.float32)}})
    batch = encode_batch({"input_ids": rng.integers(0, 50, (2, 4)),
                          "attention_mask": np.ones((2, 4), dtype=np.bool_),
                          "labels": np.array([0.5, 1.0], np.float32)})
    return {"adaptation": encode_adaptation(adaptation), "adapter-state": state, "batch": batch,
            "metrics": encode_metrics({"loss": 0.25, "n": 3}),
            "bundle": encode_bundle({"state": state, "batch": batch})}


VALID = valid_payloads()
KINDS = sorted(VALID)


def outcome(kind: str, blob: Any) -> str:
    """``"accepted"`` or ``"refused"``; any other exception fails the test that called it."""
    try:
        DECODERS[kind](blob)
    except MalformedPayloadError:
        return "refused"
    return "accepted"


def split(blob: bytes) -> tuple[dict, dict, bytes]:
    """``(safetensors header, cola header, data section)`` of a valid payload."""
    size = int.from_bytes(blob[:8], "little")
    outer = json.loads(blob[8:8 + size])
    return outer, json.loads(outer["__metadata__"]["cola"]), blob[8 + size:]


def join(outer_text: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(outer_text)) + outer_text + data


def with_outer(kind: str, outer_text: str | bytes) -> bytes:
    """``kind``'s valid payload with its safetensors header replaced by ``outer_text``."""
    raw = outer_text.encode() if isinstance(outer_text, str) else outer_text
    return join(raw, split(VALID[kind])[2])


def with_cola(kind: str, cola_text: str) -> bytes:
    """``kind``'s valid payload with its cola header replaced by the raw JSON ``cola_text``."""
    outer, _, data = split(VALID[kind])
    outer["__metadata__"]["cola"] = cola_text
    return join(json.dumps(outer).encode(), data)


def with_field(kind: str, key: str, literal: str) -> bytes:
    """``kind``'s payload whose cola field ``key`` holds the JSON text ``literal`` verbatim."""
    cola = split(VALID[kind])[1]
    cola[key] = "@@"
    return with_cola(kind, json.dumps(cola).replace('"@@"', literal))


# --------------------------------------------------------------------------------------------
# the fixtures are valid


@pytest.mark.parametrize("kind", KINDS)
def test_valid_payloads_decode(kind):
    assert outcome(kind, VALID[kind]) == "accepted"


def test_adaptation_round_trip_keeps_shared_rows_and_unknown_loss():
    back = decode_adaptation(VALID["adaptation"])
    assert back.input_of == {"q": "x", "v": "x"} and back.rows["v"].tolist() == [0, 3]
    unknown = AdaptationData({"x": np.ones((1, 2), np.float32)},
                             {"q": np.ones((1, 2), np.float32)}, {"q": "x"})
    assert np.isnan(decode_adaptation(encode_adaptation(unknown)).loss)


# --------------------------------------------------------------------------------------------
# (a) random bytes


@FUZZ
@given(kind=st.sampled_from(KINDS), blob=st.binary(max_size=400))
def test_random_bytes(kind, blob):
    assert outcome(kind, blob) == "refused"


@FUZZ
@given(kind=st.sampled_from(KINDS), body=st.binary(max_size=400), tail=st.binary(max_size=64))
def test_random_bytes_behind_a_plausible_length(kind, body, tail):
    assert outcome(kind, join(body, tail)) == "refused"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_random_json_in_every_cola_field(kind, data):
    cola = split(VALID[kind])[1]
    key = data.draw(st.sampled_from(sorted(cola)))
    cola[key] = data.draw(JSON)
    assert outcome(kind, with_cola(kind, json.dumps(cola))) in ("accepted", "refused")


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_random_json_in_the_safetensors_header(kind, data):
    outer = split(VALID[kind])[0]
    key = data.draw(st.sampled_from(sorted(outer)))
    target = outer[key]
    if isinstance(target, dict) and target and data.draw(st.booleans()):
        target[data.draw(st.sampled_from(sorted(target)))] = data.draw(JSON)
    else:
        outer[key] = data.draw(JSON)
    assert outcome(kind, with_outer(kind, json.dumps(outer))) in ("accepted", "refused")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("blob", [None, "text", 12, [1, 2], {"a": 1}, np.zeros(16, np.uint8)])
def test_non_bytes_inputs_are_refused(kind, blob):
    assert outcome(kind, blob) == "refused"


def test_memoryviews_are_read_as_their_bytes():
    blob = VALID["batch"]
    assert outcome("batch", memoryview(blob)) == "accepted"
    padded = blob + b"\0" * (-len(blob) % 4)
    wide = memoryview(np.frombuffer(padded, np.uint8).copy()).cast("B").cast("i")
    assert outcome("batch", wide) == ("accepted" if padded == blob else "refused")
    spread = np.zeros(2 * len(blob), np.uint8)
    spread[::2] = np.frombuffer(blob, np.uint8)  # the right bytes, but not contiguous
    assert outcome("batch", memoryview(spread[::2])) == "refused"
    released = memoryview(blob)
    released.release()
    assert outcome("batch", released) == "refused"


# --------------------------------------------------------------------------------------------
# (b) valid payloads, mutated


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_bit_flips(kind, data):
    blob = bytearray(VALID[kind])
    for _ in range(data.draw(st.integers(1, 4))):
        bit = data.draw(st.integers(0, len(blob) * 8 - 1))
        blob[bit // 8] ^= 1 << (bit % 8)
    assert outcome(kind, bytes(blob)) in ("accepted", "refused")


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_truncation(kind, data):
    blob = VALID[kind]
    cut = data.draw(st.integers(0, len(blob) - 1))
    assert outcome(kind, blob[:cut]) == "refused"


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_byte_overwrites_in_the_header(kind, data):
    blob = bytearray(VALID[kind])
    end = 8 + int.from_bytes(blob[:8], "little")
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(8, end - 1))] = data.draw(st.sampled_from(b'{}[]",:0-eN\\ a'))
    assert outcome(kind, bytes(blob)) in ("accepted", "refused")


def cola_fields() -> list[tuple[str, str]]:
    return [(kind, key) for kind in KINDS for key in sorted(split(VALID[kind])[1])]


#: JSON texts of the wrong type for any field (every field is a string, number, list or dict).
WRONG = ["null", "true", "false", "0", "-1", "1.5", '""', '"adaptation"', "[]", "{}", "[[]]",
         '[{"a":1}]', '{"q":[]}', '{"q":{}}', '{"q":1}', '{"q":"x"}', '[1,2]', '["q","q"]',
         '["q",["x"]]', '{"q":["x"]}', '{"q":{"x":1}}', '["bad name!"]', "NaN", "Infinity",
         "-Infinity", "1e999", "1" * 5000, "[" * 10_000 + "]" * 10_000]


#: Literals of WRONG that are in fact well-typed values of a field.
STILL_VALID = {("adaptation", "kind"): {'"adaptation"'},
               ("adaptation", "loss"): {"null", "0", "-1", "1.5"},
               ("adaptation", "num_samples"): {"0"},
               ("adaptation", "weight_gradient"): {"[]"},
               ("adaptation", "parameter_gradient"): {"{}"},
               ("metrics", "metrics"): {"{}", '{"q":1}'}}


@pytest.mark.parametrize("kind, key", cola_fields())
def test_wrong_types_for_every_cola_field(kind, key):
    for literal in WRONG:
        if literal not in STILL_VALID.get((kind, key), ()):
            assert outcome(kind, with_field(kind, key, literal)) == "refused", (key, literal)


def tensor_fields() -> list[tuple[str, str, str]]:
    return [(kind, name, field) for kind in KINDS
            for name, info in split(VALID[kind])[0].items() if name != "__metadata__"
            for field in sorted(info)][::3]  # a third of them: each kind and field still occurs


@pytest.mark.parametrize("kind, name, field", tensor_fields())
def test_wrong_types_for_every_tensor_field(kind, name, field):
    outer = split(VALID[kind])[0]
    for literal in WRONG:
        outer[name][field] = "@@"
        text = json.dumps(outer).replace('"@@"', literal)
        assert outcome(kind, with_outer(kind, text)) == "refused", (name, field, literal)


# --------------------------------------------------------------------------------------------
# every named malformed class is refused, also where json.loads would accept it


def duplicate_cola_key(kind: str) -> bytes:
    text = json.dumps(split(VALID[kind])[1])
    return with_cola(kind, text[:-1] + f', "kind": "{kind}"}}')


def duplicate_tensor(kind: str) -> bytes:
    outer = split(VALID[kind])[0]
    name = next((n for n in outer if n != "__metadata__"), "__metadata__")
    text = json.dumps(outer)
    return with_outer(kind, text[:-1] + f", {json.dumps(name)}: {json.dumps(outer[name])}}}")


def extra_cola_field(kind: str) -> bytes:
    return with_cola(kind, json.dumps({**split(VALID[kind])[1], "extra": 1}))


def extra_tensor_field(kind: str) -> bytes:
    outer = split(VALID[kind])[0]
    for name in outer:
        if name != "__metadata__":
            outer[name]["extra"] = 1
            break
    else:
        outer["__metadata__"]["extra"] = "1"
    return with_outer(kind, json.dumps(outer))


def extra_metadata_entry(kind: str) -> bytes:
    outer = split(VALID[kind])[0]
    outer["__metadata__"]["format"] = "np"
    return with_outer(kind, json.dumps(outer))


def utf16_header(kind: str) -> bytes:
    return with_outer(kind, json.dumps(split(VALID[kind])[0]).encode("utf-16"))


def utf32_header(kind: str) -> bytes:
    return with_outer(kind, json.dumps(split(VALID[kind])[0]).encode("utf-32-le"))


def bom_header(kind: str) -> bytes:
    return with_outer(kind, b"\xef\xbb\xbf" + json.dumps(split(VALID[kind])[0]).encode())


def deep_metadata(kind: str) -> bytes:
    outer = split(VALID[kind])[0]
    outer["__metadata__"]["cola"] = "@@"
    return with_outer(kind, json.dumps(outer).replace('"@@"', "[" * 10_000 + "]" * 10_000))


def huge_offset(kind: str) -> bytes:
    outer = split(VALID[kind])[0]
    name = next((n for n in outer if n != "__metadata__"), None)
    if name is None:
        return with_field(kind, FIRST_FIELD[kind][0], "9" * 5000)
    outer[name]["data_offsets"] = "@@"
    return with_outer(kind, json.dumps(outer).replace('"@@"', "[0, " + "9" * 5000 + "]"))


FIRST_FIELD = {kind: [k for k in sorted(split(VALID[kind])[1]) if k not in ("format", "kind")]
               for kind in KINDS}
LENIENT_JSON_ACCEPTS = {  # json.loads reads these; the strict decoder must not
    "duplicate cola key": duplicate_cola_key,
    "duplicate tensor": duplicate_tensor,
    "NaN field": lambda kind: with_field(kind, FIRST_FIELD[kind][0], "NaN"),
    "Infinity field": lambda kind: with_field(kind, FIRST_FIELD[kind][0], "Infinity"),
    "1e999 field": lambda kind: with_field(kind, FIRST_FIELD[kind][0], "1e999"),
    "NaN format": lambda kind: with_field(kind, "format", "NaN"),
    "utf-16 header": utf16_header,
    "utf-32 header": utf32_header,
    "extra cola field": extra_cola_field,
    "extra tensor field": extra_tensor_field,
    "extra metadata entry": extra_metadata_entry,
    "format 1.0": lambda kind: with_field(kind, "format", "1.0"),
    "format true": lambda kind: with_field(kind, "format", "true"),
}
LENIENT_JSON_FAILS = {  # json.loads raises something other than JSONDecodeError, or errs later
    "deep nesting in a field": lambda kind: with_field(kind, FIRST_FIELD[kind][0],
                                                       "[" * 10_000 + "]" * 10_000),
    "deep nesting in the metadata": deep_metadata,
    "5000-digit int": huge_offset,
    "BOM": bom_header,
    "oversize header": lambda kind: join(b" " * (2**20 + 1), b""),
    "list in input_of": lambda kind: with_field(kind, "input_of" if kind == "adaptation" else
                                                FIRST_FIELD[kind][0], '{"q": ["x"], "v": "x"}'),
    "list as dtype": lambda kind: extra_dtype_list(kind),
}


def extra_dtype_list(kind: str) -> bytes:
    outer = split(VALID[kind])[0]
    name = next((n for n in outer if n != "__metadata__"), None)
    if name is None:
        return with_field(kind, FIRST_FIELD[kind][0], '[["x"]]')
    outer[name]["dtype"] = ["F32"]
    return with_outer(kind, json.dumps(outer))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(LENIENT_JSON_ACCEPTS))
def test_malformed_classes_json_would_accept_are_refused(name, kind):
    blob = LENIENT_JSON_ACCEPTS[name](kind)
    if not name.endswith("header"):  # the UTF-16/32 ones: json.loads(bytes) detects them
        size = int.from_bytes(blob[:8], "little")
        outer = json.loads(blob[8:8 + size])
        json.loads(outer["__metadata__"]["cola"])  # Python's json reads every layer of it
    else:
        assert json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    assert outcome(kind, blob) == "refused"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(LENIENT_JSON_FAILS))
def test_malformed_classes_that_escaped_before_are_refused(name, kind):
    assert outcome(kind, LENIENT_JSON_FAILS[name](kind)) == "refused"


REASONS = [
    ("batch", "duplicate key 'kind'", lambda: duplicate_cola_key("batch")),
    ("adaptation", "NaN is not a JSON number", lambda: with_field("adaptation", "loss", "NaN")),
    ("adaptation", "overflows a float", lambda: with_field("adaptation", "loss", "1e999")),
    ("adaptation", "nests 10001 levels deep",
     lambda: with_field("adaptation", "layers", "[" * 10_000 + "]" * 10_000)),
    ("adaptation", "5000 digits", lambda: with_field("adaptation", "num_samples", "1" * 5000)),
    ("batch", "NUL bytes", lambda: utf16_header("batch")),
    ("batch", "byte-order mark", lambda: bom_header("batch")),
    ("metrics", r"unknown fields \['extra'\]", lambda: extra_cola_field("metrics")),
    ("adaptation", "'input_of' must be a mapping of strings to strings",
     lambda: with_field("adaptation", "input_of", '{"q": ["x"], "v": "x"}')),
    ("adaptation", "'num_samples' must be a non-negative integer",
     lambda: with_field("adaptation", "num_samples", "true")),
    ("adaptation", "'rows' must be a mapping of strings to booleans",
     lambda: with_field("adaptation", "rows", '{"q": 0, "v": 1}')),
    ("adaptation", "unknown wire dtype", lambda: with_field("adaptation", "dtype", '["F32"]')),
    ("adapter-state", "'layers' must be a list of distinct strings",
     lambda: with_field("adapter-state", "layers", '["q", "q"]')),
    ("metrics", "'metrics' must be a mapping of names to finite numbers",
     lambda: with_field("metrics", "metrics", '{"a": false}')),
    ("batch", "one string entry, 'cola'", lambda: extra_metadata_entry("batch")),
    ("batch", "must hold exactly", lambda: extra_tensor_field("batch")),
    ("bundle", r"dtype \['F32'\] is not one of", lambda: extra_dtype_list("bundle")),
]


@pytest.mark.parametrize("kind, message, make", REASONS)
def test_refusals_say_why(kind, message, make):
    with pytest.raises(MalformedPayloadError, match=message):
        DECODERS[kind](make())


# --------------------------------------------------------------------------------------------
# strict JSON on its own


@pytest.mark.parametrize("text", [
    b'{"a": 1, "a": 1}', b'{"o": {"b": [], "b": []}}', b"NaN", b"[Infinity]", b"-Infinity",
    b"[1e999]", b"-1e400", b"1" * 20, b"-" + b"9" * 20, b"[" * 17 + b"]" * 17, b"\xef\xbb\xbf{}",
    '{"a": 1}'.encode("utf-16"), '{"a": 1}'.encode("utf-16-be"), '{"a": 1}'.encode("utf-32"),
    b'"\xff"', b'"\xed\xa0\x80"', b"{", b"", b" ", b'"unterminated', b"[1,]", b"01",
    "\ud800", None, 3,
])
def test_loads_strict_refuses(text):
    with pytest.raises(MalformedPayloadError, match="the thing"):
        loads_strict(text, what="the thing", max_bytes=2**20)


@pytest.mark.parametrize("text", [
    b'"\\ud800"', b'"\\udfff"', b'["\\uD83D"]', b'{"\\udc00": 1}', b'{"k": ["\\ud800\\u0041"]}',
    b'"\\ude00\\ud83d"', b'"\\ud83d\\ud83d\\ude00"', '"\\ud800"',
])
def test_loads_strict_refuses_unpaired_surrogate_escapes(text):
    # json.loads decodes these to strings that no UTF-8 can carry; strict JSON refuses them
    with pytest.raises(MalformedPayloadError, match="unpaired surrogate"):
        loads_strict(text, what="the thing", max_bytes=2**20)


def test_loads_strict_accepts_surrogate_pairs_and_escaped_backslashes():
    assert loads_strict(b'{"\\ud83d\\ude00": "\\uD83D\\uDE00"}', what="x", max_bytes=100) == {
        "\U0001F600": "\U0001F600"}
    assert loads_strict(b'"\\\\ud800"', what="x", max_bytes=100) == "\\ud800"


def test_loads_strict_accepts_plain_json_of_every_form():
    text = '{"a": [1, -2.5e3, "[[[{", {"b": null}], "c": true, "é": -9223372036854775808}'
    want = json.loads(text)
    for data in (text, text.encode(), bytearray(text.encode()), memoryview(text.encode())):
        assert loads_strict(data, what="x", max_bytes=200) == want
    assert loads_strict("[" * 16 + "]" * 16, what="x", max_bytes=100) is not None


def test_loads_strict_size_cap_applies_first():
    with pytest.raises(MalformedPayloadError, match="exceeds the cap of 8 bytes"):
        loads_strict(b"[" * 10_000, what="x", max_bytes=8)
    with pytest.raises(MalformedPayloadError, match="exceeds the cap"):
        loads_strict("é" * 5, what="x", max_bytes=9)  # 5 characters, 10 UTF-8 bytes


def test_loads_strict_is_linear_on_a_megabyte():
    hostile = [b"[" * 2**20, b'"' + b'\\"' * (2**19 - 1), b'["' * 2**19, b'"\\' * 2**19]
    for text in hostile:
        start = time.perf_counter()
        with pytest.raises(MalformedPayloadError):
            loads_strict(text, what="x", max_bytes=2**20)
        assert time.perf_counter() - start < 2.0
    header = {f"a/layer.{i}/A": {"dtype": "F32", "shape": [8, 768], "data_offsets": [i, i + 1],
                                 "note": "[[[{{{"} for i in range(10_000)}
    text = json.dumps(header).encode()
    start = time.perf_counter()
    assert loads_strict(text, what="x", max_bytes=2**20) == header
    assert time.perf_counter() - start < 2.0 and len(text) > 2**19


def test_dumps_canonical_is_one_byte_string_per_value():
    a = dumps_canonical({"b": [1, 2.5], "a": "é", "c": {"y": None, "x": True}})
    assert a == '{"a":"é","b":[1,2.5],"c":{"x":true,"y":null}}'.encode()
    assert a == dumps_canonical(json.loads(a))
    assert loads_strict(a, what="x", max_bytes=100) == json.loads(a)
    for bad in (float("nan"), {"x": float("inf")}):
        with pytest.raises(ValueError):
            dumps_canonical(bad)
