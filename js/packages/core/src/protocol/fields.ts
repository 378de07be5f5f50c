/**
 * Typed reading of decoded JSON (port of `_take`, `_check_type`, `_in_range` and `_index` of
 * `cola_fed/federation/protocol.py`).
 *
 * The strict JSON parser gives Python's types: an integer literal is a `bigint` (Python `int`),
 * any other number a `number` (Python `float`). The rules are Python's exactly: an `int` field
 * refuses `1.0` and `true`, and any integer of magnitude 2^53 or more; a `float` field also takes
 * an integer (below 2^53) and refuses NaN and the infinities; a `str` is at most 4096 code
 * points (Python's `len`, not UTF-16 units).
 */

import { ProtocolError } from "../errors.js";
import { isJsonObject, type JsonObject, type JsonValue } from "../json/strict-json.js";
import { compareCodePoints, pythonFloatRepr } from "../json/python-json.js";

/** Every integer field of a protocol message is below this in magnitude (`_MAX_INT`). */
export const MAX_INT = 2 ** 53;
const MAX_INT_BIG = 2n ** 53n;

/** What a field must be: Python's `int`, `float`, `bool`, `str`, `list`, `dict`, or an int or
 * float that may also be `null` (`"int?"`, `"float?"`). */
export type FieldKind = "int" | "float" | "bool" | "str" | "list" | "dict" | "int?" | "float?";

/** A field table: wire name -> kind, in the order the fields are checked. */
export type FieldTable = Readonly<Record<string, FieldKind>>;

/** Python's `len(str)`: the number of code points. */
export function pyLen(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** The first `count` code points of `text` (Python's `text[:count]` and `{text:.count}`). */
export function pyPrefix(text: string, count: number): string {
  let out = "";
  let n = 0;
  for (const c of text) {
    if (n++ >= count) break;
    out += c;
  }
  return out;
}

/** Whether a parsed value is a Python `int` below 2^53 in magnitude (never a boolean). */
export function isSmallInt(value: JsonValue | undefined): value is bigint {
  return typeof value === "bigint" && value < MAX_INT_BIG && value > -MAX_INT_BIG;
}

/** Python's `repr()` of a parsed JSON value, for error messages (close enough to Python's to
 * read the same; messages are not part of the protocol). */
export function pyRepr(value: JsonValue | undefined): string {
  if (value === undefined || value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return pythonFloatRepr(value);
  if (typeof value === "string") {
    const quote = value.includes("'") && !value.includes('"') ? '"' : "'";
    const body = value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\r/g, "\\r").replace(/\t/g, "\\t");
    return quote + (quote === "'" ? body.replace(/'/g, "\\'") : body) + quote;
  }
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(", ")}]`;
  return `{${Object.keys(value).map((k) => `${pyRepr(k)}: ${pyRepr(value[k])}`).join(", ")}}`;
}

/** `{value!r:.n}`: a repr cut to `n` code points. */
export function reprCut(value: JsonValue | undefined, n: number): string {
  return pyPrefix(pyRepr(value), n);
}

/** Python's `sorted()` of strings (code-point order), as `repr` of a list. */
export function sortedRepr(keys: Iterable<string>): string {
  return pyRepr([...keys].sort(compareCodePoints));
}

/** Python's type name of a parsed value (`type(raw).__name__`). */
export function pyTypeName(value: JsonValue | undefined): string {
  if (value === null || value === undefined) return "NoneType";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "bigint") return "int";
  if (typeof value === "number") return "float";
  if (typeof value === "string") return "str";
  return Array.isArray(value) ? "list" : "dict";
}

/**
 * `_take`: `raw` must be an object with exactly the fields of `fields`, each of its kind.
 * Returns it typed as an object. Throws ProtocolError naming `what` and the field.
 */
export function take(raw: JsonValue | undefined, fields: FieldTable, what: string): JsonObject {
  if (!isJsonObject(raw)) {
    throw new ProtocolError(`${what}: expected a JSON object, got ${pyTypeName(raw)}`);
  }
  const expected = Object.keys(fields);
  const got = Object.keys(raw);
  if (got.length !== expected.length || !got.every((key) => Object.hasOwn(fields, key))) {
    throw new ProtocolError(`${what}: expected fields ${sortedRepr(expected)}, got ${sortedRepr(got)}`);
  }
  for (const key of expected) checkType(raw[key], fields[key]!, `${what}.${key}`);
  return raw;
}

/** `_check_type`: refuse a value that is not of `kind` (Python's isinstance rules). */
export function checkType(value: JsonValue | undefined, kind: FieldKind, where: string): void {
  let ok: boolean;
  switch (kind) {
    case "int":
      ok = isSmallInt(value);
      break;
    case "float":
      ok = isSmallInt(value) || (typeof value === "number" && Number.isFinite(value));
      break;
    case "int?":
      ok = value === null || isSmallInt(value);
      break;
    case "float?":
      // an int of any size (the parser caps it at 19 digits) or a finite float
      ok = value === null || typeof value === "bigint" || (typeof value === "number" && Number.isFinite(value));
      break;
    case "bool":
      ok = typeof value === "boolean";
      break;
    case "str":
      ok = typeof value === "string" && pyLen(value) <= 4096;
      break;
    case "list":
      ok = Array.isArray(value);
      break;
    case "dict":
      ok = isJsonObject(value);
      break;
  }
  if (!ok) throw new ProtocolError(`${where}: expected ${kind}, got ${reprCut(value, 80)}`);
}

/** `_in_range`: an integer in `[low, high]`, as a number (every caller's bounds are below 2^53). */
export function inRange(value: bigint | number, low: number, high: number, where: string): number {
  if (!(low <= value && value <= high)) {
    throw new ProtocolError(`${where}: expected an integer in [${low}, ${high}], got ${value}`);
  }
  return Number(value);
}

/** `_index`: an int naming one of `options` choices. */
export function index(value: JsonValue | undefined, options: number, where: string): number {
  checkType(value, "int", where);
  return inRange(value as bigint, 0, options - 1, where);
}

/** A checked `float` field's value as a number (an int given for a float becomes one, as
 * Python's `float(value)`). */
export function asFloat(value: JsonValue | undefined): number {
  return typeof value === "bigint" ? Number(value) : (value as number);
}

/** A checked `int` field's value as a number (below 2^53: exact). */
export function asInt(value: JsonValue | undefined): number {
  return Number(value as bigint);
}

/** Whether `text` is lower-case hex of exactly `length` characters. */
export function isLowerHex(text: string, length: number): boolean {
  return text.length === length && /^[0-9a-f]*$/.test(text);
}
