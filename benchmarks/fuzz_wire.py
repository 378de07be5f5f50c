"""Hostile payloads against the wire decoders: how many are refused, accepted, or escape.

For each class of hostile input (random bytes, bit flips, truncation, duplicate keys, NaN/Inf
literals, deep nesting, huge integers, wrong field types, unhashable values where strings
belong, non-UTF-8 headers, extra fields, oversize headers) it generates N seeded cases from
valid payloads of every kind and feeds each to the matching decoder. ``refused`` counts
:class:`MalformedPayloadError`, ``accepted`` a decoded payload (legitimate only for bit flips that
land in tensor data or leave the header valid), ``escaped`` any other exception: the target is
zero. Torch-free, one core.

    python -m benchmarks.fuzz_wire [--cases 1000] [--seed 0] [--out results/bench/fuzz_wire.json]
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cola_fed.errors import MalformedPayloadError
from cola_fed.gl.data import AdaptationData
from cola_fed.wire import (
    DECODERS,
    DEFAULT_LIMITS,
    encode_adaptation,
    encode_adapter_state,
    encode_batch,
    encode_bundle,
    encode_metrics,
)

KINDS = tuple(DECODERS)
_HOLE = "@@hole@@"  # a placeholder string value, replaced by a raw JSON literal when rendered
JsonPath = tuple[Any, ...]


# --------------------------------------------------------------------------------------------
# valid payloads and their parts


@dataclass
class Parts:
    """A valid payload taken apart: safetensors header, cola header and data section."""

    kind: str
    outer: dict[str, Any]
    cola: dict[str, Any]
    data: bytes


def valid_payloads(seed: int) -> dict[str, bytes]:
    """One valid payload per kind, with seeded shapes; the adaptation shares ``x`` and maps
    rows, the batch mixes int, bool and float tensors, the bundle holds two payloads."""
    rng = np.random.default_rng(seed)
    n, d_in = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    rows = rng.integers(0, n, size=int(rng.integers(0, 6)))
    adaptation = AdaptationData(
        {"enc.x": x}, {"enc.q": rng.standard_normal((n, 3)).astype(np.float32),
                       "enc.v": rng.standard_normal((len(rows), 2)).astype(np.float32)},
        {"enc.q": "enc.x", "enc.v": "enc.x"}, {"enc.q": None, "enc.v": rows},
        loss=float(rng.random()), num_samples=n)
    state = encode_adapter_state({"enc.q": {"A": rng.standard_normal((2, d_in), np.float32),
                                            "B": np.zeros((3, 2), np.float32)}})
    batch = encode_batch({"input_ids": rng.integers(0, 50, (n, 4)),
                          "attention_mask": rng.random((n, 4)) < 0.5,
                          "labels": rng.standard_normal(n).astype(np.float32)})
    dtype = ("float32", "float16", "bfloat16")[seed % 3]
    return {"adaptation": encode_adaptation(adaptation, dtype=dtype), "adapter-state": state,
            "batch": batch, "metrics": encode_metrics({"loss": float(rng.random()), "n": n}),
            "bundle": encode_bundle({"state": state, "batch": batch})}


def take_apart(kind: str, blob: bytes) -> Parts:
    size = int.from_bytes(blob[:8], "little")
    outer = json.loads(blob[8:8 + size])
    return Parts(kind, outer, json.loads(outer["__metadata__"]["cola"]), blob[8 + size:])


def frame(header: bytes, data: bytes) -> bytes:
    """A payload from raw header bytes and a data section."""
    return struct.pack("<Q", len(header)) + header + data


def render(parts: Parts, *, cola_text: str | None = None, outer_text: str | None = None) -> bytes:
    """The payload's header text, with either JSON layer given as raw text."""
    if outer_text is None:
        outer = json.loads(json.dumps(parts.outer))
        outer["__metadata__"]["cola"] = cola_text or json.dumps(parts.cola,
                                                                separators=(",", ":"))
        outer_text = json.dumps(outer, separators=(",", ":"))
    return outer_text.encode("utf-8")


def paths(value: Any, prefix: JsonPath = ()) -> list[JsonPath]:
    """Every path into a JSON value (dict keys and list indices), the root excluded."""
    found: list[JsonPath] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def get(value: Any, path: JsonPath) -> Any:
    for key in path:
        value = value[key]
    return value


def targets(parts: Parts) -> list[tuple[str, JsonPath]]:
    """Every value a mutation may replace: ``("cola", path)`` into the cola header, or
    ``("outer", path)`` into the safetensors header (the cola entry itself as one string)."""
    cola = [("cola", p) for p in paths(parts.cola)]
    outer = [("outer", p) for p in paths(parts.outer)
             if not (len(p) > 2 and p[0] == "__metadata__")]
    return cola + outer


def with_literal(parts: Parts, where: str, path: JsonPath, literal: str) -> bytes:
    """The payload with the value at ``path`` replaced by the raw JSON text ``literal``."""
    layer = json.loads(json.dumps(parts.cola if where == "cola" else parts.outer))
    get(layer, path[:-1])[path[-1]] = _HOLE
    text = json.dumps(layer, separators=(",", ":")).replace(json.dumps(_HOLE), literal)
    header = render(parts, cola_text=text) if where == "cola" else render(parts, outer_text=text)
    return frame(header, parts.data)


