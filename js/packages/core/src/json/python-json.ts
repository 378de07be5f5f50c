/**
 * JSON text exactly as Python's `json.dumps` writes it: Python's float repr (`1.0`, `1e-05`,
 * `1e+16`), its string escapes with and without `ensure_ascii`, and `sort_keys` in code-point
 * order. Signed transcripts and payload headers are hashed or compared byte for byte, so a
 * JavaScript node must write the very bytes a Python node writes.
 */

import type { OrderedJson } from "./parser.js";
import { isWellFormed } from "./parser.js";

/** A value {@link dumpsPython} can write: objects as Maps (kept in order) or plain objects. */
export type DumpableJson =
  | null | boolean | string | bigint | number | readonly DumpableJson[]
  | ReadonlyMap<string, DumpableJson> | { readonly [key: string]: DumpableJson };

/** How {@link dumpsPython} writes: the keyword arguments of Python's `json.dumps` it needs. */
export interface PythonDumpOptions {
  /** `ensure_ascii`: escape every non-ASCII character as `\uXXXX` (Python's default). */
  ensureAscii: boolean;
  /** `sort_keys`: object keys in code-point order (as Python sorts `str`). */
  sortKeys: boolean;
  /** `allow_nan`: write NaN/Infinity as Python does instead of refusing them. */
  allowNan?: boolean;
}

/**
 * Python's `repr(float)`: the shortest digits that read back to `value` (ECMAScript's
 * `Number.prototype.toString` picks the same digits, the closest of the shortest), laid out as
 * Python does: positional for decimal exponents -4 < e <= 16 with a `.0` when integral,
 * else `d.ddde±XX`.
 */
export function pythonFloatRepr(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "inf";
  if (value === -Infinity) return "-inf";
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const sign = value < 0 ? "-" : "";
  const text = Math.abs(value).toString();
  const [mantissa = "", exponentText] = text.split("e");
  const exponent = exponentText === undefined ? 0 : Number(exponentText);
  const [whole = "", fraction = ""] = mantissa.split(".");
  // digits d1 d2 ... and decpt such that value = 0.d1d2... * 10^decpt
  let digits = whole + fraction;
  let decpt = whole.length + exponent;
  const leadingZeros = digits.length - digits.replace(/^0+/, "").length;
  digits = digits.slice(leadingZeros);
  decpt -= leadingZeros;
  digits = digits.replace(/0+$/, "");
  let body: string;
  if (decpt <= -4 || decpt > 16) {
    const e = decpt - 1;
    const rest = digits.slice(1);
    body = `${digits.slice(0, 1)}${rest ? `.${rest}` : ""}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  } else if (decpt <= 0) {
    body = `0.${"0".repeat(-decpt)}${digits}`;
  } else if (decpt >= digits.length) {
    body = `${digits}${"0".repeat(decpt - digits.length)}.0`;
  } else {
    body = `${digits.slice(0, decpt)}.${digits.slice(decpt)}`;
  }
  return sign + body;
}

const SHORT_ESCAPES: Record<string, string> = {
  "\"": "\\\"", "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f",
};

/** A JSON string literal as Python's `json.dumps` writes it (`ensure_ascii` or not). */
export function pythonJsonString(text: string, ensureAscii: boolean): string {
  const pattern = ensureAscii ? /[\\"]|[^ -~]/g : /[\x00-\x1f\\"]/g;
  return `"${text.replace(pattern, (c) => SHORT_ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)}"`;
}

/**
 * `json.dumps(value, separators=(",", ":"), ensure_ascii=..., sort_keys=..., allow_nan=...)`.
 * `bigint` is a Python int, `number` a Python float. Throws `RangeError` for NaN or an infinity
 * unless `allowNan`, and `TypeError` for anything JSON cannot hold.
 */
export function dumpsPython(value: DumpableJson | OrderedJson, options: PythonDumpOptions): string {
  const parts: string[] = [];
  write(value, options, parts);
  return parts.join("");
}

function write(value: DumpableJson | OrderedJson, options: PythonDumpOptions, out: string[]): void {
  if (value === null) out.push("null");
  else if (value === true) out.push("true");
  else if (value === false) out.push("false");
  else if (typeof value === "string") out.push(pythonJsonString(value, options.ensureAscii));
  else if (typeof value === "bigint") out.push(value.toString());
  else if (typeof value === "number") {
    if (!Number.isFinite(value)) {
      if (!options.allowNan) throw new RangeError(`out of range float value ${value} is not JSON compliant`);
      out.push(Number.isNaN(value) ? "NaN" : value > 0 ? "Infinity" : "-Infinity");
    } else {
      out.push(pythonFloatRepr(value));
    }
  } else if (Array.isArray(value)) {
    out.push("[");
    value.forEach((item: DumpableJson, i: number) => {
      if (i) out.push(",");
      write(item, options, out);
    });
    out.push("]");
  } else if (typeof value === "object") {
    const entries: [string, DumpableJson][] = value instanceof Map
      ? [...(value as ReadonlyMap<string, DumpableJson>).entries()]
      : Object.keys(value).map((k) => [k, (value as { [key: string]: DumpableJson })[k] as DumpableJson]);
    if (options.sortKeys) entries.sort(([a], [b]) => compareCodePoints(a, b));
    out.push("{");
    entries.forEach(([key, item], i) => {
      if (typeof key !== "string") throw new TypeError(`keys must be str, not ${typeof key}`);
      if (i) out.push(",");
      out.push(pythonJsonString(key, options.ensureAscii), ":");
      write(item, options, out);
    });
    out.push("}");
  } else {
    throw new TypeError(`Object of type ${typeof value} is not JSON serializable`);
  }
}

/** Order two strings by code point, as Python compares `str` (UTF-16 order differs above
 * U+FFFF against U+E000..U+FFFF). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1; // a surrogate starts a code point above U+FFFF
    return x - y;
  }
  return a.length - b.length;
}

/** UTF-8 bytes of a string that must be valid Unicode (Python's `str.encode("utf-8")` refuses
 * lone surrogates; TextEncoder would silently write U+FFFD). Throws `RangeError`. */
export function encodeUtf8Strict(text: string): Uint8Array {
  if (!isWellFormed(text)) throw new RangeError("'utf-8' codec can't encode a lone surrogate");
  return new TextEncoder().encode(text);
}
