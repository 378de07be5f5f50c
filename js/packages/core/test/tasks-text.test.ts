import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import type { NdArray } from "../src/tensor.js";
import { clientDataFor, pyInt, TaskTokenizer, type TaskConfigLike } from "../src/tasks/index.js";

interface ArrayVector { dtype: string; shape: number[]; hex?: string; sha256?: string }
type BatchVector = Record<string, ArrayVector>;
interface TextTaskVector {
  task: string;
  config: Record<string, number | string>;
  csv: string;
  batch_seed: number;
  num_examples: number;
  eval_batches: BatchVector[];
  batches: BatchVector[];
}
interface TextVectors {
  tokenizer: { path: string; sha256: string };
  tokens: { text: string; ids: number[]; type_ids: number[] }[];
  tasks: TextTaskVector[];
}

/** The js/ folder (it holds conformance/tasks.json), found from the compiled test upwards. */
function jsRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "conformance", "tasks.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("js/conformance/tasks.json not found: run make js");
    dir = up;
  }
  return dir;
}
const JS = jsRoot();
const VECTORS = (JSON.parse(readFileSync(join(JS, "conformance", "tasks.json"), "utf8")) as { text: TextVectors }).text;
const TOKENIZER_PATH = VECTORS.tokenizer.path.startsWith("/") ? VECTORS.tokenizer.path : join(JS, "..", VECTORS.tokenizer.path);
const TOKENIZER_JSON = new Uint8Array(readFileSync(TOKENIZER_PATH));

function camel(config: Record<string, number | string>, name: string): TaskConfigLike {
  const out: Record<string, number | string> = { name };
  for (const [key, value] of Object.entries(config)) out[key.replace(/_(.)/g, (_, c: string) => c.toUpperCase())] = value;
  return out as unknown as TaskConfigLike;
}

function assertBatch(actual: Map<string, NdArray>, expected: BatchVector, where: string): void {
  assert.deepEqual([...actual.keys()].sort(), Object.keys(expected).sort(), where);
  for (const [key, vector] of Object.entries(expected)) {
    const array = actual.get(key)!;
    assert.equal(array.dtype, vector.dtype, `${where} ${key}`);
    assert.deepEqual([...array.shape], vector.shape, `${where} ${key}`);
    const bytes = new Uint8Array(array.data.buffer, array.data.byteOffset, array.data.byteLength);
    if (vector.hex !== undefined) assert.equal(Buffer.from(bytes).toString("hex"), vector.hex, `${where} ${key}`);
    else assert.equal(createHash("sha256").update(bytes).digest("hex"), vector.sha256, `${where} ${key}`);
  }
}

test("the tokenizer.json is the one the vectors were made with", () => {
  assert.equal(createHash("sha256").update(TOKENIZER_JSON).digest("hex"), VECTORS.tokenizer.sha256);
  assert.ok(VECTORS.tokens.length >= 200);
});

test("token ids equal Python tokenizers' on Rotten Tomatoes and hard cases", () => {
  const tokenizer = new TaskTokenizer(TOKENIZER_JSON);
  for (const vector of VECTORS.tokens) {
    const encoding = tokenizer.encode(vector.text, true);
    assert.deepEqual(encoding.ids, vector.ids, JSON.stringify(vector.text).slice(0, 80));
    assert.deepEqual(encoding.typeIds, vector.type_ids);
  }
});

for (const vector of VECTORS.tasks) {
  test(`${vector.task}: eval batches and the batch stream equal Python's`, () => {
    const data = clientDataFor(camel(vector.config, vector.task),
      new Map([["tokenizer.json", TOKENIZER_JSON]]), vector.csv);
    assert.equal(data.numExamples, vector.num_examples);
    assert.equal(data.evalBatches.length, vector.eval_batches.length);
    data.evalBatches.forEach((batch, i) => assertBatch(batch, vector.eval_batches[i]!, `eval ${i}`));
    const stream = data.batches(Number(vector.config["batch_size"]), vector.batch_seed);
    vector.batches.forEach((expected, i) => assertBatch(stream.next().value, expected, `batch ${i}`));
  });
}

test("a text task without the shipped tokenizer, or with a broken one, is refused", () => {
  const config = camel(VECTORS.tasks[0]!.config, "text-classification");
  assert.throws(() => clientDataFor(config, new Map(), VECTORS.tasks[0]!.csv), { name: "ConfigError" });
  assert.throws(() => clientDataFor(config, new Map([["tokenizer.json", new Uint8Array([123])]]),
    VECTORS.tasks[0]!.csv), { name: "ConfigError" });
});

test("labels are read as Python's int() reads them", () => {
  assert.equal(pyInt(" 1 "), 1n);
  assert.equal(pyInt("+0"), 0n);
  assert.equal(pyInt("1_0"), 10n);
  assert.equal(pyInt("1__0"), null);
  assert.equal(pyInt("1.0"), null);
  assert.equal(pyInt(""), null);
});
