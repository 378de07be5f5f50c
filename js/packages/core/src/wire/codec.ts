/**
 * Payloads to bytes and back: safetensors plus a small JSON header; a port of
 * `cola_fed/wire/codec.py` whose encoders write the very bytes Python writes and whose decoders
 * make every check Python makes, in the same order.
 *
 * A payload is one safetensors blob. Its `__metadata__` holds one entry, `cola`, a JSON header
 * with the format version, the payload kind and that kind's bookkeeping; tensors are named by
 * role (`x/<group>`, `d/<layer>`, `rows/<layer>`, `a/<layer>/<param>`, `b/<key>`, ...).
 * Decoding is strict: first the safetensors header is parsed and checked on its own (size
 * caps, dtypes, shapes, byte ranges, names, expected layout) before any tensor is read; then
 * the tensors are read and checked for values (finite floats, booleans 0/1, row indices in
 * range). Every failure, for any input whatever, is a {@link MalformedPayloadError}.
 */

import { MalformedPayloadError } from "../errors.js";
import type { DumpableJson } from "../json/python-json.js";
import { dumpsPython } from "../json/python-json.js";
import type { OrderedJson, OrderedJsonObject } from "../json/strict-json.js";
import { loadsStrictOrdered } from "../json/strict-json.js";
import type { DType, NdArray } from "../tensor.js";
import { numel } from "../tensor.js";
import type { AdaptationData } from "./adaptation.js";
import { emptyAdaptation, rowLayers } from "./adaptation.js";
import type { Layout } from "./layout.js";
import { isConv2d, layoutIndex, shapeError, unfoldedValues } from "./layout.js";
import type { RawTensor, StDtype } from "./safetensors.js";
import {
  ST_ITEM_SIZE, ST_OF_DTYPE, bfloat16ToFloat, floatToBfloat16, floatToHalf, fromLittleEndian, halfToFloat,
  isStDtype, serializeSafetensors, toLittleEndian,
} from "./safetensors.js";

/** The payload format this codec reads and writes. */
export const FORMAT_VERSION = 1;
/** The payload kinds. */
export const KINDS = ["adaptation", "adapter-state", "batch", "metrics", "bundle"] as const;
/** A payload kind. */
export type PayloadKind = (typeof KINDS)[number];
/** Floating dtypes `x` and `d` may travel in; fp16 and bf16 are lossy and opt-in. */
export const WIRE_DTYPES = ["float32", "float16", "bfloat16"] as const;
/** A wire dtype of adaptation data. */
export type WireDType = (typeof WIRE_DTYPES)[number];

/** An adapter state: layer -> parameter -> float32 array (the only thing a node returns). */
export type AdapterState = Map<string, Map<string, NdArray<"float32">>>;

/** Scalar metrics: `bigint` for a Python int, `number` for a Python float. */
export type Metrics = Map<string, number | bigint>;

const NAME = /^[A-Za-z0-9_.\-/]{1,512}$/;
const NAME_PATTERN = "[A-Za-z0-9_.\\-/]{1,512}";
const DIGEST = /^[0-9a-f]{64}$/;
const TENSOR_FIELDS = ["data_offsets", "dtype", "shape"];
const ST_NDARRAY: Partial<Record<StDtype, DType>> = {
  F64: "float64", F32: "float32", F16: "float16", I64: "int64", I32: "int32", U8: "uint8", BOOL: "bool",
};
const WIRE_ST: Record<WireDType, StDtype> = { float32: "F32", float16: "F16", bfloat16: "U16" };

/** Caps checked before anything is allocated (`codec.Limits`). */
export class Limits {
  /** Largest payload accepted. */
  readonly maxBytes: number;
  /** Largest safetensors JSON header accepted. */
  readonly maxHeaderBytes: number;
  /** Most tensors in one payload. */
  readonly maxTensors: number;
  /** Most rows of any one tensor. */
  readonly maxRows: number;

  constructor(init: Partial<Pick<Limits, "maxBytes" | "maxHeaderBytes" | "maxTensors" | "maxRows">> = {}) {
    this.maxBytes = init.maxBytes ?? 2 ** 31;
    this.maxHeaderBytes = init.maxHeaderBytes ?? 2 ** 20;
    this.maxTensors = init.maxTensors ?? 4096;
    this.maxRows = init.maxRows ?? 2 ** 26;
  }
}

/** The caps Python's codec uses unless told otherwise. */
export const DEFAULT_LIMITS = new Limits();

/**
 * What the adaptation data of one TRAIN order may take, every chunk of its interval together
 * (`codec.DecodeBudget`): its values once decoded (float32, row indices int64) and the values
 * the learner unfolds from a convolution's compact data (float32). {@link decodeAdaptation}
 * spends a chunk's share from its header, before anything is read, cast or unfolded; the chunk
 * that would overdraw the budget is refused with {@link MalformedPayloadError}.
 */
export class DecodeBudget {
  readonly maxBytes: bigint;
  spent = 0n;
  chunks = 0;

  /** `maxBytes`: the budget in bytes (a node's `max-payload-mb`: `Limits.maxBytes`). */
  constructor(maxBytes: number | bigint) {
    this.maxBytes = BigInt(maxBytes);
  }

