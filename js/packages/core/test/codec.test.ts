import assert from "node:assert/strict";
import { test } from "node:test";
import type { AdaptationData } from "../src/wire/adaptation.js";
import {
  DecodeBudget, Limits, decodeAdaptation, decodeAdapterState, decodeBatch, decodeBundle, decodeMetrics, encodeAdaptation,
  encodeAdapterState, encodeBatch, encodeBundle, encodeMetrics, type WireDType,
} from "../src/wire/codec.js";
import { type Layout, type ModuleType, layerInfo } from "../src/wire/layout.js";
import { floatToBfloat16, floatToHalf, fromLittleEndian, toLittleEndian } from "../src/wire/safetensors.js";
import type { DType, NdArray } from "../src/tensor.js";
import { WIRE, assertRefused, hex, toHexString } from "./wire-vectors.js";

const C = WIRE.codec;

interface ArrayVector { dtype: DType; shape: number[]; data: string }

function fromVector(v: ArrayVector): NdArray {
  return fromLittleEndian(v.dtype, v.shape, hex(v.data));
}

function assertArray(actual: NdArray | undefined, expected: ArrayVector, label: string): void {
  assert.ok(actual !== undefined, `${label}: missing`);
  assert.equal(actual.dtype, expected.dtype, label);
  assert.deepEqual([...actual.shape], expected.shape, label);
  assert.equal(toHexString(toLittleEndian(actual)), expected.data, label);
}

const LAYOUT: Layout = (C.layout as Record<string, unknown>[]).map((l) => layerInfo({
  name: l.name as string, dIn: l.d_in as number, dOut: l.d_out as number, moduleType: l.module_type as ModuleType,
  hasBias: l.has_bias as boolean, kernelSize: l.kernel_size as [number, number], stride: l.stride as [number, number],
  padding: l.padding as [number, number], dilation: l.dilation as [number, number],
}));

test("adapter state: decoded as Python decodes it, encoded to Python's bytes", () => {
  const v = C.valid.adapter_state;
  const state = decodeAdapterState(hex(v.blob), { layout: LAYOUT.concat(layerInfo({ name: "empty", dIn: 1, dOut: 1 })) });
  const expected = v.state as [string, [string, ArrayVector][]][];
  assert.deepEqual([...state.keys()], expected.map(([layer]) => layer));
  for (const [layer, params] of expected) {
    assert.deepEqual([...(state.get(layer)?.keys() ?? [])], params.map(([p]) => p));
    for (const [param, array] of params) assertArray(state.get(layer)?.get(param), array, `${layer}/${param}`);
  }
  assert.equal(toHexString(encodeAdapterState(state)), v.blob);
  const source = new Map((C.sources.state as [string, [string, ArrayVector][]][])
    .map(([layer, params]) => [layer, new Map(params.map(([p, a]) => [p, fromVector(a)]))]));
  assert.equal(toHexString(encodeAdapterState(source)), v.blob);
});

test("batch: every dtype decoded as Python decodes it, encoded to Python's bytes", () => {
  const v = C.valid.batch;
  const expected = v.batch as [string, ArrayVector][];
  const batch = decodeBatch(hex(v.blob), { expectedKeys: new Set(expected.map(([k]) => k)) });
  assert.deepEqual([...batch.keys()], expected.map(([k]) => k));
  for (const [key, array] of expected) assertArray(batch.get(key), array, key);
  // (decoded keys come in the safetensors order, so only the source re-encodes to these bytes)
  const source = new Map((C.sources.batch as [string, ArrayVector][]).map(([k, a]) => [k, fromVector(a)]));
  assert.equal(toHexString(encodeBatch(source)), v.blob);
});

