/**
 * A learner's resumable state as one safetensors blob, byte for byte the format of
 * `cola_fed/gl/learner_state.py` (so a state saved by the Python node loads here and back):
 *
 *     p/<layer>/<param>           adapter parameters
 *     s/<layer>/<param>/<slot>    optimizer state
 *     b/<i>/<part>/<layer>        the i-th buffered chunk: x, d | g, gb | at, pg.<param>
 *     __metadata__                {"step": "<int>", "buffered": "<int>"}
 *
 * Tensors are laid out as the Rust `safetensors` library lays them out (largest dtype first,
 * then by name; header padded with spaces to a multiple of 8). One difference: that library
 * writes the two metadata entries in hash order, which varies between Python processes; this
 * writer always puts `step` first (Python reads either order).
 */

import { AdapterError } from "../errors.js";
import { parseJson } from "../json/parser.js";
import type { OrderedJson } from "../json/parser.js";
import { ITEM_SIZE, numel } from "../tensor.js";
import type { DType, NdArray } from "../tensor.js";
import { compareCodePoints } from "./digest.js";

/** Most buffered chunks a state may hold (`MAX_BUFFERED`). */
export const MAX_BUFFERED = 4096;
/** How a buffered parameter gradient's parts are named: `pg.<param>`. */
export const PARAM_PREFIX = "pg.";
/** safetensors' cap on a header (`MAX_HEADER_SIZE`). */
const MAX_HEADER_BYTES = 100_000_000;

/** Everything a learner needs to resume (`LearnerBase.state_dict`); arrays of any dtype as read. */
export interface LearnerStateDict {
  step: number;
  params: Map<string, Map<string, NdArray>>;
  slots: Map<string, Map<string, Map<string, NdArray>>>;
  /** per buffered chunk: layer -> part (`x`, `d`, `g`, `gb`, `at`, `pg.<param>`) -> array */
  buffer: Map<string, Map<string, NdArray>>[];
}

/** safetensors dtype names, and their order in the Rust `Dtype` enum (the writer sorts by it,
 * descending). float16/bfloat16 are raw 16-bit words. */
const SAFETENSORS_DTYPE: Record<DType, string> = {
  bool: "BOOL", uint8: "U8", float16: "F16", bfloat16: "BF16", int32: "I32", float32: "F32",
  float64: "F64", int64: "I64",
};
const DTYPE_RANK: Record<DType, number> = {
  bool: 0, uint8: 1, float16: 2, bfloat16: 3, int32: 4, float32: 5, float64: 6, int64: 7,
};
const DTYPE_OF = new Map<string, DType>(
  Object.entries(SAFETENSORS_DTYPE).map(([dtype, name]) => [name, dtype as DType]),
);

/** Little-endian bytes of an array's values. */
function tensorBytes(array: NdArray): Uint8Array {
  const data = array.data;
  const out = new Uint8Array(data.length * ITEM_SIZE[array.dtype]);
  const view = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) {
    switch (array.dtype) {
      case "float32": view.setFloat32(4 * i, data[i] as number, true); break;
      case "float64": view.setFloat64(8 * i, data[i] as number, true); break;
      case "int32": view.setInt32(4 * i, data[i] as number, true); break;
      case "int64": view.setBigInt64(8 * i, data[i] as bigint, true); break;
      case "float16": case "bfloat16": view.setUint16(2 * i, data[i] as number, true); break;
      default: out[i] = data[i] as number;
    }
  }
  return out;
}

/** An array of `dtype` and `shape` read from little-endian bytes (copied). */
function tensorFrom(dtype: DType, shape: number[], bytes: Uint8Array): NdArray {
  const count = numel(shape);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const read = <T extends { [i: number]: number | bigint }>(make: (n: number) => T, get: (at: number) => number | bigint, size: number): T => {
    const out = make(count);
    for (let i = 0; i < count; i++) (out as { [i: number]: number | bigint })[i] = get(size * i);
    return out;
  };
  switch (dtype) {
    case "float32": return { dtype, shape, data: read((n) => new Float32Array(n), (a) => view.getFloat32(a, true), 4) };
    case "float64": return { dtype, shape, data: read((n) => new Float64Array(n), (a) => view.getFloat64(a, true), 8) };
    case "int32": return { dtype, shape, data: read((n) => new Int32Array(n), (a) => view.getInt32(a, true), 4) };
    case "int64": return { dtype, shape, data: read((n) => new BigInt64Array(n), (a) => view.getBigInt64(a, true), 8) };
    case "float16": case "bfloat16": return { dtype, shape, data: read((n) => new Uint16Array(n), (a) => view.getUint16(a, true), 2) };
    default: return { dtype, shape, data: bytes.slice(0, count) } as NdArray;
  }
}

/** UTF-8 byte order (Rust's `String` order) = code point order. */
const byName = (a: [string, NdArray], b: [string, NdArray]): number => compareCodePoints(a[0], b[0]);

