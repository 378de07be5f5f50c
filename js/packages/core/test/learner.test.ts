/**
 * The ONNX Runtime learner against the Python `OrtLearner` (js/conformance/learner.json, made by
 * tests/conformance/learner.py): the same seeded initial adapters, the same adapters, optimizer
 * state, metrics and `to_bytes` after every fit, bit for bit, on real exported train-step graphs
 * run by onnxruntime-node's CPU kernels on one thread; Python's saved states load here and
 * carry on; hostile chunks and states are refused with Python's error class and change nothing.
 */

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { OrtLearner } from "../src/learner/learner.js";
import type { OptimizerSpecLike, AdapterSpecLike } from "../src/learner/types.js";
import type { DType, NdArray } from "../src/tensor.js";
import { fromHex, toHex } from "../src/util/bytes.js";
import type { AdaptationData } from "../src/wire/adaptation.js";
import { decodeAdaptation } from "../src/wire/codec.js";
import { layerInfo } from "../src/wire/layout.js";
import type { LayerInfo, ModuleType } from "../src/wire/layout.js";

// ------------------------------------------------------------------------------------------------
// the vectors

interface ArrayJson { dtype: string; shape: number[]; hex: string }
type StateJson = Record<string, Record<string, ArrayJson>>;
interface RawChunk {
  inputs: [string, ArrayJson][];
  grads: [string, ArrayJson][];
  input_of: [string, string][];
  rows: [string, ArrayJson | null][];
  loss: number | null;
  num_samples: number;
  weight_grads: [string, [ArrayJson, ArrayJson]][];
  param_grads: [string, [string, ArrayJson][]][];
  param_at: [string, string][];
}
interface Fit { chunk: { blob: string; raw: RawChunk }; metrics: Record<string, number>; step: number; state: StateJson; bytes: string }
interface Case {
  name: string;
  layout: Record<string, unknown>[];
  specs: [string, Record<string, unknown>][];
  optimizer: Record<string, unknown>;
  seed: number;
  interval: number;
  graphs: string[];
  initial: StateJson;
  initial_bytes: string;
  fits: Fit[];
}
interface Vectors {
  graphs: Record<string, string>;
  cases: Case[];
  hostile_chunks: { case: string; label: string; chunk: RawChunk; error: string }[];
  hostile_states: { case: string; label: string; blob: string; error: string }[];
}

/** js/conformance/learner.json, found from the compiled test upwards. */
function loadVectors(): Vectors {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "conformance", "learner.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("js/conformance/learner.json not found: run make js");
    dir = up;
  }
  return JSON.parse(readFileSync(join(dir, "conformance", "learner.json"), "utf8")) as Vectors;
}

const VECTORS = loadVectors();
const GRAPHS = new Map(Object.entries(VECTORS.graphs).map(([name, hex]) => [name, fromHex(hex)]));
const CASES = new Map(VECTORS.cases.map((c) => [c.name, c]));

function array(json: ArrayJson): NdArray {
  const bytes = fromHex(json.hex);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dtype = json.dtype as DType;
  const data = dtype === "float32" ? new Float32Array(buffer) : dtype === "float64" ? new Float64Array(buffer)
    : dtype === "int64" ? new BigInt64Array(buffer) : dtype === "int32" ? new Int32Array(buffer) : new Uint8Array(buffer);
  return { dtype, shape: json.shape, data } as NdArray;
}

function chunkOf(raw: RawChunk): AdaptationData {
  return {
    inputs: new Map(raw.inputs.map(([k, v]) => [k, array(v) as NdArray<"float32">])),
    grads: new Map(raw.grads.map(([k, v]) => [k, array(v) as NdArray<"float32">])),
    inputOf: new Map(raw.input_of),
    rows: new Map(raw.rows.map(([k, v]) => [k, v === null ? null : array(v) as NdArray<"int64">])),
    loss: raw.loss ?? NaN,
    numSamples: raw.num_samples,
    weightGrads: new Map(raw.weight_grads.map(([k, [g, b]]) => [k, [array(g) as NdArray<"float32">, array(b) as NdArray<"float32">]])),
    paramGrads: new Map(raw.param_grads.map(([k, ps]) => [k, new Map(ps.map(([p, v]) => [p, array(v) as NdArray<"float32">]))])),
    paramAt: new Map(raw.param_at),
  };
}

function layoutOf(c: Case): LayerInfo[] {
  return c.layout.map((l) => layerInfo({
    name: l.name as string, dIn: l.d_in as number, dOut: l.d_out as number, moduleType: l.module_type as ModuleType,
    hasBias: l.has_bias as boolean, kernelSize: l.kernel_size as [number, number], stride: l.stride as [number, number],
    padding: l.padding as [number, number], dilation: l.dilation as [number, number],
  }));
}