  /** Take `nbytes` for one more chunk, or refuse it (and change nothing). */
  spend(nbytes: bigint): void {
    const total = this.spent + nbytes;
    if (total > this.maxBytes) {
      const what = this.chunks === 0 ? "this adaptation data"
        : `the adaptation data of this order's first ${this.chunks + 1} chunks`;
      throw new MalformedPayloadError(`${what} would take ${total} bytes decoded and unfolded (float32), above this `
        + `node's cap of ${this.maxBytes} bytes (max-payload-mb): refused before anything is unfolded`);
    }
    this.spent = total;
    this.chunks += 1;
  }
}

// ---------------------------------------------------------------------------------------------
// the envelope shared by every kind

/** A tensor's checked entry: safetensors dtype, shape, and where its bytes start. */
export interface TensorSpec {
  readonly dtype: StDtype;
  readonly shape: readonly number[];
  readonly start: number;
}

/** A payload whose structure {@link inspect} has checked. */
export interface CheckedPayload {
  readonly blob: Uint8Array;
  /** Tensors in the order the safetensors header lists them. */
  readonly specs: Map<string, TensorSpec>;
  /** The cola-fed header, every field type-checked for its kind. */
  readonly header: OrderedJsonObject;
}

/**
 * One payload: `tensors` plus the JSON `header` of a payload `kind` (`pack`): Python's
 * `json.dumps(meta, separators=(",", ":"))` in the safetensors metadata, byte for byte.
 * Throws {@link MalformedPayloadError} if the header holds NaN or an infinity.
 */
export function pack(kind: string, tensors: ReadonlyMap<string, RawTensor>, header: ReadonlyMap<string, DumpableJson>): Uint8Array {
  const meta = new Map<string, DumpableJson>([["format", BigInt(FORMAT_VERSION)], ["kind", kind], ...header]);
  let text: string;
  try {
    text = dumpsPython(meta, { ensureAscii: true, sortKeys: false });
  } catch (err) {
    throw new MalformedPayloadError(`a '${kind}' header must hold finite numbers: ${(err as Error).message}`);
  }
  return serializeSafetensors(tensors, new Map([["cola", text]]));
}