test("metrics: ints and floats as Python's, encoded to Python's bytes", () => {
  const v = C.valid.metrics;
  const metrics = decodeMetrics(hex(v.blob));
  const expected = v.metrics as [string, { int?: string; float?: string }][];
  assert.deepEqual([...metrics.keys()], expected.map(([k]) => k));
  for (const [key, value] of expected) {
    if (value.int !== undefined) assert.equal(metrics.get(key), BigInt(value.int), key);
    else assert.ok(Object.is(metrics.get(key), Number(value.float)), key);
  }
  assert.equal(toHexString(encodeMetrics(metrics)), v.blob);
  assert.throws(() => encodeMetrics(new Map([["x", Number.NaN]])), (err: Error) => err.constructor.name === "MalformedPayloadError");
});

test("bundle: parts as Python's, in order, encoded to Python's bytes", () => {
  const v = C.valid.bundle;
  const parts = decodeBundle(hex(v.blob));
  assert.deepEqual([...parts.keys()], C.sources.bundle_order);
  for (const [name, blob] of Object.entries(v.parts as Record<string, string>)) assert.equal(toHexString(parts.get(name) as Uint8Array), blob);
  assert.equal(toHexString(encodeBundle(parts)), v.blob);
});

interface Decoded {
  inputs: Record<string, ArrayVector>; grads: [string, ArrayVector][]; input_of: [string, string][];
  rows: Record<string, number[] | null>; loss: string | null; num_samples: number;
  weight_grads: [string, [ArrayVector, ArrayVector]][]; param_grads: [string, [string, ArrayVector][]][];
  param_at: [string, string][];
}

function assertAdaptation(data: AdaptationData, expected: Decoded, label: string): void {
  assert.deepEqual(new Set(data.inputs.keys()), new Set(Object.keys(expected.inputs)), label);
  for (const [k, a] of Object.entries(expected.inputs)) assertArray(data.inputs.get(k), a, `${label} x/${k}`);
  assert.deepEqual([...data.grads.keys()], expected.grads.map(([k]) => k), label);
  for (const [k, a] of expected.grads) assertArray(data.grads.get(k), a, `${label} d/${k}`);
  assert.deepEqual([...data.inputOf], expected.input_of, label);
  for (const [k, rows] of Object.entries(expected.rows)) {
    const got = data.rows.get(k);
    assert.deepEqual(got === null || got === undefined ? got : [...got.data].map(Number), rows, `${label} rows/${k}`);
  }
  assert.ok(expected.loss === null ? Number.isNaN(data.loss) : Object.is(data.loss, Number(expected.loss)), label);
  assert.equal(data.numSamples, expected.num_samples, label);
  assert.deepEqual([...data.weightGrads.keys()], expected.weight_grads.map(([k]) => k), label);
  for (const [k, [g, b]] of expected.weight_grads) {
    assertArray(data.weightGrads.get(k)?.[0], g, `${label} g/${k}`);
    assertArray(data.weightGrads.get(k)?.[1], b, `${label} gb/${k}`);
  }
  assert.deepEqual([...data.paramGrads.keys()], expected.param_grads.map(([k]) => k), label);
  for (const [k, params] of expected.param_grads) {
    assert.deepEqual([...(data.paramGrads.get(k)?.keys() ?? [])], params.map(([p]) => p), label);
    for (const [p, a] of params) assertArray(data.paramGrads.get(k)?.get(p), a, `${label} p/${k}/${p}`);
  }
  assert.deepEqual([...data.paramAt], expected.param_at, label);
}

const adaptations: { form: string; dtype: WireDType; blob: string; decoded: Decoded }[] = C.adaptations;

test(`${adaptations.length} adaptation payloads (rows, weight and parameter gradients, conv; fp32/fp16/bf16): decoded and re-encoded as Python`, () => {
  for (const v of adaptations) {
    const label = `${v.form} ${v.dtype}`;
    const data = decodeAdaptation(hex(v.blob), { layout: LAYOUT });
    assertAdaptation(data, v.decoded, label);
    assert.equal(toHexString(encodeAdaptation(data, v.dtype)), v.blob, label);
  }
});