def json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    return "number" if isinstance(value, (int, float)) else type(value).__name__


# --------------------------------------------------------------------------------------------
# one generator per hostile class: (rng, parts of a random kind) -> bytes


def random_bytes(rng: random.Random, parts: Parts) -> bytes:
    body = rng.randbytes(rng.randint(0, 1024))
    if rng.random() < 0.5:  # behind a plausible header length, so the JSON parser sees it
        return frame(body, rng.randbytes(rng.randint(0, 64)))
    return body


def bit_flips(rng: random.Random, parts: Parts) -> bytes:
    blob = bytearray(frame(render(parts), parts.data))
    for _ in range(rng.randint(1, 8)):
        bit = rng.randrange(len(blob) * 8)
        blob[bit // 8] ^= 1 << (bit % 8)
    return bytes(blob)


def truncation(rng: random.Random, parts: Parts) -> bytes:
    blob = frame(render(parts), parts.data)
    return blob[:rng.randrange(len(blob))]


def duplicate_keys(rng: random.Random, parts: Parts) -> bytes:
    """A key repeated in some object of either layer, with the same or another value."""
    where = rng.choice(("cola", "outer"))
    layer = json.loads(json.dumps(parts.cola if where == "cola" else parts.outer))
    objects = [()] + [p for p in paths(layer) if isinstance(get(layer, p), dict) and get(layer, p)]
    obj = get(layer, rng.choice(objects))
    key = rng.choice(sorted(obj))
    value = obj[key] if rng.random() < 0.5 else rng.choice([0, "x", [], {}])
    obj[_HOLE] = 0
    twice = f"{json.dumps(key)}:{json.dumps(value, separators=(',', ':'))}"
    text = json.dumps(layer, separators=(",", ":")).replace(f"{json.dumps(_HOLE)}:0", twice)
    header = render(parts, cola_text=text) if where == "cola" else render(parts, outer_text=text)
    return frame(header, parts.data)


def nan_inf(rng: random.Random, parts: Parts) -> bytes:
    where, path = rng.choice(targets(parts))
    literal = rng.choice(("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "[NaN]",
                          '{"a":Infinity}'))
    return with_literal(parts, where, path, literal)


def deep_nesting(rng: random.Random, parts: Parts) -> bytes:
    depth = rng.choice((17, 64, 1000, rng.randint(17, 20_000)))
    literal = rng.choice(("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth,
                          '[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2) + "[]"))
    if rng.random() < 0.2:  # the whole header wrapped
        text = "[" * depth + json.dumps(parts.outer) + "]" * depth
        return frame(text.encode(), parts.data)
    where, path = rng.choice(targets(parts))
    return with_literal(parts, where, path, literal)


def huge_ints(rng: random.Random, parts: Parts) -> bytes:
    numbers = [t for t in targets(parts) if json_type(get(
        parts.cola if t[0] == "cola" else parts.outer, t[1])) == "number"]
    where, path = rng.choice(numbers)
    digits = rng.choice((20, 25, 4300, 4301, rng.randint(20, 5000)))
    literal = rng.choice(("", "-")) + str(rng.randint(1, 9)) + "".join(
        rng.choices("0123456789", k=digits - 1))
    return with_literal(parts, where, path, literal)


_LITERALS = {"None": "null", "True": "true", "False": "false", "number": "7", "str": '"x"',
             "list": "[1]", "dict": '{"a":1}'}


def wrong_types(rng: random.Random, parts: Parts) -> bytes:
    """Some value replaced by one of another JSON type (a ``null`` loss means "unknown")."""
    where, path = rng.choice(targets(parts))
    original = json_type(get(parts.cola if where == "cola" else parts.outer, path))
    allowed = {original} | ({"None"} if where == "cola" and path == ("loss",) else set())
    literal = rng.choice([text for kind, text in _LITERALS.items() if kind not in allowed])
    return with_literal(parts, where, path, literal)


def unhashable(rng: random.Random, parts: Parts) -> bytes:
    """A list or dict where a string belongs (names, dtypes, kinds, groups, the cola entry)."""
    strings = [t for t in targets(parts) if isinstance(
        get(parts.cola if t[0] == "cola" else parts.outer, t[1]), str)]
    where, path = rng.choice(strings)
    literal = rng.choice(('["F32"]', "[]", "{}", '{"x":"y"}', '[["x"]]', '[{"a":[]}]'))
    return with_literal(parts, where, path, literal)


def non_utf8_header(rng: random.Random, parts: Parts) -> bytes:
    text = render(parts).decode()
    variant = rng.randrange(6)
    if variant == 0:
        header = text.encode(rng.choice(("utf-16", "utf-16-le", "utf-16-be")))
    elif variant == 1:
        header = text.encode(rng.choice(("utf-32", "utf-32-le", "utf-32-be")))
    elif variant == 2:
        header = b"\xef\xbb\xbf" + text.encode()
    else:  # a stray byte, an overlong '/', or an encoded surrogate somewhere in the text
        at = rng.randrange(len(text) + 1)
        bad = (bytes([rng.randint(0x80, 0xFF)]), b"\xc0\xaf", b"\xed\xa0\x80")[variant - 3]
        header = text[:at].encode() + bad + text[at:].encode()
    return frame(header, parts.data)


def extra_fields(rng: random.Random, parts: Parts) -> bytes:
    """An unknown field in the cola header, a tensor entry, the metadata, or the header root."""
    name = rng.choice(("extra", "version", "__proto__", "dtype2", "x"))
    cola, outer = json.loads(json.dumps(parts.cola)), json.loads(json.dumps(parts.outer))
    tensors = [n for n in outer if n != "__metadata__"]
    variant = rng.randrange(4)
    if variant == 0 or (variant == 1 and not tensors):
        cola[name] = rng.choice((0, "x", [], {}, None))
    elif variant == 1:
        outer[rng.choice(tensors)][name] = rng.choice((0, "x", [], {}))
    elif variant == 2:
        outer["__metadata__"][name] = "np"
    else:
        outer[f"x/{name}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    outer["__metadata__"]["cola"] = json.dumps(cola)
    return frame(json.dumps(outer).encode(), parts.data)


def oversize_header(rng: random.Random, parts: Parts) -> bytes:
    cap = DEFAULT_LIMITS.max_header_bytes
    if rng.random() < 0.5:  # a header length past the cap; the bytes need not be there
        claimed = rng.choice((cap + 1, cap + rng.randint(2, 2**20), 2**63, 2**64 - 1))
        return struct.pack("<Q", claimed) + render(parts) + parts.data
    padding = b" " * (cap + rng.randint(1, 4096) - len(render(parts)))
    return frame(render(parts) + padding, parts.data)


CLASSES: dict[str, Callable[[random.Random, Parts], bytes]] = {
    "random-bytes": random_bytes,
    "bit-flips": bit_flips,
    "truncation": truncation,
    "duplicate-keys": duplicate_keys,
    "nan-inf-literals": nan_inf,
    "deep-nesting": deep_nesting,
    "huge-ints": huge_ints,
    "wrong-field-types": wrong_types,
    "unhashable-values": unhashable,
    "non-utf8-header": non_utf8_header,
    "extra-fields": extra_fields,
    "oversize-header": oversize_header,
}


# --------------------------------------------------------------------------------------------
# running


def attack(kind: str, blob: bytes) -> tuple[str, str | None]:
    """``(outcome, escaped exception)`` of one case against its kind's decoder."""
    try:
        DECODERS[kind](blob)
    except MalformedPayloadError:
        return "refused", None
    except Exception as err:  # what this benchmark counts
        return "escaped", f"{type(err).__name__}: {str(err)[:160]}"
    return "accepted", None


def run_class(name: str, cases: int, seed: int, pool: list[dict[str, Parts]]) -> dict[str, Any]:
    """Counts of ``cases`` seeded cases of one hostile class, spread over every kind."""
    rng = random.Random(f"{seed}:{name}")
    counts: dict[str, Any] = {"cases": cases, "refused": 0, "accepted": 0, "escaped": 0}
    examples: list[str] = []
    for i in range(cases):
        kind = KINDS[i % len(KINDS)]
        outcome, escaped = attack(kind, CLASSES[name](rng, rng.choice(pool)[kind]))
        counts[outcome] += 1
        if escaped and len(examples) < 5:
            examples.append(f"{kind}: {escaped}")
    if examples:
        counts["escaped_examples"] = examples
    return counts


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'class':20s} {'cases':>7s} {'refused':>8s} {'accepted':>9s} {'escaped':>8s}"]
    for name, r in results.items():
        lines.append(f"{name:20s} {r['cases']:7d} {r['refused']:8d} {r['accepted']:9d} "
                     f"{r['escaped']:8d}")
    total = {k: sum(r[k] for r in results.values())
             for k in ("cases", "refused", "accepted", "escaped")}
    lines.append(f"{'total':20s} {total['cases']:7d} {total['refused']:8d} "
                 f"{total['accepted']:9d} {total['escaped']:8d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every hostile class, write the counts as JSON, print a table; exit 1 on escapes.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``--cases``, ``--seed``, ``--out``); ``sys.argv`` if None.

    Returns
    -------
    int
        0 when no case escaped the error family, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="cases per hostile class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/bench/fuzz_wire.json"))
    args = parser.parse_args(argv)

    pool = [{kind: take_apart(kind, blob) for kind, blob in valid_payloads(s).items()}
            for s in range(args.seed, args.seed + 8)]
    results: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for name in CLASSES:
        results[name] = run_class(name, args.cases, args.seed, pool)
        for example in results[name].get("escaped_examples", []):
            print(f"  escaped ({name}) {example}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results), flush=True)
    print(f"{elapsed:.1f} s; wrote {args.out}", file=sys.stderr)
    return 1 if any(r["escaped"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
