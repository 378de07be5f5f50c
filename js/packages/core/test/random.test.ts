import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { NumpyGenerator, PCG64, SeedSequence } from "../src/random/numpy.js";

interface RngVector {
  seed: string;
  pool: number[];
  state: string;
  inc: string;
  random: number[];
  permutations: Record<string, number[] | string>;
  interleaved: { permutation5: number[]; random: number[]; permutation1797: string };
}

// compiled to js/packages/core/dist-test/test/: the vectors are in js/conformance/
const VECTORS = JSON.parse(
  readFileSync(new URL("../../../../conformance/tasks.json", import.meta.url), "utf8"),
) as { rng: RngVector[] };

function digest(order: Int32Array): string {
  const bytes = new Uint8Array(order.buffer, order.byteOffset, order.byteLength); // little-endian hosts
  return createHash("sha256").update(bytes).digest("hex");
}

test("the vectors cover seeds above 2^32 and the sizes the tasks use", () => {
  assert.ok(VECTORS.rng.some((v) => BigInt(v.seed) > 2n ** 64n));
  assert.ok(VECTORS.rng.every((v) => "60000" in v.permutations && "1797" in v.permutations));
});

for (const vector of VECTORS.rng) {
  test(`seed ${vector.seed}: SeedSequence pool and PCG64 state match numpy`, () => {
    const seq = new SeedSequence(BigInt(vector.seed));
    assert.deepEqual([...seq.pool], vector.pool);
    const state = PCG64.fromSeedSequence(seq).state;
    assert.equal(state.state, BigInt(vector.state));
    assert.equal(state.inc, BigInt(vector.inc));
  });

  test(`seed ${vector.seed}: random() and permutation(n) match numpy bit for bit`, () => {
    const rng = NumpyGenerator.fromSeed(BigInt(vector.seed));
    assert.deepEqual([...rng.randomArray(vector.random.length)], vector.random);
    for (const [size, expected] of Object.entries(vector.permutations)) {
      const order = NumpyGenerator.fromSeed(BigInt(vector.seed)).permutation(Number(size));
      if (typeof expected === "string") assert.equal(digest(order), expected, `n=${size}`);
      else assert.deepEqual([...order], expected, `n=${size}`);
    }
    const mixed = NumpyGenerator.fromSeed(BigInt(vector.seed));
    assert.deepEqual([...mixed.permutation(5)], vector.interleaved.permutation5);
    assert.deepEqual([mixed.random()], vector.interleaved.random);
    assert.equal(digest(mixed.permutation(1797)), vector.interleaved.permutation1797);
  });
}

test("a number seed and the same bigint seed draw the same numbers", () => {
  assert.deepEqual([...NumpyGenerator.fromSeed(42).permutation(100)],
    [...NumpyGenerator.fromSeed(42n).permutation(100)]);
});

test("a permutation of 60000 items takes well under a second", () => {
  const rng = NumpyGenerator.fromSeed(7);
  const start = performance.now();
  for (let i = 0; i < 5; i++) rng.permutation(60000);
  const each = (performance.now() - start) / 5;
  assert.ok(each < 250, `one permutation took ${each.toFixed(1)} ms`);
});

test("negative, fractional and unsafe seeds and sizes are refused", () => {
  assert.throws(() => NumpyGenerator.fromSeed(-1), RangeError);
  assert.throws(() => NumpyGenerator.fromSeed(1.5), RangeError);
  assert.throws(() => NumpyGenerator.fromSeed(2 ** 60), RangeError);
  assert.throws(() => NumpyGenerator.fromSeed(0).permutation(-1), RangeError);
  assert.throws(() => NumpyGenerator.fromSeed(0).permutation(2.5), RangeError);
});