test("float32 -> float16 and bfloat16 casts are numpy's, bit for bit", () => {
  const source = new Float32Array(new Uint8Array(hex(C.casts.float32)).buffer);
  const half = new Uint16Array(new Uint8Array(hex(C.casts.float16)).buffer);
  const bf16 = new Uint16Array(new Uint8Array(hex(C.casts.bfloat16)).buffer);
  source.forEach((value, i) => {
    assert.equal(floatToHalf(value), half[i], `float16 of ${value} (#${i})`);
    assert.equal(floatToBfloat16(value), bf16[i], `bfloat16 of ${value} (#${i})`);
  });
});

interface Hostile { label: string; kind: string; blob: string; error: string;
  options: { layout?: boolean; limits?: Record<string, number>; expected_keys?: string[];
    expected_shapes?: Record<string, Record<string, number[]>> } }

const hostile: Hostile[] = C.hostile;

function decodeHostile(v: Hostile): unknown {
  const blob = hex(v.blob);
  const o = v.options;
  const limits = o.limits === undefined ? undefined : new Limits({
    maxBytes: o.limits.max_bytes, maxHeaderBytes: o.limits.max_header_bytes, maxTensors: o.limits.max_tensors, maxRows: o.limits.max_rows,
  });
  const layout = o.layout ? LAYOUT : undefined;
  switch (v.kind) {
    case "adaptation": return decodeAdaptation(blob, { layout, limits });
    case "adapter-state": return decodeAdapterState(blob, { layout, limits, expectedShapes: o.expected_shapes === undefined ? undefined
      : new Map(Object.entries(o.expected_shapes).map(([l, ps]) => [l, new Map(Object.entries(ps))])) });
    case "batch": return decodeBatch(blob, { limits, expectedKeys: o.expected_keys === undefined ? undefined : new Set(o.expected_keys) });
    case "metrics": return decodeMetrics(blob, { limits });
    case "bundle": return decodeBundle(blob, limits);
    default: throw new Error(`unknown kind ${v.kind}`);
  }
}

test(`${hostile.length} hostile payloads are refused with Python's error class`, async () => {
  for (const v of hostile) await assertRefused(() => decodeHostile(v), v.error, v.label);
});

interface OrderBudget { label: string; blobs: string[]; max_bytes: number; spent: string[]; error: string | null }

test("the chunks of one TRAIN order share one budget, decoded and unfolded, as Python's", async () => {
  const orders: OrderBudget[] = C.orders;
  assert.ok(orders.length >= 6 && orders.some((o) => o.error === null) && orders.some((o) => o.error !== null));
  for (const o of orders) {
    const limits = new Limits({ maxBytes: o.max_bytes });
    const budget = new DecodeBudget(o.max_bytes);
    const spent: string[] = [];
    let refused: unknown = null;
    for (const blob of o.blobs) {
      decodeAdaptation(hex(blob), { layout: LAYOUT, limits }); // every chunk alone passes
      try {
        decodeAdaptation(hex(blob), { layout: LAYOUT, limits, budget });
      } catch (err) {
        refused = err;
        break;
      }
      spent.push(budget.spent.toString());
    }
    assert.deepEqual(spent, o.spent, o.label);
    if (o.error === null) assert.equal(refused, null, o.label);
    else await assertRefused(() => { throw refused; }, o.error, o.label);
    assert.equal(budget.spent.toString(), o.spent.at(-1) ?? "0", `${o.label}: a refused chunk takes nothing`);
  }
});

test("non-bytes and a Uint8Array view into a larger buffer", async () => {
  await assertRefused(() => decodeBatch("abc" as unknown as Uint8Array), "MalformedPayloadError");
  const blob = hex(C.valid.batch.blob);
  const padded = new Uint8Array(blob.length + 7);
  padded.set(blob, 3);
  assert.equal(decodeBatch(padded.subarray(3, 3 + blob.length)).size, C.valid.batch.batch.length);
});
