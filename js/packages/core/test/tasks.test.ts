import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import type { NdArray } from "../src/tensor.js";
import { ColaError } from "../src/errors.js";
import { clientDataFor, readCsv, type TaskConfigLike } from "../src/tasks/index.js";

interface ArrayVector { dtype: string; shape: number[]; hex?: string; sha256?: string }
type BatchVector = Record<string, ArrayVector>;
interface ClientDataVector {
  task: string;
  name?: string;
  config: { batch_size: number; eval_batches: number; seed: number; server_test_size: number };
  csv: string;
  batch_seed: number;
  num_examples: number;
  eval_batches: BatchVector[];
  batches: BatchVector[];
}
interface HostileVector { name: string; task: string; config: ClientDataVector["config"]; csv: string; error: string; message: string }

/** js/conformance/tasks.json, found from the compiled test upwards. */
function loadVectors(): { numeric: ClientDataVector[]; accepted: ClientDataVector[]; hostile: HostileVector[]; data_name: string } {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "conformance", "tasks.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("js/conformance/tasks.json not found: run make js");
    dir = up;
  }
  return JSON.parse(readFileSync(join(dir, "conformance", "tasks.json"), "utf8"));
}
const VECTORS = loadVectors();

function taskConfig(name: string, config: ClientDataVector["config"]): TaskConfigLike {
  return { name, batchSize: config.batch_size, evalBatches: config.eval_batches, seed: config.seed,
    serverTestSize: config.server_test_size };
}

function bytesOf(array: NdArray): Uint8Array {
  const data = array.data;
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength); // little-endian hosts
}

function assertBatch(actual: Map<string, NdArray>, expected: BatchVector, where: string): void {
  assert.deepEqual([...actual.keys()].sort(), Object.keys(expected).sort(), where);
  for (const [key, vector] of Object.entries(expected)) {
    const array = actual.get(key)!;
    assert.equal(array.dtype, vector.dtype, `${where} ${key}`);
    assert.deepEqual([...array.shape], vector.shape, `${where} ${key}`);
    const bytes = bytesOf(array);
    if (vector.hex !== undefined) assert.equal(Buffer.from(bytes).toString("hex"), vector.hex, `${where} ${key}`);
    else assert.equal(createHash("sha256").update(bytes).digest("hex"), vector.sha256, `${where} ${key}`);
  }
}

function checkClientData(vector: ClientDataVector): void {
  const data = clientDataFor(taskConfig(vector.task, vector.config), new Map(), vector.csv,
    { dataName: VECTORS.data_name });
  assert.equal(data.numExamples, vector.num_examples);
  assert.equal(data.evalBatches.length, vector.eval_batches.length);
  data.evalBatches.forEach((batch, i) => assertBatch(batch, vector.eval_batches[i]!, `eval ${i}`));
  const stream = data.batches(vector.config.batch_size, vector.batch_seed);
  vector.batches.forEach((expected, i) => assertBatch(stream.next().value, expected, `batch ${i}`));
}

test("the vectors cover digits, MNIST, a server-held test set and several epochs", () => {
  assert.deepEqual(VECTORS.numeric.map((v) => v.task), ["digits", "digits", "mnist"]);
  assert.ok(VECTORS.numeric.some((v) => v.config.server_test_size > 0));
  assert.ok(VECTORS.numeric.every((v) => v.batches.length * v.config.batch_size > v.num_examples));
  assert.ok(VECTORS.hostile.length >= 20);
});

VECTORS.numeric.forEach((vector, index) => {
  test(`${vector.task} CSV #${index}: eval batches and the batch stream equal Python's, bit for bit`, () => {
    checkClientData(vector);
  });
});

for (const vector of VECTORS.accepted) {
  test(`an accepted quirk: ${vector.name}`, () => checkClientData(vector));
}

for (const vector of VECTORS.hostile) {
  test(`a hostile CSV is refused like Python: ${vector.name}`, () => {
    assert.throws(
      () => clientDataFor(taskConfig(vector.task, vector.config), new Map(), vector.csv,
        { dataName: VECTORS.data_name }),
      (err: unknown) => {
        assert.ok(err instanceof ColaError, `expected ${vector.error}, got ${String(err)}`);
        assert.equal(err.name, vector.error);
        assert.equal(err.message, vector.message);
        return true;
      },
    );
  });
}

test("the CSV reader numbers lines as Python's csv module does", () => {
  const records = [...readCsv('a,b\r\n"x\ny",z\n\n"q""r",\rlast', { what: "t" })];
  assert.deepEqual(records, [
    { fields: ["a", "b"], line: 1 },
    { fields: ["x\ny", "z"], line: 3 },
    { fields: [], line: 4 },
    { fields: ['q"r', ""], line: 5 },
    { fields: ["last"], line: 6 },
  ]);
});

test("a task the JavaScript node does not run is refused", () => {
  assert.throws(() => clientDataFor({ name: "byte-lm", batchSize: 1, evalBatches: 1, seed: 0,
    serverTestSize: 0 }, new Map(), ""), { name: "ConfigError" });
});

test("bad rows of a feature CSV: the first five by line, how many more; skipInvalid drops them", async () => {
  const { readFeatureCsv } = await import("../src/tasks/features.js");
  const header = ["label", ...Array.from({ length: 64 }, (_, i) => `p${i}`)].join(",");
  const good = ["3", ...Array(64).fill("0.5")].join(",");
  const noLabel = ["", ...Array(64).fill("0.5")].join(",");
  const spec = { features: 64, low: 0, high: 1, classes: 10, what: "task.data-path d.csv" };
  const text = [header, good, ...Array(7).fill(noLabel), good].join("\n") + "\n";
  assert.throws(() => readFeatureCsv(text, spec), (err: Error) => {
    assert.equal(err.message, "task.data-path d.csv: 7 of its 9 rows cannot be used:\n" +
      "  line 3: no label in column 'label'\n  line 4: no label in column 'label'\n" +
      "  line 5: no label in column 'label'\n  line 6: no label in column 'label'\n" +
      "  line 7: no label in column 'label'\n  ... and 2 more\n" +
      "Fix or remove them, or set task.skip-invalid-rows = true to skip them (they are " +
      "counted and logged)");
    return true;
  });
  const kept = readFeatureCsv(text, { ...spec, skipInvalid: true });
  assert.equal(kept.rows, 2);
  assert.deepEqual(kept.skipped.slice(0, 1), ["line 3: no label in column 'label'"]);
  assert.equal(kept.skipped.length, 7);
  const none = [header, noLabel, noLabel].join("\n");
  assert.throws(() => readFeatureCsv(none, { ...spec, skipInvalid: true }),
    /none of its 2 rows can be used \(task.skip-invalid-rows would leave no data\)/);
});
