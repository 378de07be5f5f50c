import assert from "node:assert/strict";
import { test } from "node:test";
import { dumpsPython, pythonFloatRepr } from "../src/json/python-json.js";
import { dumpsCanonical, loadsStrict, loadsStrictOrdered } from "../src/json/strict-json.js";
import { WIRE, assertRefused, hex, toHexString } from "./wire-vectors.js";

interface Accept { text: string; canonical: string; ordered: string }
interface Refuse { text: string; max_bytes: number; max_depth: number; error: string }

const accepted: Accept[] = WIRE.json.accept;
const refused: Refuse[] = WIRE.json.refuse;

test(`strict JSON accepts ${accepted.length} texts and writes Python's canonical bytes for each`, () => {
  for (const vector of accepted) {
    const value = loadsStrict(hex(vector.text), { what: "x", maxBytes: 2 ** 20 });
    assert.equal(toHexString(dumpsCanonical(value)), vector.canonical, Buffer.from(hex(vector.text)).toString());
    // key order and int/float types as Python's dict and json.dumps keep them
    const ordered = loadsStrictOrdered(hex(vector.text), { what: "x", maxBytes: 2 ** 20 });
    assert.equal(dumpsPython(ordered, { ensureAscii: true, sortKeys: false }), vector.ordered);
  }
});

test(`strict JSON refuses ${refused.length} hostile texts with Python's error class`, async () => {
  for (const vector of refused) {
    await assertRefused(() => loadsStrict(hex(vector.text), { what: "x", maxBytes: vector.max_bytes, maxDepth: vector.max_depth }),
      vector.error, vector.text);
  }
});

test("strict JSON refuses hostile string inputs as Python does", async () => {
  for (const vector of WIRE.json.refuse_str as { text: string; max_bytes: number; error: string }[]) {
    await assertRefused(() => loadsStrict(vector.text, { what: "x", maxBytes: vector.max_bytes }), vector.error, vector.text);
  }
});

test("unpaired surrogate escapes are refused, pairs and escaped backslashes are not", async () => {
  for (const text of ['"\\ud800"', '{"\\udc00": 1}', '["\\ud83d\\ud83d\\ude00"]', '"\\ude00\\ud83d"']) {
    await assertRefused(() => loadsStrict(text, { what: "x" }), "MalformedPayloadError", text);
  }
  assert.equal(loadsStrict('"\\ud83d\\ude00"', { what: "x" }), "\u{1f600}");
  assert.equal(loadsStrict('"\\\\ud800"', { what: "x" }), "\\ud800");
});

test("integers are bigint past 2^53, floats are numbers, objects have no prototype", () => {
  const value = loadsStrict('{"big": 9223372036854775807, "f": 1.0, "__proto__": 1}', { what: "x" }) as Record<string, unknown>;
  assert.equal(value.big, 9223372036854775807n);
  assert.equal(value.f, 1);
  assert.equal(Object.getPrototypeOf(value), null);
  assert.equal(value["__proto__"], 1n);
});

const floats: { bits: string; repr: string }[] = WIRE.json.floats;

test(`Python's float repr for ${floats.length} doubles, and back`, () => {
  for (const { bits, repr } of floats) {
    const value = Buffer.from(bits, "hex").readDoubleBE(0);
    assert.equal(pythonFloatRepr(value), repr, bits);
    assert.ok(Object.is(Number(repr), value), repr);
  }
});

test("canonical JSON refuses NaN, infinities and lone surrogates, and sorts by code point", () => {
  assert.throws(() => dumpsCanonical(Number.NaN), RangeError);
  assert.throws(() => dumpsCanonical({ x: Infinity }), RangeError);
  assert.throws(() => dumpsCanonical("\ud800"), RangeError);
  assert.equal(Buffer.from(dumpsCanonical({ "\u{1f600}": 1n, "\uffff": 2n, a: [1, 2.5, null, true] })).toString(),
    '{"a":[1.0,2.5,null,true],"\uffff":2,"\u{1f600}":1}');
});
