/** Small array helpers of the learner: numpy's casts, finiteness counts, shape comparison. */

import type { NdArray } from "../tensor.js";
import { numel } from "../tensor.js";

/** The value of an IEEE half (or, `brain`, bfloat16) bit pattern. */
function halfToNumber(bits: number, brain: boolean): number {
  if (brain) {
    const view = new DataView(new ArrayBuffer(4));
    view.setUint32(0, bits << 16);
    return view.getFloat32(0);
  }
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** The values of any array as float64 numbers (numpy's `astype(np.float64)`). */
export function toNumbers(array: NdArray): Float64Array {
  const out = new Float64Array(array.data.length);
  const data = array.data;
  for (let i = 0; i < out.length; i++) {
    const v = data[i]!;
    out[i] = array.dtype === "float16" || array.dtype === "bfloat16"
      ? halfToNumber(v as number, array.dtype === "bfloat16")
      : Number(v);
  }
  return out;
}

/** A float32 copy of any numeric array (numpy's `np.array(value, dtype=np.float32)`: round to
 * nearest even, which is what a Float32Array store does). */
export function toFloat32(array: NdArray): NdArray<"float32"> {
  const data = array.dtype === "float32" ? Float32Array.from(array.data as Float32Array) : Float32Array.from(toNumbers(array));
  return { dtype: "float32", shape: [...array.shape], data };
}

/** How many values of an array are NaN or infinite (integers never are). */
export function countNonFinite(array: NdArray): number {
  if (array.dtype === "int64" || array.dtype === "int32" || array.dtype === "uint8" || array.dtype === "bool") return 0;
  const values = array.dtype === "float32" || array.dtype === "float64" ? (array.data as Float32Array | Float64Array) : toNumbers(array);
  let bad = 0;
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i]!)) bad++;
  return bad;
}

/** Whether two shapes are equal. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((n, i) => n === b[i]);
}

/** A zero float32 array of a shape. */
export function zerosF32(shape: readonly number[]): NdArray<"float32"> {
  return { dtype: "float32", shape: [...shape], data: new Float32Array(numel(shape)) };
}

/** Python's `repr` of a shape tuple, for messages: `(4, 16)`, `(5,)`. */
export function pyShape(shape: readonly number[]): string {
  return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
}

/** Whether an array holds integers (numpy dtype kind `i` or `u`). */
export function isIntegerArray(array: NdArray): boolean {
  return array.dtype === "int64" || array.dtype === "int32" || array.dtype === "uint8";
}
