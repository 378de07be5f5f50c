/**
 * The digest that ties a parameter gradient to the adapters it was computed at
 * (`cola_fed.gl.parameter_gradient.digest`): SHA-256 over the parameters sorted by name, each as
 * its UTF-8 name, a zero byte, its shape as little-endian int64 and its float32 values.
 */

import { defaultCryptoProvider } from "../crypto/provider.js";
import { toHex } from "../util/bytes.js";
import type { NdArray } from "../tensor.js";

/** Python's `sorted` order of strings (code points, not UTF-16 units). */
export function compareCodePoints(a: string, b: string): number {
  const ca = [...a];
  const cb = [...b];
  for (let i = 0; i < Math.min(ca.length, cb.length); i++) {
    const d = ca[i]!.codePointAt(0)! - cb[i]!.codePointAt(0)!;
    if (d !== 0) return d;
  }
  return ca.length - cb.length;
}

/** Little-endian bytes of a float32 array's values. */
export function float32Bytes(values: Float32Array): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setFloat32(4 * i, values[i]!, true);
  return out;
}

/** SHA-256 (hex) of one adapter's float32 parameters: names, shapes and values. */
export async function parameterDigest(params: ReadonlyMap<string, NdArray<"float32">>): Promise<string> {
  const encoder = new TextEncoder();
  const parts: Uint8Array[] = [];
  for (const name of [...params.keys()].sort(compareCodePoints)) {
    const value = params.get(name)!;
    parts.push(encoder.encode(name), new Uint8Array([0]));
    const shape = new Uint8Array(8 * value.shape.length);
    const view = new DataView(shape.buffer);
    value.shape.forEach((n, i) => view.setBigInt64(8 * i, BigInt(n), true));
    parts.push(shape, float32Bytes(value.data));
  }
  const total = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    total.set(part, at);
    at += part.length;
  }
  return toHex(await defaultCryptoProvider().sha256(total));
}
