/**
 * The safetensors container as the Python `safetensors` package (0.8) writes it, byte for byte:
 * an 8-byte little-endian header length, a JSON header (`__metadata__` first, then the tensors
 * sorted by dtype, largest first in safetensors' own dtype order, then by name in UTF-8 byte
 * order; serde_json's string escapes), padded with spaces to a multiple of 8, then the tensors'
 * little-endian bytes in that order. Also the typed-array <-> little-endian byte conversions
 * and numpy's float16/bfloat16 casts.
 */

import type { DType, NdArray } from "../tensor.js";
import { ITEM_SIZE, numel } from "../tensor.js";

/** The safetensors dtypes a cola-fed payload may hold (codec `_ST_DTYPES`). */
export type StDtype = "F64" | "F32" | "F16" | "U16" | "I64" | "I32" | "U8" | "BOOL";

/** Bytes per element of each safetensors dtype. */
export const ST_ITEM_SIZE: Record<StDtype, number> = {
  F64: 8, F32: 4, F16: 2, U16: 2, I64: 8, I32: 4, U8: 1, BOOL: 1,
};

/** The rank of each dtype in safetensors' `Dtype` enum; tensors are written highest first. */
const ST_ORDER: Record<StDtype, number> = { BOOL: 0, U8: 4, U16: 10, F16: 11, I32: 13, F32: 15, F64: 17, I64: 18 };

/** Whether `name` is one of the safetensors dtypes a payload may hold. */
export function isStDtype(name: string): name is StDtype {
  return Object.prototype.hasOwnProperty.call(ST_ITEM_SIZE, name);
}

/** The safetensors dtype numpy writes for an array of each dtype (bfloat16 travels as its
 * 16-bit pattern, "U16", as the Python codec sends it). */
export const ST_OF_DTYPE: Record<DType, StDtype> = {
  float64: "F64", float32: "F32", float16: "F16", bfloat16: "U16", int64: "I64", int32: "I32",
  uint8: "U8", bool: "BOOL",
};