/** A learner's state as a safetensors blob (`state_to_bytes`). */
export function stateToBytes(state: LearnerStateDict): Uint8Array {
  const flat: [string, NdArray][] = [];
  for (const [layer, params] of state.params) for (const [p, v] of params) flat.push([`p/${layer}/${p}`, v]);
  for (const [layer, params] of state.slots) {
    for (const [p, slots] of params) for (const [s, v] of slots) flat.push([`s/${layer}/${p}/${s}`, v]);
  }
  state.buffer.forEach((chunk, i) => {
    for (const [layer, parts] of chunk) for (const [part, v] of parts) flat.push([`b/${i}/${part}/${layer}`, v]);
  });
  flat.sort((a, b) => DTYPE_RANK[b[1].dtype] - DTYPE_RANK[a[1].dtype] || byName(a, b));
  const bodies = flat.map(([, v]) => tensorBytes(v));
  let header = `{"__metadata__":{"step":${JSON.stringify(String(state.step))},"buffered":${JSON.stringify(String(state.buffer.length))}}`;
  let offset = 0;
  flat.forEach(([name, v], i) => {
    const end = offset + bodies[i]!.length;
    header += `,${JSON.stringify(name)}:{"dtype":"${SAFETENSORS_DTYPE[v.dtype]}","shape":[${v.shape.join(",")}],"data_offsets":[${offset},${end}]}`;
    offset = end;
  });
  header += "}";
  let headerBytes = new TextEncoder().encode(header);
  const padded = Math.ceil(headerBytes.length / 8) * 8;
  if (padded !== headerBytes.length) {
    const spaced = new Uint8Array(padded).fill(0x20);
    spaced.set(headerBytes);
    headerBytes = spaced;
  }
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const body of bodies) {
    out.set(body, at);
    at += body.length;
  }
  return out;
}

function unreadable(reason: string): AdapterError {
  return new AdapterError(`unreadable learner state: ${reason}`);
}

/** Python's `int(text)` for a str: optional whitespace and sign, digits with single `_`. */
function pythonInt(text: OrderedJson | undefined, what: string): number {
  const match = typeof text === "string" ? /^[ \t\n\r\f\v]*([+-]?)(\d+(?:_\d+)*)[ \t\n\r\f\v]*$/u.exec(text) : null;
  if (match === null) throw unreadable(`metadata ${what} is not an integer`);
  const value = BigInt(match[2]!.replaceAll("_", ""));
  const signed = match[1] === "-" ? -value : value;
  // beyond 2^53 the checks that follow refuse it anyway; keep the sign and the magnitude
  return signed > 2n ** 60n ? Number.MAX_VALUE : signed < -(2n ** 60n) ? -Number.MAX_VALUE : Number(signed);
}

interface TensorEntry { name: string; dtype: DType; shape: number[]; start: number; end: number }

/** The tensors and metadata of a safetensors blob, validated as the Rust library does. */
function readSafetensors(blob: Uint8Array): { tensors: TensorEntry[]; meta: Map<string, OrderedJson>; data: Uint8Array } {
  if (blob.length < 8) throw unreadable("shorter than a safetensors header");
  const size = new DataView(blob.buffer, blob.byteOffset, blob.byteLength).getBigUint64(0, true);
  if (size > BigInt(MAX_HEADER_BYTES)) throw unreadable("header too large");
  if (8n + size > BigInt(blob.length)) throw unreadable("invalid header length");
  const n = Number(size);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(blob.subarray(8, 8 + n));
  } catch {
    throw unreadable("header is not UTF-8");
  }
  if (!text.startsWith("{")) throw unreadable("header does not start with '{'");
  let parsed: OrderedJson;
  try {
    parsed = parseJson(text, "strict");
  } catch (err) {
    throw unreadable(`header is not JSON (${(err as Error).message})`);
  }
  if (!(parsed instanceof Map)) throw unreadable("header is not an object");
  const data = blob.subarray(8 + n);
  let meta = new Map<string, OrderedJson>();
  const tensors: TensorEntry[] = [];
  for (const [name, value] of parsed) {
    if (name === "__metadata__") {
      if (!(value instanceof Map) || [...value.values()].some((v) => typeof v !== "string")) {
        throw unreadable("__metadata__ is not a map of strings");
      }
      meta = value;
      continue;
    }
    if (!(value instanceof Map)) throw unreadable(`tensor ${name}: not an object`);
    const dtype = DTYPE_OF.get(value.get("dtype") as string);
    const shape = value.get("shape");
    const offsets = value.get("data_offsets");
    const isIndex = (v: OrderedJson): v is bigint => typeof v === "bigint" && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER);
    if (dtype === undefined) throw unreadable(`tensor ${name}: dtype ${String(value.get("dtype"))} is not one this node reads`);
    if (!Array.isArray(shape) || !shape.every(isIndex) || !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
      throw unreadable(`tensor ${name}: malformed shape or data_offsets`);
    }
    const dims = shape.map(Number);
    const [start, end] = offsets.map(Number) as [number, number];
    tensors.push({ name, dtype, shape: dims, start, end });
  }
  // offsets: contiguous from 0, each the size its dtype and shape need, covering the data
  const ordered = [...tensors].sort((a, b) => a.start - b.start || a.end - b.end);
  let at = 0;
  for (const t of ordered) {
    if (t.start !== at || t.end < t.start) throw unreadable(`tensor ${t.name}: invalid offset`);
    const need = t.shape.reduce((p, d) => p * d, 1) * ITEM_SIZE[t.dtype];
    if (!Number.isSafeInteger(need) || need !== t.end - t.start) throw unreadable(`tensor ${t.name}: shape and offsets disagree`);
    at = t.end;
  }
  if (at !== data.length) throw unreadable("the data does not match the header (incomplete or extra bytes)");
  return { tensors, meta, data };
}

