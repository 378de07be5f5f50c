/**
 * Strict JSON for what comes over the wire, and canonical JSON for signed transcripts: a port
 * of `cola_fed/wire/strict_json.py`.
 *
 * `JSON.parse` is lenient in ways a hostile peer can use: it keeps the last of duplicate keys
 * (two readers may disagree on a value) and rounds integers past 2^53. {@link loadsStrict}
 * refuses what Python's `loads_strict` refuses (oversize, not UTF-8, a byte-order mark, NUL
 * bytes, nesting too deep, duplicate keys, NaN/Infinity, floats overflowing to an infinity,
 * integers of more than 19 digits, unpaired surrogate escapes, any syntax error), each with a
 * {@link MalformedPayloadError}, and lets no other error type out.
 */

import { MalformedPayloadError } from "../errors.js";
import { JsonSyntaxError, MAX_INT_DIGITS, type OrderedJson, type OrderedJsonObject, isWellFormed, parseJson } from "./parser.js";
import { type DumpableJson, dumpsPython, encodeUtf8Strict } from "./python-json.js";

export { MAX_INT_DIGITS, type OrderedJson, type OrderedJsonObject } from "./parser.js";

/** A parsed JSON value: integers as `bigint` (Python `int`), other numbers as `number`
 * (Python `float`), objects as null-prototype records. */
export type JsonValue = null | boolean | string | bigint | number | JsonValue[] | JsonObject;

/** A parsed JSON object, created with `Object.create(null)` (no prototype keys to collide). */
export interface JsonObject {
  [key: string]: JsonValue;
}

/** What {@link loadsStrict} is told: what the text is (named in every error) and its caps. */
export interface StrictJsonOptions {
  /** What the text is (`"the payload header"`), named in every error message. */
  what: string;
  /** Largest accepted size of the UTF-8 text, checked before anything else. Python requires
   * it; here it defaults to 1 MiB, the codec's header cap. */
  maxBytes?: number;
  /** Deepest accepted nesting of arrays and objects (default 16, as Python). */
  maxDepth?: number;
}

const DEFAULT_MAX_BYTES = 2 ** 20;
const DEFAULT_MAX_DEPTH = 16;

/**
 * Parse JSON that came over the wire, refusing anything two parsers could read differently
 * (port of `loads_strict`). Objects keep their keys in order (Maps): use this where the order
 * of keys matters (the codec reads tensors in header order, as Python's dict does).
 * Throws {@link MalformedPayloadError} for anything refused, and nothing else.
 */
export function loadsStrictOrdered(data: Uint8Array | string, options: StrictJsonOptions): OrderedJson {
  const what = options.what;
  try {
    const text = asText(data, what, options.maxBytes ?? DEFAULT_MAX_BYTES);
    checkDepth(text, what, options.maxDepth ?? DEFAULT_MAX_DEPTH);
    try {
      return parseJson(text, "strict");
    } catch (err) {
      if (err instanceof JsonSyntaxError) throw new MalformedPayloadError(`${what} is refused: ${err.message}`);
      throw err;
    }
  } catch (err) {
    if (err instanceof MalformedPayloadError) throw err;
    // the contract: one error family, whatever happens
    const detail = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    throw new MalformedPayloadError(`${what} could not be parsed: ${detail.slice(0, 200)}`);
  }
}

/**
 * Parse JSON that came over the wire (port of `cola_fed.wire.strict_json.loads_strict`): the
 * value with objects as null-prototype records. Throws {@link MalformedPayloadError} for
 * anything refused, and nothing else.
 */
export function loadsStrict(data: Uint8Array | string, options: StrictJsonOptions): JsonValue {
  return toPlain(loadsStrictOrdered(data, options));
}

/** An ordered value with its Maps turned into null-prototype records. */
export function toPlain(value: OrderedJson): JsonValue {
  if (value instanceof Map) {
    const out: JsonObject = Object.create(null) as JsonObject;
    for (const [key, item] of value) out[key] = toPlain(item);
    return out;
  }
  if (Array.isArray(value)) return value.map(toPlain);
  return value;
}

/**
 * One byte string per value, so that signer and verifier hash the same transcript: Python's
 * `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
 * allow_nan=False).encode()`, byte for byte (`bigint` as an int, `number` as a Python float:
 * `1.0`, `1e-05`). Throws `RangeError` for NaN, an infinity or a lone surrogate (Python's
 * ValueError) and `TypeError` for what JSON cannot hold.
 */
export function dumpsCanonical(value: JsonValue | DumpableJson): Uint8Array {
  const text = dumpsPython(value, { ensureAscii: false, sortKeys: true });
  return encodeUtf8Strict(text);
}

// ---------------------------------------------------------------------------------------------
// the stages of loadsStrict

/** `data` as text, refusing oversize input, non-UTF-8 bytes, a BOM and NUL characters. */
function asText(data: Uint8Array | string, what: string, maxBytes: number): string {
  let raw: Uint8Array;
  if (typeof data === "string") {
    // a UTF-16 unit is at most one code point, which is at least one UTF-8 byte
    if (data.length > maxBytes) {
      throw new MalformedPayloadError(`${what} of ${data.length} characters exceeds the cap of ${maxBytes} bytes`);
    }
    if (!isWellFormed(data)) throw new MalformedPayloadError(`${what} is not valid Unicode: a lone surrogate`);
    raw = new TextEncoder().encode(data);
  } else if (data instanceof Uint8Array) {
    raw = data;
  } else {
    throw new MalformedPayloadError(`${what} must be bytes or str, got ${typeof data}`);
  }
  if (raw.length > maxBytes) {
    throw new MalformedPayloadError(`${what} of ${raw.length} bytes exceeds the cap of ${maxBytes} bytes`);
  }
  if (raw.length >= 3 && raw[0] === 0xef && raw[1] === 0xbb && raw[2] === 0xbf) {
    throw new MalformedPayloadError(`${what} starts with a byte-order mark; send plain UTF-8`);
  }
  if (raw.includes(0)) throw new MalformedPayloadError(`${what} holds NUL bytes: UTF-16 or UTF-32, not UTF-8?`);
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(raw);
  } catch {
    throw new MalformedPayloadError(`${what} is not valid UTF-8`);
  }
}

/**
 * Refuse nesting deeper than `maxDepth` without recursing and before parsing, as Python does:
 * strings are skipped (brackets inside them do not nest; a string runs from its quote to the
 * next unescaped quote, or to the end), then the running count of opening minus closing
 * brackets is the parser's depth at each point. Linear, whatever the text.
 */
function checkDepth(text: string, what: string, maxDepth: number): void {
  let depth = 0;
  let deepest = 0;
  let seen = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      i++;
      while (i < text.length) {
        const s = text.charCodeAt(i);
        if (s === 0x22) break;
        // an escape takes the next character with it; a backslash at the very end does not
        // belong to the string (Python's pattern needs a character after it), and is no bracket
        if (s === 0x5c && i + 1 < text.length) i++;
        i++;
      }
      continue;
    }
    if (c === 0x5b || c === 0x7b) {
      depth++;
      if (!seen || depth > deepest) deepest = depth;
      seen = true;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
      if (!seen) deepest = depth;
      seen = true;
    }
  }
  if (seen && deepest > maxDepth) {
    throw new MalformedPayloadError(`${what} nests ${deepest} levels deep; at most ${maxDepth} are accepted`);
  }
}

/** Whether a parsed value is a JSON object (a null-prototype record, not an array). */
export function isJsonObject(value: JsonValue | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