/** One tensor to write: its safetensors dtype, shape and little-endian bytes. */
export interface RawTensor {
  readonly dtype: StDtype;
  readonly shape: readonly number[];
  readonly bytes: Uint8Array;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** An array's elements as little-endian bytes (a copy). */
export function toLittleEndian(array: NdArray): Uint8Array {
  const size = ITEM_SIZE[array.dtype];
  const data = array.data;
  const view = new Uint8Array(data.buffer, data.byteOffset, data.length * size);
  const out = new Uint8Array(view);
  if (!LITTLE_ENDIAN && size > 1) {
    for (let i = 0; i < out.length; i += size) out.subarray(i, i + size).reverse();
  }
  return out;
}

/** An array of `dtype` and `shape` from little-endian bytes (copied, so aligned). */
export function fromLittleEndian(dtype: DType, shape: readonly number[], bytes: Uint8Array): NdArray {
  const size = ITEM_SIZE[dtype];
  const copy = new Uint8Array(bytes);
  if (!LITTLE_ENDIAN && size > 1) {
    for (let i = 0; i < copy.length; i += size) copy.subarray(i, i + size).reverse();
  }
  const buffer = copy.buffer;
  const count = numel(shape);
  const data = (() => {
    switch (dtype) {
      case "float64": return new Float64Array(buffer, 0, count);
      case "float32": return new Float32Array(buffer, 0, count);
      case "float16": case "bfloat16": return new Uint16Array(buffer, 0, count);
      case "int64": return new BigInt64Array(buffer, 0, count);
      case "int32": return new Int32Array(buffer, 0, count);
      case "uint8": case "bool": return new Uint8Array(buffer, 0, count);
    }
  })();
  return { dtype, shape: [...shape], data } as NdArray;
}

/** A JSON string as serde_json writes it: `"` `\` and control characters escaped (short forms
 * for \b \t \n \f \r, else `\u00xx`), everything else as it is. */
function serdeString(text: string): string {
  return `"${text.replace(/[\x00-\x1f"\\]/g, (c) => SERDE_ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)}"`;
}

const SERDE_ESCAPES: Record<string, string> = {
  "\"": "\\\"", "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r",
};

function compareUtf8(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return (a[i] as number) - (b[i] as number);
  return a.length - b.length;
}

/**
 * `safetensors.numpy.save(tensors, metadata=metadata)`, byte for byte. Names and metadata must
 * be valid Unicode (the caller's: codec names are ASCII).
 */
export function serializeSafetensors(tensors: ReadonlyMap<string, RawTensor>, metadata: ReadonlyMap<string, string> | null): Uint8Array {
  const encoder = new TextEncoder();
  const ordered = [...tensors.entries()].map(([name, tensor]) => ({ name, tensor, key: encoder.encode(name) }));
  ordered.sort((a, b) => ST_ORDER[b.tensor.dtype] - ST_ORDER[a.tensor.dtype] || compareUtf8(a.key, b.key));
  const entries: string[] = [];
  if (metadata !== null) {
    const meta = [...metadata.entries()].map(([k, v]) => `${serdeString(k)}:${serdeString(v)}`);
    entries.push(`"__metadata__":{${meta.join(",")}}`);
  }
  let offset = 0;
  for (const { name, tensor } of ordered) {
    const expected = numel(tensor.shape) * ST_ITEM_SIZE[tensor.dtype];
    if (tensor.bytes.length !== expected) {
      throw new RangeError(`tensor '${name}': ${tensor.bytes.length} bytes for shape [${tensor.shape}] of ${tensor.dtype}`);
    }
    const end = offset + tensor.bytes.length;
    entries.push(`${serdeString(name)}:{"dtype":"${tensor.dtype}","shape":[${tensor.shape.join(",")}],"data_offsets":[${offset},${end}]}`);
    offset = end;
  }
  const header = encoder.encode(`{${entries.join(",")}}`);
  const padded = header.length + ((8 - (header.length % 8)) % 8);
  const out = new Uint8Array(8 + padded + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(header, 8);
  out.fill(0x20, 8 + header.length, 8 + padded);
  let at = 8 + padded;
  for (const { tensor } of ordered) {
    out.set(tensor.bytes, at);
    at += tensor.bytes.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// numpy's float16 and the codec's bfloat16

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** The float32 a float16 bit pattern stands for (exact: every half is a float). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? Number.NaN : sign * Infinity;
  return sign * (1024 + frac) * 2 ** (exp - 25);
}

/** numpy's `float32 -> float16` (`npy_floatbits_to_halfbits`): round to nearest even,
 * overflow to a signed infinity, NaN kept a NaN. */
export function floatToHalf(value: number): number {
  F32[0] = value;
  const f = U32[0] as number;
  const hSgn = (f & 0x80000000) >>> 16;
  let fExp = f & 0x7f800000;
  let fSig: number;
  if (fExp >= 0x47800000) {
    if (fExp === 0x7f800000) {
      fSig = f & 0x007fffff;
      if (fSig !== 0) {
        let ret = 0x7c00 + (fSig >>> 13);
        if (ret === 0x7c00) ret++;
        return (hSgn + ret) & 0xffff;
      }
      return hSgn + 0x7c00;
    }
    return hSgn + 0x7c00;
  }
  if (fExp <= 0x38000000) {
    if (fExp < 0x33000000) return hSgn;
    fExp >>>= 23;
    fSig = 0x00800000 + (f & 0x007fffff);
    fSig >>>= 113 - fExp;
    if ((fSig & 0x00003fff) !== 0x00001000 || (f & 0x000007ff)) fSig += 0x00001000;
    return (hSgn + (fSig >>> 13)) & 0xffff;
  }
  const hExp = (fExp - 0x38000000) >>> 13;
  fSig = f & 0x007fffff;
  if ((fSig & 0x00003fff) !== 0x00001000) fSig += 0x00001000;
  return (hSgn + hExp + (fSig >>> 13)) & 0xffff;
}

/** The codec's float32 -> bfloat16 (`_to_wire`): round to nearest even on the top 16 bits,
 * in uint32 arithmetic that wraps as numpy's does. */
export function floatToBfloat16(value: number): number {
  F32[0] = value;
  const bits = U32[0] as number;
  const rounded = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 0;
  return rounded >>> 16;
}

/** The float32 a bfloat16 bit pattern stands for (`_from_wire`). */
export function bfloat16ToFloat(bits: number): number {
  U32[0] = (bits << 16) >>> 0;
  return F32[0] as number;
}