/** Python's `str.rpartition(sep)`. */
function rpartition(text: string, sep: string): [string, string] {
  const i = text.lastIndexOf(sep);
  return i < 0 ? ["", text] : [text.slice(0, i), text.slice(i + sep.length)];
}

/** Python's `str.partition(sep)`. */
function partition(text: string, sep: string): [string, string] {
  const i = text.indexOf(sep);
  return i < 0 ? [text, ""] : [text.slice(0, i), text.slice(i + sep.length)];
}

function getOrSet<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) {
    value = make();
    map.set(key, value);
  }
  return value;
}

/** A buffered layer's parts are a parameter gradient: a 32-byte digest `at`, at least one
 * float `pg.<param>`, nothing else (`_is_parameter_gradient`). */
function isParameterGradient(parts: Map<string, NdArray>): boolean {
  const at = parts.get("at");
  const grads = [...parts.keys()].filter((k) => k !== "at");
  return at !== undefined && at.dtype === "uint8" && at.shape.length === 1 && at.shape[0] === 32 && grads.length > 0
    && grads.every((k) => k.startsWith(PARAM_PREFIX) && k.length > PARAM_PREFIX.length
      && (parts.get(k)!.dtype === "float32" || parts.get(k)!.dtype === "float64"));
}

function isForm(parts: Map<string, NdArray>, form: readonly string[]): boolean {
  return parts.size === form.length && form.every((k) => parts.has(k));
}

/** The state in a {@link stateToBytes} blob, or AdapterError (`state_from_bytes`). */
export function stateFromBytes(blob: Uint8Array): LearnerStateDict {
  const { tensors, meta, data } = readSafetensors(blob);
  if (!meta.has("step")) throw unreadable("'step'");
  if (!meta.has("buffered")) throw unreadable("'buffered'");
  const step = pythonInt(meta.get("step"), "step");
  const buffered = pythonInt(meta.get("buffered"), "buffered");
  if (!(buffered >= 0 && buffered <= MAX_BUFFERED)) {
    throw new AdapterError(`learner state: ${buffered} buffered chunks (at most ${MAX_BUFFERED})`);
  }
  const state: LearnerStateDict = {
    step, params: new Map(), slots: new Map(),
    buffer: Array.from({ length: buffered }, () => new Map()),
  };
  const chunks = new Map<string, { index: number; layer: string; parts: Map<string, NdArray> }>();
  for (const t of tensors) {
    const value = tensorFrom(t.dtype, t.shape, data.subarray(t.start, t.end));
    const [head, rest] = partition(t.name, "/");
    if (head === "p") {
      const [layer, param] = rpartition(rest, "/");
      getOrSet(state.params, layer, () => new Map()).set(param, value);
    } else if (head === "s") {
      const [layerParam, slot] = rpartition(rest, "/");
      const [layer, param] = rpartition(layerParam, "/");
      getOrSet(getOrSet(state.slots, layer, () => new Map()), param, () => new Map()).set(slot, value);
    } else if (head === "b") {
      const [index, tail] = partition(rest, "/");
      const [which, layer] = partition(tail, "/");
      if (!/^[0-9]+$/u.test(index) || Number(index) >= buffered) {
        throw new AdapterError(`learner state: malformed buffered chunk key ${JSON.stringify(t.name.slice(0, 80))}`);
      }
      const key = `${Number(index)}\u0000${layer}`;
      getOrSet(chunks, key, () => ({ index: Number(index), layer, parts: new Map() })).parts.set(which, value);
    }
  }
  for (const { index, layer, parts } of chunks.values()) {
    if (!(isForm(parts, ["x", "d"]) || isForm(parts, ["g", "gb"]) || isParameterGradient(parts))) {
      throw new AdapterError(`learner state: malformed buffered chunk ${index} of '${layer}'`);
    }
    state.buffer[index]!.set(layer, parts);
  }
  return state;
}