function specOf(json: Record<string, unknown>): AdapterSpecLike {
  return {
    kind: json.kind as string, rank: json.rank as number, bias: json.bias as boolean, hidden: json.hidden as number,
    depth: json.depth as number, growth: json.growth as number, activation: json.activation as string,
  };
}

function optimizerOf(json: Record<string, unknown>): OptimizerSpecLike {
  return {
    name: json.name as string, lr: json.lr as number, weightDecay: json.weight_decay as number,
    betas: json.betas as number[], eps: json.eps as number, momentum: json.momentum as number,
    nesterov: json.nesterov as boolean, warmupSteps: json.warmup_steps as number,
    totalSteps: json.total_steps as number | null, maxGradNorm: json.max_grad_norm as number | null,
  };
}

/** Sessions as a phone would run them: CPU, one thread, no arena or memory patterns. */
let sessionsCreated = 0;
const sessionFactory = (model: Uint8Array): Promise<ort.InferenceSession> => {
  sessionsCreated++;
  return ort.InferenceSession.create(model, {
    executionProviders: ["cpu"], intraOpNumThreads: 1, interOpNumThreads: 1, enableCpuMemArena: false,
    enableMemPattern: false, graphOptimizationLevel: "all",
  });
};

function learnerFor(c: Case): OrtLearner {
  const graphs = new Map(c.graphs.map((name) => [name, GRAPHS.get(name)!]));
  const specs = new Map(c.specs.map(([selector, spec]) => [selector, specOf(spec)]));
  return new OrtLearner(layoutOf(c), specs, optimizerOf(c.optimizer), graphs, {
    seed: c.seed, interval: c.interval, sessionFactory,
  });
}

function f32Hex(array: NdArray): string {
  const out = new Uint8Array(array.data.length * 4);
  const view = new DataView(out.buffer);
  (array.data as Float32Array).forEach((v, i) => view.setFloat32(4 * i, v, true));
  return toHex(out);
}

/** Bit equality of a learner's adapters with Python's, with the worst difference on failure. */
function assertStateEqual(learner: OrtLearner, expected: StateJson, where: string): void {
  const state = learner.adapterState();
  assert.deepEqual([...state.keys()].sort(), Object.keys(expected).sort(), `${where}: layers`);
  for (const [layer, params] of state) {
    assert.deepEqual([...params.keys()].sort(), Object.keys(expected[layer]!).sort(), `${where}: ${layer} params`);
    for (const [p, value] of params) {
      const want = expected[layer]![p]!;
      assert.deepEqual(value.shape, want.shape, `${where}: ${layer}/${p} shape`);
      if (f32Hex(value) !== want.hex) {
        const theirs = array(want).data as Float32Array;
        let worst = 0;
        let count = 0;
        value.data.forEach((v, i) => {
          const diff = Math.abs((v as number) - theirs[i]!);
          if (diff !== 0 || Object.is(v, -0) !== Object.is(theirs[i], -0)) count++;
          worst = Math.max(worst, diff);
        });
        assert.fail(`${where}: ${layer}/${p} differs from Python in ${count} of ${theirs.length} values, by at most ${worst}`);
      }
    }
  }
}

function assertMetricsEqual(got: Record<string, number>, want: Record<string, number>, where: string): void {
  assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort(), `${where}: metric names`);
  for (const [key, value] of Object.entries(want)) assert.ok(Object.is(got[key], value), `${where}: ${key} ${got[key]} != ${value}`);
}

async function assertRefused(action: () => Promise<unknown>, error: string, learner: OrtLearner, where: string): Promise<void> {
  const bytes = toHex(learner.toBytes());
  const step = learner.step;
  await assert.rejects(action, (err: Error) => {
    assert.equal(err.constructor.name, error, `${where}: ${err.constructor.name}: ${err.message}`);
    return true;
  }, `${where}: accepted`);
  assert.equal(learner.step, step, `${where}: step changed`);
  assert.equal(toHex(learner.toBytes()), bytes, `${where}: the learner changed`);
}

// ------------------------------------------------------------------------------------------------
// tests

test("the vectors cover every wire form, both optimizers, intervals 1 and 2 and a convolution", () => {
  const names = [...CASES.keys()];
  assert.ok(names.some((n) => n.includes("weight-gradient")) && names.some((n) => n.includes("parameter-gradient")));
  assert.ok(names.some((n) => n.startsWith("conv")) && VECTORS.cases.some((c) => c.interval === 2));
  assert.ok(VECTORS.hostile_chunks.length >= 10 && VECTORS.hostile_states.length >= 5);
});

