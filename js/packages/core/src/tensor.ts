/**
 * The one n-dimensional array type the core passes between its parts (codec, learner, tasks):
 * a dtype name as numpy spells it, a shape and a typed array in row-major order. It maps
 * one-to-one onto an ONNX Runtime tensor and onto a safetensors entry.
 */

export type DType = "float32" | "float64" | "float16" | "bfloat16" | "int64" | "int32" | "uint8" | "bool";

/** The typed array holding each dtype's values (float16/bfloat16 as raw 16-bit words). */
export interface DTypeArrays {
  float32: Float32Array;
  float64: Float64Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  int64: BigInt64Array;
  int32: Int32Array;
  uint8: Uint8Array;
  bool: Uint8Array;
}

export interface NdArray<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: DTypeArrays[D];
}

/** Bytes per element of each dtype. */
export const ITEM_SIZE: Record<DType, number> = {
  float32: 4, float64: 8, float16: 2, bfloat16: 2, int64: 8, int32: 4, uint8: 1, bool: 1,
};

/** The number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** A float32 array of the given shape and values. */
export function float32(shape: readonly number[], data: Float32Array): NdArray<"float32"> {
  if (data.length !== numel(shape)) throw new RangeError(`${data.length} values for shape [${shape}]`);
  return { dtype: "float32", shape: [...shape], data };
}