/** A value's text cut short for error messages (a hostile header can be a megabyte). */
function short(value: unknown): string {
  let text: string;
  try {
    text = value instanceof Map ? `{${[...value.keys()].map((k) => JSON.stringify(k)).join(", ")}}`
      : typeof value === "bigint" ? value.toString()
        : JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length <= 80 ? text : `${text.slice(0, 77)}...`;
}

function isMap(value: OrderedJson | undefined): value is OrderedJsonObject {
  return value instanceof Map;
}

/** Python's `_is_int`: a JSON integer (bools are not). */
function isInt(value: OrderedJson | undefined): value is bigint {
  return typeof value === "bigint";
}

/** Python's `_is_number`: a finite JSON number. */
function isNumber(value: OrderedJson | undefined): value is bigint | number {
  return typeof value === "bigint" || (typeof value === "number" && Number.isFinite(value));
}

function sameKeys(found: Iterable<string>, expected: Iterable<string>): boolean {
  const a = new Set(found);
  const b = new Set(expected);
  return a.size === b.size && [...a].every((k) => b.has(k));
}

/**
 * Check a payload's structure without reading a tensor (`inspect`/`_inspect`): sizes, the
 * safetensors header (strict JSON), the cola-fed header of `kind` with every field typed, then
 * each tensor's entry. Throws {@link MalformedPayloadError} for anything else.
 */
export function inspect(blob: Uint8Array, kind: PayloadKind, limits: Limits = DEFAULT_LIMITS): CheckedPayload {
  if (!(blob instanceof Uint8Array)) throw new MalformedPayloadError(`a payload must be bytes, got ${typeof blob}`);
  const size = blob.length;
  if (size > limits.maxBytes) throw new MalformedPayloadError(`payload of ${size} bytes exceeds the cap ${limits.maxBytes}`);
  if (size < 8) throw new MalformedPayloadError(`payload of ${size} bytes is too short to hold a header`);
  const headerLenBig = new DataView(blob.buffer, blob.byteOffset, 8).getBigUint64(0, true);
  if (headerLenBig > BigInt(limits.maxHeaderBytes) || 8n + headerLenBig > BigInt(size)) {
    throw new MalformedPayloadError(
      `header length ${headerLenBig} does not fit the payload (${size} bytes, header cap ${limits.maxHeaderBytes})`);
  }
  const headerLen = Number(headerLenBig);
  const raw = loadsStrictOrdered(blob.subarray(8, 8 + headerLen), { what: "the payload header", maxBytes: limits.maxHeaderBytes });
  if (!isMap(raw)) throw new MalformedPayloadError("the payload header is not a JSON object");
  const meta = raw.get("__metadata__");
  raw.delete("__metadata__");
  const header = colaHeader(meta === undefined ? null : meta, kind, limits);
  if (raw.size > limits.maxTensors) throw new MalformedPayloadError(`${raw.size} tensors exceed the cap ${limits.maxTensors}`);
  const specs = new Map<string, TensorSpec>();
  for (const [name, info] of raw) {
    const [dtype, shape, offset] = tensorSpec(name, info, size - 8 - headerLen, limits);
    specs.set(name, { dtype, shape, start: 8 + headerLen + offset });
  }
  return { blob, specs, header };
}

/** One tensor's entry of the safetensors header, checked (`_tensor_spec`). */
function tensorSpec(name: string, info: OrderedJson, dataSize: number, limits: Limits): [StDtype, number[], number] {
  if (!NAME.test(name)) throw new MalformedPayloadError(`invalid tensor name ${short(name)}`);
  if (!isMap(info) || !sameKeys(info.keys(), TENSOR_FIELDS)) {
    const fields = isMap(info) ? [...info.keys()].sort().slice(0, 8) : typeof info;
    throw new MalformedPayloadError(`tensor '${name}': entry ${short(fields)} must hold exactly ${short(TENSOR_FIELDS)}`);
  }
  const stDtype = info.get("dtype");
  const shape = info.get("shape");
  const offsets = info.get("data_offsets");
  if (typeof stDtype !== "string" || !isStDtype(stDtype)) {
    throw new MalformedPayloadError(`tensor '${name}': dtype ${short(stDtype)} is not one of ["BOOL", "F16", "F32", "F64", "I32", "I64", "U16", "U8"]`);
  }
  const validShape = Array.isArray(shape) && shape.length <= 4 && shape.every((s) => isInt(s) && s >= 0n)
    && (shape.length === 0 || (shape[0] as bigint) <= BigInt(limits.maxRows))
    && (shape as bigint[]).reduce((n, s) => n * (s > 1n ? s : 1n), 1n) <= BigInt(limits.maxBytes);
  if (!validShape) throw new MalformedPayloadError(`tensor '${name}': invalid shape ${short(shape)}`);
  const dims = shape as bigint[];
  const nbytes = dims.reduce((n, s) => n * s, 1n) * BigInt(ST_ITEM_SIZE[stDtype]);
  const validOffsets = Array.isArray(offsets) && offsets.length === 2 && offsets.every(isInt)
    && 0n <= (offsets[0] as bigint) && (offsets[0] as bigint) <= (offsets[1] as bigint)
    && (offsets[1] as bigint) <= BigInt(dataSize) && (offsets[1] as bigint) - (offsets[0] as bigint) === nbytes;
  if (!validOffsets) {
    throw new MalformedPayloadError(
      `tensor '${name}': byte range ${short(offsets)} does not hold shape [${dims.join(", ")}] of ${stDtype} within ${dataSize} data bytes`);
  }
  return [stDtype, dims.map(Number), Number((offsets as bigint[])[0])];
}

/** The cola-fed header from the safetensors `__metadata__`, every field type-checked. */
function colaHeader(meta: OrderedJson, kind: PayloadKind, limits: Limits): OrderedJsonObject {
  if (meta === null) throw new MalformedPayloadError("the payload has no cola-fed header; is it a cola-fed payload?");
  if (!isMap(meta) || !sameKeys(meta.keys(), ["cola"]) || typeof meta.get("cola") !== "string") {
    const found = isMap(meta) ? [...meta.keys()].sort().slice(0, 8) : typeof meta;
    throw new MalformedPayloadError(`the payload's __metadata__ ${short(found)} must hold one string entry, 'cola'; is it a cola-fed payload?`);
  }
  const header = loadsStrictOrdered(meta.get("cola") as string, { what: "the cola-fed header", maxBytes: limits.maxHeaderBytes });
  if (!isMap(header)) throw new MalformedPayloadError("the cola-fed header is not a JSON object");
  const version = header.get("format");
  if (!isInt(version) || version !== BigInt(FORMAT_VERSION)) {
    throw new MalformedPayloadError(`payload format ${short(version ?? null)}, this cola-fed reads ${FORMAT_VERSION}; upgrade the older side`);
  }
  if (header.get("kind") !== kind) throw new MalformedPayloadError(`expected a '${kind}' payload, got ${short(header.get("kind") ?? null)}`);
  checkFields(header, kind);
  return header;
}

type FieldCheck = (key: string, value: OrderedJson) => void;

function refuse(key: string, expected: string, value: OrderedJson): MalformedPayloadError {
  return new MalformedPayloadError(`header field '${key}' must be ${expected}, got ${short(value)}`);
}

function uniqueStrings(key: string, value: OrderedJson): void {
  if (!(Array.isArray(value) && value.every((v) => typeof v === "string"))) throw refuse(key, "a list of strings", value);
  if (new Set(value).size !== value.length) throw refuse(key, "a list of distinct strings", value);
}

function layerNames(key: string, value: OrderedJson): void {
  uniqueStrings(key, value);
  if (!(value as string[]).every((v) => NAME.test(v))) throw refuse(key, `a list of names matching ${NAME_PATTERN}`, value);
}

function stringMap(key: string, value: OrderedJson): void {
  if (!(isMap(value) && [...value.values()].every((v) => typeof v === "string"))) throw refuse(key, "a mapping of strings to strings", value);
}

function digestMap(key: string, value: OrderedJson): void {
  if (!(isMap(value) && [...value.keys()].every((k) => NAME.test(k))
    && [...value.values()].every((v) => typeof v === "string" && DIGEST.test(v)))) {
    throw refuse(key, "a mapping of layer names to SHA-256 digests (64 lowercase hex)", value);
  }
}

function boolMap(key: string, value: OrderedJson): void {
  if (!(isMap(value) && [...value.values()].every((v) => typeof v === "boolean"))) throw refuse(key, "a mapping of strings to booleans", value);
}

function numberMap(key: string, value: OrderedJson): void {
  if (!(isMap(value) && [...value.values()].every(isNumber))) throw refuse(key, "a mapping of names to finite numbers", value);
}

function lossField(key: string, value: OrderedJson): void {
  if (value !== null && !isNumber(value)) throw refuse(key, "a finite number, or null when unknown", value);
}

function count(key: string, value: OrderedJson): void {
  if (!(isInt(value) && value >= 0n)) throw refuse(key, "a non-negative integer", value);
}

function wireDtype(_key: string, value: OrderedJson): void {
  if (!(typeof value === "string" && (WIRE_DTYPES as readonly string[]).includes(value))) {
    throw new MalformedPayloadError(`unknown wire dtype ${short(value)}; known: ${WIRE_DTYPES.join(", ")}`);
  }
}

/** Per payload kind, the header fields besides `format` and `kind` and their type checks. */
const FIELD_CHECKS: Record<PayloadKind, [string, FieldCheck][]> = {
  "adaptation": [["dtype", wireDtype], ["layers", layerNames], ["input_of", stringMap], ["rows", boolMap],
    ["loss", lossField], ["num_samples", count], ["weight_gradient", layerNames], ["parameter_gradient", digestMap]],
  "adapter-state": [["layers", layerNames]],
  "batch": [["keys", uniqueStrings]],
  "metrics": [["metrics", numberMap]],
  "bundle": [["parts", uniqueStrings]],
};

/** Refuse missing, unknown or mistyped header fields of a payload `kind`. */
function checkFields(header: OrderedJsonObject, kind: PayloadKind): void {
  const checks = FIELD_CHECKS[kind];
  if (checks === undefined) throw new MalformedPayloadError(`unknown payload kind '${kind}'; known: ${KINDS.join(", ")}`);
  const fields = [...header.keys()].filter((k) => k !== "format" && k !== "kind");
  const expected = checks.map(([k]) => k);
  if (!sameKeys(fields, expected)) {
    const extra = fields.filter((k) => !expected.includes(k)).sort();
    const missing = expected.filter((k) => !fields.includes(k)).sort();
    throw new MalformedPayloadError(`a '${kind}' header: unknown fields ${short(extra.slice(0, 8))}, missing ${short(missing)}`);
  }
  for (const [key, check] of checks) check(key, header.get(key) as OrderedJson);
}

/**
 * The raw bytes of every tensor of a checked payload (`_read`), after checking that the
 * tensors tile the data section with no overlap and no slack, as safetensors requires.
 * Views into `blob` (not copies).
 */
function readRaw(checked: CheckedPayload): Map<string, Uint8Array> {
  const { blob, specs } = checked;
  const ranges = [...specs.values()].map((s) => [s.start, s.start + numel(s.shape) * ST_ITEM_SIZE[s.dtype]] as [number, number]);
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let end = 8 + Number(new DataView(blob.buffer, blob.byteOffset, 8).getBigUint64(0, true));
  for (const [begin, stop] of ranges) {
    if (begin !== end) throw new MalformedPayloadError("the payload's tensors do not tile its data section");
    end = stop;
  }
  if (end !== blob.length) throw new MalformedPayloadError("the payload's tensors do not tile its data section");
  const out = new Map<string, Uint8Array>();
  for (const [name, spec] of specs) {
    out.set(name, blob.subarray(spec.start, spec.start + numel(spec.shape) * ST_ITEM_SIZE[spec.dtype]));
  }
  return out;
}

/** A tensor's bytes as an array of its own dtype (a copy). uint16 tensors have no array type
 * in this core (`tensor.ts`): refused. */
function toArray(name: string, spec: TensorSpec, bytes: Uint8Array): NdArray {
  const dtype = ST_NDARRAY[spec.dtype];
  if (dtype === undefined) {
    throw new MalformedPayloadError(`tensor '${name}': ${spec.dtype} tensors are not supported by this node`);
  }
  return fromLittleEndian(dtype, spec.shape, bytes);
}

/** Refuse NaN and Inf in a float tensor, and bytes other than 0 and 1 in a bool tensor
 * (`_check_finite`). */
function checkFinite(name: string, array: NdArray): void {
  if (array.dtype === "float32" || array.dtype === "float64") {
    for (const v of array.data as Float32Array | Float64Array) {
      if (!Number.isFinite(v)) throw new MalformedPayloadError(`tensor '${name}' holds NaN or Inf`);
    }
  } else if (array.dtype === "float16") {
    for (const h of array.data as Uint16Array) {
      if ((h & 0x7c00) === 0x7c00) throw new MalformedPayloadError(`tensor '${name}' holds NaN or Inf`);
    }
  } else if (array.dtype === "bool") {
    for (const b of array.data as Uint8Array) {
      if (b > 1) throw new MalformedPayloadError(`tensor '${name}' holds booleans other than 0 and 1`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// floating-point casts for the wire

/** Any numeric array as float32 (numpy's `astype(float32)`: round to nearest even). */
function asFloat32(array: NdArray): NdArray<"float32"> {
  if (array.dtype === "float32") return array as NdArray<"float32">;
  const out = new Float32Array(array.data.length);
  if (array.dtype === "float16") (array.data as Uint16Array).forEach((h, i) => { out[i] = halfToFloat(h); });
  else if (array.dtype === "bfloat16") (array.data as Uint16Array).forEach((h, i) => { out[i] = bfloat16ToFloat(h); });
  else {
    const source = array.data as ArrayLike<number | bigint>;
    for (let i = 0; i < source.length; i++) out[i] = Number(source[i]);
  }
  return { dtype: "float32", shape: [...array.shape], data: out };
}

/** `_to_wire`: float32 values as the wire dtype's little-endian bytes. */
function toWire(array: NdArray, dtype: WireDType): RawTensor {
  const values = asFloat32(array);
  if (dtype === "float32") return { dtype: "F32", shape: values.shape, bytes: toLittleEndian(values) };
  const bits = new Uint16Array(values.data.length);
  const cast = dtype === "float16" ? floatToHalf : floatToBfloat16;
  values.data.forEach((v, i) => { bits[i] = cast(v); });
  return {
    dtype: dtype === "float16" ? "F16" : "U16", shape: values.shape,
    bytes: toLittleEndian({ dtype: dtype === "float16" ? "float16" : "bfloat16", shape: values.shape, data: bits }),
  };
}

/** `_from_wire`: a wire tensor's bytes as float32 (fp16 and bf16 exactly as numpy widens). */
function fromWire(spec: TensorSpec, bytes: Uint8Array, dtype: WireDType): NdArray<"float32"> {
  if (dtype === "float32") return fromLittleEndian("float32", spec.shape, bytes) as NdArray<"float32">;
  const bits = fromLittleEndian(dtype === "float16" ? "float16" : "bfloat16", spec.shape, bytes);
  return asFloat32(bits);
}

function rawTensor(array: NdArray): RawTensor {
  return { dtype: ST_OF_DTYPE[array.dtype], shape: array.shape, bytes: toLittleEndian(array) };
}

function partition(text: string, separator: string): [string, string] {
  const at = text.indexOf(separator);
  return at < 0 ? [text, ""] : [text.slice(0, at), text.slice(at + separator.length)];
}

function rpartition(text: string, separator: string): [string, string] {
  const at = text.lastIndexOf(separator);
  return at < 0 ? ["", text] : [text.slice(0, at), text.slice(at + separator.length)];
}

// ---------------------------------------------------------------------------------------------
// adaptation data

/** Adaptation data as a payload (`encode_adaptation`); `dtype` casts `x`, `d` and the
 * gradient forms (fp16/bf16 are lossy). Python's bytes, for tests and vectors. */
export function encodeAdaptation(data: AdaptationData, dtype: WireDType = "float32"): Uint8Array {
  if (!(WIRE_DTYPES as readonly string[]).includes(dtype)) {
    throw new MalformedPayloadError(`wire.dtype must be one of ${WIRE_DTYPES.join(", ")}, got '${dtype}'`);
  }
  const tensors = new Map<string, RawTensor>();
  for (const [key, x] of data.inputs) tensors.set(`x/${key}`, toWire(x, dtype));
  for (const [name, [g, gBias]] of data.weightGrads) {
    tensors.set(`g/${name}`, toWire(g, dtype));
    tensors.set(`gb/${name}`, toWire(gBias, dtype));
  }
  for (const [name, grads] of data.paramGrads) {
    for (const [param, value] of grads) tensors.set(`p/${name}/${param}`, toWire(value, dtype));
  }
  const rows = new Map<string, boolean>();
  for (const name of rowLayers(data)) {
    tensors.set(`d/${name}`, toWire(data.grads.get(name) as NdArray, dtype));
    const index = data.rows.get(name) ?? null;
    rows.set(name, index !== null);
    if (index !== null) {
      let max = -1n;
      for (const v of index.data) if (v > max) max = v;
      const small = index.data.length === 0 || max < 2n ** 31n;
      tensors.set(`rows/${name}`, small
        ? rawTensor({ dtype: "int32", shape: index.shape, data: Int32Array.from(index.data, Number) })
        : rawTensor(index));
    }
  }
  const header = new Map<string, DumpableJson>([
    ["dtype", dtype], ["layers", rowLayers(data)], ["input_of", data.inputOf], ["rows", rows],
    ["loss", Number.isNaN(data.loss) ? null : data.loss], ["num_samples", BigInt(data.numSamples)],
    ["weight_gradient", [...data.weightGrads.keys()]], ["parameter_gradient", data.paramAt],
  ]);
  return pack("adaptation", tensors, header);
}

/** What {@link decodeAdaptation} checks a payload against. */
export interface DecodeAdaptationOptions {
  /** The adapted layers; each layer's `x` and `d` shapes must match it. */
  layout?: Layout | null;
  /** Size caps checked before anything is allocated. */
  limits?: Limits;
  /**
   * Shared by every chunk of one TRAIN order: what they take decoded and unfolded, all
   * together, stays within it. Default: a budget of `limits.maxBytes` for this payload alone.
   */
  budget?: DecodeBudget;
}

/**
 * Adaptation data (float32) from a payload, checked against `layout` if given
 * (`decode_adaptation`); a loss sent as null comes back as NaN. Throws
 * {@link MalformedPayloadError} for any input that is not such a payload.
 */
export function decodeAdaptation(blob: Uint8Array, options: DecodeAdaptationOptions = {}): AdaptationData {
  const limits = options.limits ?? DEFAULT_LIMITS;
  const layout = options.layout ? layoutIndex(options.layout) : null;
  const checked = inspect(blob, "adaptation", limits);
  const { specs, header } = checked;
  const dtype = header.get("dtype") as WireDType;
  const layers = header.get("layers") as string[];
  const inputOf = header.get("input_of") as Map<string, string>;
  const hasRows = header.get("rows") as Map<string, boolean>;
  const numSamples = header.get("num_samples") as bigint;
  const weightLayers = header.get("weight_gradient") as string[];
  const paramAt = header.get("parameter_gradient") as Map<string, string>;
  if (new Set([...layers, ...weightLayers, ...paramAt.keys()]).size !== layers.length + weightLayers.length + paramAt.size) {
    throw new MalformedPayloadError("a layer is carried in more than one form");
  }
  const lossValue = header.get("loss") as bigint | number | null;
  const loss = lossValue === null ? Number.NaN : Number(lossValue);
  if (!sameKeys(inputOf.keys(), layers) || !sameKeys(hasRows.keys(), layers)) {
    throw new MalformedPayloadError("header layers, input_of and rows disagree");
  }
  const groups = [...new Set(inputOf.values())];
  const expectedNames = new Set<string>([
    ...groups.map((g) => `x/${g}`), ...layers.map((n) => `d/${n}`),
    ...layers.filter((n) => hasRows.get(n) === true).map((n) => `rows/${n}`),
    ...weightLayers.flatMap((n) => [`g/${n}`, `gb/${n}`]),
  ]);
  const paramTensors = new Map<string, [string, string] | null>();
  for (const name of specs.keys()) if (!expectedNames.has(name)) paramTensors.set(name, parameterOf(name, paramAt));
  const odd = [...[...expectedNames].filter((n) => !specs.has(n)).sort(),
    ...[...paramTensors].filter(([, v]) => v === null).map(([n]) => n)];
  const carried = new Set([...paramTensors.values()].filter((v) => v !== null).map((v) => (v as [string, string])[0]));
  const bare = [...paramAt.keys()].filter((n) => !carried.has(n));
  if (odd.length || bare.length) {
    throw new MalformedPayloadError(odd.length ? `tensors ${short(odd.slice(0, 5))} do not match the header`
      : `layers ${short(bare.sort().slice(0, 5))} in parameter-gradient form carry no gradient`);
  }
  const wire = WIRE_ST[dtype];
  const spec = (name: string): TensorSpec => specs.get(name) as TensorSpec;
  let unfolded = 0n; // values the learner will unfold from convolution data
  for (const name of layers) {
    const x = spec(`x/${inputOf.get(name) as string}`);
    const d = spec(`d/${name}`);
    if (x.dtype !== wire || d.dtype !== wire || (x.shape.length !== 2 && x.shape.length !== 4) || d.shape.length !== x.shape.length) {
      throw new MalformedPayloadError(`layer '${name}': x and d must be ${dtype} tensors, both 2-D or both 4-D`);
    }
    if (layout !== null) {
      const info = layout.get(name);
      if (info === undefined) throw new MalformedPayloadError(`layer '${name}' is not an adapted layer`);
      const error = shapeError(info, x.shape, d.shape, true);
      if (error !== null) throw new MalformedPayloadError(error);
      if (isConv2d(info)) { // compact on the wire, unfolded by the learner
        unfolded += unfoldedValues(info, [d.shape[0], x.shape[1], x.shape[2], x.shape[3]] as [number, number, number, number]);
      }
    }
    if (hasRows.get(name) === true) {
      const r = spec(`rows/${name}`);
      if ((r.dtype !== "I64" && r.dtype !== "I32") || r.shape.length !== 1 || r.shape[0] !== d.shape[0]) {
        throw new MalformedPayloadError(`layer '${name}': rows must be ${d.shape[0]} integers`);
      }
    } else if (x.shape[0] !== d.shape[0]) {
      throw new MalformedPayloadError(`layer '${name}': ${d.shape[0]} gradient rows for ${x.shape[0]} input rows`);
    }
  }
  for (const name of weightLayers) {
    const g = spec(`g/${name}`);
    const b = spec(`gb/${name}`);
    if (g.dtype !== wire || b.dtype !== wire || g.shape.length !== 2 || b.shape.length !== 1 || b.shape[0] !== g.shape[0]) {
      throw new MalformedPayloadError(`layer '${name}': G and g_bias must be ${dtype} tensors [d_out, d_in] and [d_out]`);
    }
    if (layout !== null) {
      const info = layout.get(name);
      if (info === undefined) throw new MalformedPayloadError(`layer '${name}' is not an adapted layer`);
      if (g.shape[0] !== info.dOut || g.shape[1] !== info.dIn) {
        throw new MalformedPayloadError(`layer '${name}': expected G [${info.dOut}, ${info.dIn}], got [${g.shape.join(", ")}]`);
      }
    }
  }
  for (const [tensor, owner] of paramTensors) {
    const [name] = owner as [string, string];
    if (spec(tensor).dtype !== wire) throw new MalformedPayloadError(`layer '${name}': its parameter gradient must be ${dtype} tensors`);
    if (layout !== null && !layout.has(name)) throw new MalformedPayloadError(`layer '${name}' is not an adapted layer`);
  }
  // decoded (float32; row indices int64) and unfolded, before anything is read or unfolded
  let decoded = 0n;
  for (const [name, { shape }] of specs) {
    decoded += shape.reduce((n, s) => n * BigInt(s), 1n) * (name.startsWith("rows/") ? 8n : 4n);
  }
  (options.budget ?? new DecodeBudget(limits.maxBytes)).spend(4n * unfolded + decoded);
  const bytes = readRaw(checked);
  const read = (name: string): NdArray<"float32"> => fromWire(spec(name), bytes.get(name) as Uint8Array, dtype);
  const data = emptyAdaptation();
  data.inputOf = new Map(inputOf);
  data.loss = loss;
  data.numSamples = Number(numSamples);
  data.paramAt = new Map(paramAt);
  for (const [tensor, owner] of paramTensors) {
    const [name, param] = owner as [string, string];
    const value = read(tensor);
    if (!data.paramGrads.has(name)) data.paramGrads.set(name, new Map());
    data.paramGrads.get(name)?.set(param, value);
    checkFinite(tensor, value);
  }
  for (const name of weightLayers) {
    const pair: [NdArray<"float32">, NdArray<"float32">] = [read(`g/${name}`), read(`gb/${name}`)];
    checkFinite(`g/${name}`, pair[0]);
    checkFinite(`gb/${name}`, pair[1]);
    data.weightGrads.set(name, pair);
  }
  for (const group of groups) {
    const x = read(`x/${group}`);
    data.inputs.set(group, x);
    checkFinite(`x/${group}`, x);
  }
  for (const name of layers) {
    const d = read(`d/${name}`);
    data.grads.set(name, d);
    checkFinite(`d/${name}`, d);
    let rows: NdArray<"int64"> | null = null;
    if (bytes.has(`rows/${name}`)) {
      const r = toArray(`rows/${name}`, spec(`rows/${name}`), bytes.get(`rows/${name}`) as Uint8Array);
      const limit = (data.inputs.get(inputOf.get(name) as string) as NdArray).shape[0] as number;
      const values = r.dtype === "int64" ? (r.data as BigInt64Array) : BigInt64Array.from(r.data as Int32Array, BigInt);
      for (const v of values) {
        if (v < 0n || v >= BigInt(limit)) throw new MalformedPayloadError(`layer '${name}': row index out of range [0, ${limit})`);
      }
      rows = { dtype: "int64", shape: [...r.shape], data: values };
    }
    data.rows.set(name, rows);
  }
  return data;
}

/** `[layer, param]` of a parameter-gradient tensor `p/<layer>/<param>` of a layer the header
 * names, else null (`_parameter_of`). */
function parameterOf(tensor: string, paramAt: Map<string, string>): [string, string] | null {
  const [head, rest] = partition(tensor, "/");
  const [layer, param] = rpartition(rest, "/");
  if (head !== "p" || !paramAt.has(layer) || !NAME.test(param)) return null;
  return [layer, param];
}

// ---------------------------------------------------------------------------------------------
// adapter state, batches, metrics, bundles

/** `{layer: {param: array}}` as a float32 payload (`encode_adapter_state`), Python's bytes. */
export function encodeAdapterState(state: ReadonlyMap<string, ReadonlyMap<string, NdArray>>): Uint8Array {
  const tensors = new Map<string, RawTensor>();
  for (const [layer, params] of state) {
    for (const [param, value] of params) tensors.set(`a/${layer}/${param}`, rawTensor(asFloat32(value)));
  }
  return pack("adapter-state", tensors, new Map([["layers", [...state.keys()]]]));
}

/** What {@link decodeAdapterState} checks a payload against. */
export interface DecodeAdapterStateOptions {
  /** The adapted layers; every adapter must belong to one. */
  layout?: Layout | null;
  /** `{layer: {param: shape}}` the state must match exactly. */
  expectedShapes?: ReadonlyMap<string, ReadonlyMap<string, readonly number[]>> | null;
  /** Size caps checked before anything is allocated. */
  limits?: Limits;
}

/**
 * An adapter state, checked against `layout` and exact `expectedShapes` if given
 * (`decode_adapter_state`): fresh float32 arrays, layers in header order. Throws
 * {@link MalformedPayloadError} for any input that is not such a payload.
 */
export function decodeAdapterState(blob: Uint8Array, options: DecodeAdapterStateOptions = {}): AdapterState {
  const checked = inspect(blob, "adapter-state", options.limits ?? DEFAULT_LIMITS);
  const layers = checked.header.get("layers") as string[];
  const known = new Set(layers);
  const layout = options.layout ? layoutIndex(options.layout) : null;
  const found = new Map<string, Map<string, readonly number[]>>();
  for (const [name, { dtype, shape }] of checked.specs) {
    const [prefix, rest] = partition(name, "/");
    const [layer, param] = rpartition(rest, "/");
    if (prefix !== "a" || !layer || !known.has(layer) || dtype !== "F32") {
      throw new MalformedPayloadError(`unexpected tensor '${name}' in an adapter state`);
    }
    if (layout !== null && !layout.has(layer)) throw new MalformedPayloadError(`adapter for '${layer}', which is not an adapted layer`);
    if (!found.has(layer)) found.set(layer, new Map());
    found.get(layer)?.set(param, shape);
  }
  if (options.expectedShapes) {
    const expected = options.expectedShapes;
    const same = found.size === expected.size && [...found].every(([layer, params]) => {
      const want = expected.get(layer);
      return want !== undefined && want.size === params.size && [...params].every(([p, s]) => {
        const w = want.get(p);
        return w !== undefined && w.length === s.length && w.every((n, i) => n === s[i]);
      });
    });
    if (!same || !sameKeys(layers, expected.keys())) {
      throw new MalformedPayloadError("the adapter state does not have the expected parameters and shapes");
    }
  }
  const bytes = readRaw(checked);
  const state: AdapterState = new Map(layers.map((layer) => [layer, new Map()]));
  for (const [name, raw] of bytes) {
    const value = toArray(name, checked.specs.get(name) as TensorSpec, raw) as NdArray<"float32">;
    checkFinite(name, value);
    const [layer, param] = rpartition(name.slice(2), "/");
    state.get(layer)?.set(param, value);
  }
  return state;
}

/** A batch (token ids, masks, labels or features) as a payload (`encode_batch`). */
export function encodeBatch(batch: ReadonlyMap<string, NdArray>): Uint8Array {
  const tensors = new Map<string, RawTensor>();
  for (const [key, value] of batch) tensors.set(`b/${key}`, rawTensor(value));
  return pack("batch", tensors, new Map([["keys", [...batch.keys()]]]));
}

/** What {@link decodeBatch} checks a payload against. */
export interface DecodeBatchOptions {
  /** The keys the batch must carry, no more and no fewer. */
  expectedKeys?: ReadonlySet<string> | null;
  /** Size caps checked before anything is allocated. */
  limits?: Limits;
}

/**
 * A batch whose tensors all share one leading dimension (`decode_batch`): fresh arrays in
 * header order. Throws {@link MalformedPayloadError} for any input that is not such a payload
 * (and for uint16 tensors, which this core has no array type for).
 */
export function decodeBatch(blob: Uint8Array, options: DecodeBatchOptions = {}): Map<string, NdArray> {
  const checked = inspect(blob, "batch", options.limits ?? DEFAULT_LIMITS);
  const keys = checked.header.get("keys") as string[];
  if (!sameKeys(checked.specs.keys(), keys.map((k) => `b/${k}`))) throw new MalformedPayloadError("the batch's tensors do not match its header");
  if (options.expectedKeys && !sameKeys(keys, options.expectedKeys)) {
    throw new MalformedPayloadError(`batch keys ${short([...keys].sort())}, expected ${short([...options.expectedKeys].sort())}`);
  }
  const leading = new Set([...checked.specs.values()].map((s) => (s.shape.length ? s.shape[0] as number : -1)));
  if (leading.size > 1 || leading.has(-1)) throw new MalformedPayloadError("batch tensors must share one leading (batch) dimension");
  const bytes = readRaw(checked);
  const batch = new Map<string, NdArray>();
  for (const [name, raw] of bytes) batch.set(name.slice(2), toArray(name, checked.specs.get(name) as TensorSpec, raw));
  for (const [key, value] of batch) checkFinite(key, value);
  return batch;
}

/** Scalar metrics, carried in the JSON header alone (`encode_metrics`); `bigint` for ints.
 * Throws {@link MalformedPayloadError} for a value that is not a finite number. */
export function encodeMetrics(metrics: ReadonlyMap<string, number | bigint>): Uint8Array {
  const values = new Map<string, number | bigint>();
  for (const [key, value] of metrics) {
    if (!(typeof value === "bigint" || (typeof value === "number" && Number.isFinite(value)))) {
      throw new MalformedPayloadError(`metric '${key}' must be a finite number, got ${String(value)}`);
    }
    values.set(String(key), value);
  }
  return pack("metrics", new Map(), new Map([["metrics", values]]));
}

/** Scalar metrics from a payload that carries no tensors (`decode_metrics`). */
export function decodeMetrics(blob: Uint8Array, options: { limits?: Limits } = {}): Metrics {
  const checked = inspect(blob, "metrics", options.limits ?? DEFAULT_LIMITS);
  if (checked.specs.size) throw new MalformedPayloadError("a metrics payload must carry no tensors");
  readRaw(checked); // nor any data bytes
  return new Map(checked.header.get("metrics") as Map<string, number | bigint>);
}

/** Several payloads as one, each kept whole (`encode_bundle`). */
export function encodeBundle(parts: ReadonlyMap<string, Uint8Array>): Uint8Array {
  const tensors = new Map<string, RawTensor>();
  for (const [name, blob] of parts) tensors.set(`part/${name}`, { dtype: "U8", shape: [blob.length], bytes: blob });
  return pack("bundle", tensors, new Map([["parts", [...parts.keys()]]]));
}

/**
 * The named payloads of a bundle, still encoded (`decode_bundle`): views into `blob`, in
 * header order; decode each with its own strict decoder.
 */
export function decodeBundle(blob: Uint8Array, limits: Limits = DEFAULT_LIMITS): Map<string, Uint8Array> {
  const checked = inspect(blob, "bundle", limits);
  const parts = checked.header.get("parts") as string[];
  if (!sameKeys(checked.specs.keys(), parts.map((p) => `part/${p}`))
    || [...checked.specs.values()].some((s) => s.dtype !== "U8" || s.shape.length !== 1)) {
    throw new MalformedPayloadError("the bundle's parts do not match its header");
  }
  const bytes = readRaw(checked);
  return new Map(parts.map((name) => [name, bytes.get(`part/${name}`) as Uint8Array]));
}