for (const c of VECTORS.cases) {
  test(`${c.name}: seeded initial adapters and state bytes equal Python's`, () => {
    const learner = learnerFor(c);
    assertStateEqual(learner, c.initial, "initial");
    assert.equal(toHex(learner.toBytes()), c.initial_bytes);
  });

  test(`${c.name}: every fit equals Python's bit for bit (adapters, metrics, step, to_bytes)`, async () => {
    const learner = learnerFor(c);
    const layout = layoutOf(c);
    for (const [i, fit] of c.fits.entries()) {
      const decoded = decodeAdaptation(fromHex(fit.chunk.blob), { layout });
      const raw = chunkOf(fit.chunk.raw);
      assert.deepEqual([...decoded.grads.keys()], [...raw.grads.keys()], `fit ${i}: decoded layers`);
      const metrics = await learner.fit(decoded);
      assertMetricsEqual(metrics, fit.metrics, `fit ${i}`);
      assert.equal(learner.step, fit.step, `fit ${i}: step`);
      assertStateEqual(learner, fit.state, `fit ${i}`);
      assert.equal(toHex(learner.toBytes()), fit.bytes, `fit ${i}: to_bytes`);
    }
    await learner.release();
  });

  test(`${c.name}: a state saved by Python after any fit loads and carries on identically`, async () => {
    for (let k = 0; k + 1 < c.fits.length; k++) {
      const learner = learnerFor(c);
      await learner.loadBytes(fromHex(c.fits[k]!.bytes));
      assert.equal(toHex(learner.toBytes()), c.fits[k]!.bytes, `loaded after fit ${k}`);
      for (const fit of c.fits.slice(k + 1)) {
        const metrics = await learner.fit(chunkOf(fit.chunk.raw));
        assertMetricsEqual(metrics, fit.metrics, `resumed after fit ${k}`);
        assertStateEqual(learner, fit.state, `resumed after fit ${k}`);
      }
      assert.equal(toHex(learner.toBytes()), c.fits.at(-1)!.bytes);
    }
  });
}

test("hostile chunks are refused with Python's error class and change nothing", async () => {
  const byCase = new Map<string, OrtLearner>();
  for (const hostile of VECTORS.hostile_chunks) {
    let learner = byCase.get(hostile.case);
    if (learner === undefined) {
      learner = learnerFor(CASES.get(hostile.case)!);
      for (const fit of CASES.get(hostile.case)!.fits) await learner.fit(chunkOf(fit.chunk.raw));
      byCase.set(hostile.case, learner);
    }
    const target = learner;
    await assertRefused(() => target.fit(chunkOf(hostile.chunk)), hostile.error, target, hostile.label);
  }
  // still the learner Python had: the next real chunk steps exactly as before
  for (const learner of byCase.values()) assert.ok(learner.step > 0);
});

test("hostile learner states are refused with Python's error class and change nothing", async () => {
  for (const hostile of VECTORS.hostile_states) {
    const c = CASES.get(hostile.case)!;
    const learner = learnerFor(c);
    await learner.loadBytes(fromHex(c.fits.at(-1)!.bytes));
    await assertRefused(() => learner.loadBytes(fromHex(hostile.blob)), hostile.error, learner, hostile.label);
  }
});

test("sessions are created lazily, once per graph, and a missing rows graph is a ConfigError", async () => {
  const c = CASES.get("small-mlp-adamw-i2-parameter-gradient")!;
  const before = sessionsCreated;
  const learner = learnerFor(c);
  assert.equal(sessionsCreated, before, "no session before a step");
  await learner.fit(chunkOf(c.fits[0]!.chunk.raw));
  assert.equal(sessionsCreated, before, "no session while buffering");
  await learner.fit(chunkOf(c.fits[1]!.chunk.raw));
  // fc1 and head as parameter gradients, fc2 as rows: three graphs
  assert.equal(sessionsCreated - before, 3);
  const graphs = new Map(c.graphs.filter((g) => !g.startsWith("lowrank-r2-12x5-adamw")).map((g) => [g, GRAPHS.get(g)!]));
  assert.throws(() => new OrtLearner(layoutOf(c), new Map(c.specs.map(([k, s]) => [k, specOf(s)])),
    optimizerOf(c.optimizer), graphs, { sessionFactory }), { name: "ConfigError" });
});

test("a graph whose parameter inputs do not fit the layer is refused before it runs", async () => {
  const c = CASES.get("small-partial-sgd-nesterov-i1")!;
  // hand the head's graph (12x5) the name of fc1's (16x12)
  const graphs = new Map(c.graphs.map((g) => [g, GRAPHS.get(g)!]));
  graphs.set("lowrank-r3-16x12-sgd-nesterov", GRAPHS.get("linear-nobias-12x5-sgd-nesterov")!);
  const learner = new OrtLearner(layoutOf(c), new Map(c.specs.map(([k, s]) => [k, specOf(s)])),
    optimizerOf(c.optimizer), graphs, { seed: c.seed, sessionFactory });
  await assertRefused(() => learner.fit(chunkOf(c.fits[0]!.chunk.raw)), "AdapterError", learner, "wrong graph");
});
