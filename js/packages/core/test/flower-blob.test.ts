/** Sealed blobs in Flower records against cola_fed/federation/records.py (js/conformance/flower.json). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { blobToRecord, recordToBlob } from "../src/flower/blob.js";
import { fromHex, toHex } from "../src/util/bytes.js";
import { arrayOf, loadVectors } from "./flower-vectors.js";

const V = loadVectors();

test("blobToRecord writes what blob_to_record writes (.npy v1.0 header, numpy 2 padding)", () => {
  for (const made of V.blobs.made) {
    const record = blobToRecord(fromHex(made.blob));
    assert.deepEqual([...record.keys()], made.record.map(([k]) => k));
    for (const [name, a] of made.record) assert.deepStrictEqual(record.get(name), arrayOf(a));
  }
});

for (const c of V.blobs.read) {
  test(`recordToBlob: ${c.name} -> ${c.error ?? "accepted"}`, () => {
    const record = new Map(c.record.map(([k, a]) => [k, arrayOf(a)]));
    if (c.error === null) assert.equal(toHex(recordToBlob(record)), c.blob);
    else assert.throws(() => recordToBlob(record), (err: Error) => err.name === c.error);
  });
}

test("a blob survives blobToRecord -> recordToBlob at any length", () => {
  for (const n of [0, 1, 63, 64, 1000, 70000]) {
    const blob = new Uint8Array(n).map((_, i) => (i * 31) & 0xff);
    assert.deepEqual(recordToBlob(blobToRecord(blob)), blob);
  }
});
