/**
 * A port of tomli 2.5.0's `loads` (the TOML parser that Flower 1.42's `parse_config_args` uses for
 * `--node-config`), so that the JavaScript node accepts and refuses exactly what
 * `flower-supernode` does. Structure, rule order and checks follow `tomli/_parser.py` and
 * `tomli/_re.py` function by function; tomli implements TOML 1.1 (`\e`, `\xHH`, newlines and
 * trailing commas in inline tables, optional seconds), and so does this port.
 *
 * Integers are `bigint` (Python's unbounded `int`), floats `number`. Dates and times are parsed
 * and checked as tomli checks them, then kept as `TomlDateTime` values: a node config refuses them
 * (Flower's `flatten_dict` does), but a date that tomli refuses must be refused here as a TOML
 * error too.
 */

/** A TOML date, date-time or local time, kept as its source text (node configs refuse them). */
export class TomlDateTime {
  constructor(readonly text: string) {}
}

export type TomlValue = bigint | number | boolean | string | TomlDateTime | TomlValue[] | TomlTable;
/** A TOML table: a prototype-less object, so that keys such as `__proto__` are plain keys. */
export interface TomlTable {
  [key: string]: TomlValue;
}

/** The document is not valid TOML (tomli's `TOMLDecodeError`); says where. */
export class TomlDecodeError extends Error {
  constructor(message: string, doc: string, pos: number) {
    const lineno = countNewlines(doc, pos) + 1;
    const colno = lineno === 1 ? pos + 1 : pos - doc.lastIndexOf("\n", pos - 1);
    const where = pos >= doc.length ? "end of document" : `line ${lineno}, column ${colno}`;
    super(`${message} (at ${where})`);
    this.name = "TomlDecodeError";
  }
}

function countNewlines(doc: string, end: number): number {
  let count = 0;
  for (let i = 0; i < end && i < doc.length; i++) if (doc[i] === "\n") count++;
  return count;
}

const MAX_INLINE_NESTING = 400;
// tomli caps key parts at Python's recursion limit (1000 by default).
const MAX_KEY_PARTS = 1000;

const ASCII_CTRL = new Set<string>([...Array.from({ length: 32 }, (_, i) => String.fromCharCode(i)), "\x7f"]);
const without = (set: Set<string>, chars: string): Set<string> => new Set([...set].filter((c) => !chars.includes(c)));
const ILLEGAL_BASIC_STR_CHARS = without(ASCII_CTRL, "\t");
const ILLEGAL_MULTILINE_BASIC_STR_CHARS = without(ASCII_CTRL, "\t\n");
const ILLEGAL_LITERAL_STR_CHARS = ILLEGAL_BASIC_STR_CHARS;
const ILLEGAL_MULTILINE_LITERAL_STR_CHARS = ILLEGAL_MULTILINE_BASIC_STR_CHARS;
const ILLEGAL_COMMENT_CHARS = ILLEGAL_BASIC_STR_CHARS;
const TOML_WS = new Set(" \t");
const TOML_WS_AND_NEWLINE = new Set(" \t\n");
const BARE_KEY_CHARS = new Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_");
const KEY_INITIAL_CHARS = new Set([...BARE_KEY_CHARS, '"', "'"]);
const HEXDIGIT_CHARS = new Set("abcdefABCDEF0123456789");
const BASIC_STR_ESCAPE_REPLACEMENTS: ReadonlyMap<string, string> = new Map([
  ["\\b", "\u0008"],
  ["\\t", "\u0009"],
  ["\\n", "\u000a"],
  ["\\f", "\u000c"],
  ["\\r", "\u000d"],
  ["\\e", "\u001b"],
  ['\\"', "\u0022"],
  ["\\\\", "\u005c"],
]);

const TIME_RE = String.raw`([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9])(?:\.([0-9]{1,6})[0-9]*)?)?`;
const RE_NUMBER = new RegExp(
  String.raw`0(?:x[0-9A-Fa-f](?:_?[0-9A-Fa-f])*|b[01](?:_?[01])*|o[0-7](?:_?[0-7])*)` +
    String.raw`|[+-]?(?:0|[1-9](?:_?[0-9])*)(?<floatpart>(?:\.[0-9](?:_?[0-9])*)?(?:[eE][+-]?[0-9](?:_?[0-9])*)?)`,
  "y",
);
const RE_LOCALTIME = new RegExp(TIME_RE, "y");
const RE_DATETIME = new RegExp(
  String.raw`([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(?:[Tt ]` +
    TIME_RE +
    String.raw`(?:([Zz])|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))?)?`,
  "y",
);

type Key = string[];

function newTable(): TomlTable {
  return Object.create(null) as TomlTable;
}

function isTable(value: TomlValue | undefined): value is TomlTable {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof TomlDateTime);
}

/** Parse a TOML document (tomli's `loads`); throws `TomlDecodeError` on invalid TOML. */
export function loadsToml(text: string): TomlTable {
  const src = text.replaceAll("\r\n", "\n");
  let pos = 0;
  const out = new Output();
  let header: Key = [];
  for (;;) {
    pos = skipChars(src, pos, TOML_WS);
    const char = src[pos];
    if (char === undefined) break;
    if (char === "\n") {
      pos += 1;
      continue;
    }
    if (KEY_INITIAL_CHARS.has(char)) {
      pos = keyValueRule(src, pos, out, header);
      pos = skipChars(src, pos, TOML_WS);
    } else if (char === "[") {
      const secondChar = src[pos + 1];
      out.flags.finalizePending();
      if (secondChar === "[") [pos, header] = createListRule(src, pos, out);
      else [pos, header] = createDictRule(src, pos, out);
      pos = skipChars(src, pos, TOML_WS);
    } else if (char !== "#") {
      throw new TomlDecodeError("Invalid statement", src, pos);
    }
    pos = skipComment(src, pos);
    const after = src[pos];
    if (after === undefined) break;
    if (after !== "\n") throw new TomlDecodeError("Expected newline or end of document after a statement", src, pos);
    pos += 1;
  }
  return out.data.dict;
}

const FROZEN = 0;
const EXPLICIT_NEST = 1;

interface FlagNode {
  flags: Set<number>;
  recursiveFlags: Set<number>;
  nested: Map<string, FlagNode>;
}

const flagNode = (): FlagNode => ({ flags: new Set(), recursiveFlags: new Set(), nested: new Map() });

/** tomli's `Flags`: which keys are frozen (inline values) or explicitly declared tables. */
class Flags {
  private readonly root = new Map<string, FlagNode>();
  private pending: Array<[Key, number]> = [];

  addPending(key: Key, flag: number): void {
    this.pending.push([key, flag]);
  }

  finalizePending(): void {
    for (const [key, flag] of this.pending) this.set(key, flag, false);
    this.pending = [];
  }

  unsetAll(key: Key): void {
    let cont = this.root;
    for (const k of key.slice(0, -1)) {
      const next = cont.get(k);
      if (next === undefined) return;
      cont = next.nested;
    }
    cont.delete(key[key.length - 1]!);
  }

  set(key: Key, flag: number, recursive: boolean): void {
    let cont = this.root;
    for (const k of key.slice(0, -1)) {
      if (!cont.has(k)) cont.set(k, flagNode());
      cont = cont.get(k)!.nested;
    }
    const stem = key[key.length - 1]!;
    if (!cont.has(stem)) cont.set(stem, flagNode());
    const node = cont.get(stem)!;
    (recursive ? node.recursiveFlags : node.flags).add(flag);
  }

  is(key: Key, flag: number): boolean {
    if (key.length === 0) return false;
    let cont = this.root;
    for (const k of key.slice(0, -1)) {
      const inner = cont.get(k);
      if (inner === undefined) return false;
      if (inner.recursiveFlags.has(flag)) return true;
      cont = inner.nested;
    }
    const inner = cont.get(key[key.length - 1]!);
    return inner !== undefined && (inner.flags.has(flag) || inner.recursiveFlags.has(flag));
  }
}

class NoNest extends Error {}

/** tomli's `NestedDict`. */
class NestedDict {
  readonly dict: TomlTable = newTable();

  getOrCreateNest(key: Key, accessLists = true): TomlTable {
    let cont: TomlValue = this.dict;
    for (const k of key) {
      const table = cont as TomlTable;
      if (!Object.hasOwn(table, k)) table[k] = newTable();
      cont = table[k]!;
      if (accessLists && Array.isArray(cont)) cont = cont[cont.length - 1]!;
      if (!isTable(cont)) throw new NoNest("There is no nest behind this key");
    }
    return cont as TomlTable;
  }

  appendNestToList(key: Key): void {
    const cont = this.getOrCreateNest(key.slice(0, -1));
    const last = key[key.length - 1]!;
    if (Object.hasOwn(cont, last)) {
      const list = cont[last]!;
      if (!Array.isArray(list)) throw new NoNest("An object other than list found behind this key");
      list.push(newTable());
    } else {
      cont[last] = [newTable()];
    }
  }
}

class Output {
  readonly data = new NestedDict();
  readonly flags = new Flags();
}

function skipChars(src: string, pos: number, chars: Set<string>): number {
  while (pos < src.length && chars.has(src[pos]!)) pos += 1;
  return pos;
}

function skipUntil(src: string, pos: number, expect: string, errorOn: Set<string>, errorOnEof: boolean): number {
  let newPos = src.indexOf(expect, pos);
  if (newPos < 0) {
    newPos = src.length;
    if (errorOnEof) throw new TomlDecodeError(`Expected ${pyRepr(expect)}`, src, newPos);
  }
  for (let i = pos; i < newPos; i++) {
    if (errorOn.has(src[i]!)) throw new TomlDecodeError(`Found invalid character ${pyRepr(src[i]!)}`, src, i);
  }
  return newPos;
}

function skipComment(src: string, pos: number): number {
  if (src[pos] === "#") return skipUntil(src, pos + 1, "\n", ILLEGAL_COMMENT_CHARS, false);
  return pos;
}

function skipCommentsAndArrayWs(src: string, pos: number): number {
  for (;;) {
    const before = pos;
    pos = skipChars(src, pos, TOML_WS_AND_NEWLINE);
    pos = skipComment(src, pos);
    if (pos === before) return pos;
  }
}

function createDictRule(src: string, pos: number, out: Output): [number, Key] {
  pos += 1;
  pos = skipChars(src, pos, TOML_WS);
  let key: Key;
  [pos, key] = parseKey(src, pos);
  if (out.flags.is(key, EXPLICIT_NEST) || out.flags.is(key, FROZEN)) {
    throw new TomlDecodeError(`Cannot declare ${keyRepr(key)} twice`, src, pos);
  }
  out.flags.set(key, EXPLICIT_NEST, false);
  try {
    out.data.getOrCreateNest(key);
  } catch (err) {
    if (err instanceof NoNest) throw new TomlDecodeError("Cannot overwrite a value", src, pos);
    throw err;
  }
  if (!src.startsWith("]", pos)) throw new TomlDecodeError("Expected ']' at the end of a table declaration", src, pos);
  return [pos + 1, key];
}

function createListRule(src: string, pos: number, out: Output): [number, Key] {
  pos += 2;
  pos = skipChars(src, pos, TOML_WS);
  let key: Key;
  [pos, key] = parseKey(src, pos);
  if (out.flags.is(key, FROZEN)) throw new TomlDecodeError(`Cannot mutate immutable namespace ${keyRepr(key)}`, src, pos);
  out.flags.unsetAll(key);
  out.flags.set(key, EXPLICIT_NEST, false);
  try {
    out.data.appendNestToList(key);
  } catch (err) {
    if (err instanceof NoNest) throw new TomlDecodeError("Cannot overwrite a value", src, pos);
    throw err;
  }
  if (!src.startsWith("]]", pos)) throw new TomlDecodeError("Expected ']]' at the end of an array declaration", src, pos);
  return [pos + 2, key];
}

function keyValueRule(src: string, pos: number, out: Output, header: Key): number {
  let key: Key;
  let value: TomlValue;
  [pos, key, value] = parseKeyValuePair(src, pos, 0);
  const keyParent = key.slice(0, -1);
  const keyStem = key[key.length - 1]!;
  const absKeyParent = [...header, ...keyParent];
  for (let i = 1; i < key.length; i++) {
    const contKey = [...header, ...key.slice(0, i)];
    if (out.flags.is(contKey, EXPLICIT_NEST)) {
      throw new TomlDecodeError(`Cannot redefine namespace ${keyRepr(contKey)}`, src, pos);
    }
    out.flags.addPending(contKey, EXPLICIT_NEST);
  }
  if (out.flags.is(absKeyParent, FROZEN)) {
    throw new TomlDecodeError(`Cannot mutate immutable namespace ${keyRepr(absKeyParent)}`, src, pos);
  }
  let nest: TomlTable;
  try {
    nest = out.data.getOrCreateNest(absKeyParent);
  } catch (err) {
    if (err instanceof NoNest) throw new TomlDecodeError("Cannot overwrite a value", src, pos);
    throw err;
  }
  if (Object.hasOwn(nest, keyStem)) throw new TomlDecodeError("Cannot overwrite a value", src, pos);
  if (isTable(value) || Array.isArray(value)) out.flags.set([...header, ...key], FROZEN, true);
  nest[keyStem] = value;
  return pos;
}

function parseKeyValuePair(src: string, pos: number, nestLvl: number): [number, Key, TomlValue] {
  let key: Key;
  [pos, key] = parseKey(src, pos);
  if (src[pos] !== "=") throw new TomlDecodeError("Expected '=' after a key in a key/value pair", src, pos);
  pos += 1;
  pos = skipChars(src, pos, TOML_WS);
  let value: TomlValue;
  [pos, value] = parseValue(src, pos, nestLvl);
  return [pos, key, value];
}

function parseKey(src: string, pos: number): [number, Key] {
  let part: string;
  [pos, part] = parseKeyPart(src, pos);
  const key: Key = [part];
  pos = skipChars(src, pos, TOML_WS);
  for (;;) {
    if (src[pos] !== ".") return [pos, key];
    pos += 1;
    pos = skipChars(src, pos, TOML_WS);
    [pos, part] = parseKeyPart(src, pos);
    key.push(part);
    if (key.length > MAX_KEY_PARTS) throw new TomlDecodeError(`TOML key has more than the allowed ${MAX_KEY_PARTS} parts`, src, pos);
    pos = skipChars(src, pos, TOML_WS);
  }
}

function parseKeyPart(src: string, pos: number): [number, string] {
  const char = src[pos];
  if (char !== undefined && BARE_KEY_CHARS.has(char)) {
    const start = pos;
    pos = skipChars(src, pos, BARE_KEY_CHARS);
    return [pos, src.slice(start, pos)];
  }
  if (char === "'") return parseLiteralStr(src, pos);
  if (char === '"') return parseOneLineBasicStr(src, pos);
  throw new TomlDecodeError("Invalid initial character for a key part", src, pos);
}

function parseOneLineBasicStr(src: string, pos: number): [number, string] {
  return parseBasicStr(src, pos + 1, false);
}

function parseArray(src: string, pos: number, nestLvl: number): [number, TomlValue[]] {
  pos += 1;
  const array: TomlValue[] = [];
  pos = skipCommentsAndArrayWs(src, pos);
  if (src.startsWith("]", pos)) return [pos + 1, array];
  for (;;) {
    let value: TomlValue;
    [pos, value] = parseValue(src, pos, nestLvl);
    array.push(value);
    pos = skipCommentsAndArrayWs(src, pos);
    const c = src.slice(pos, pos + 1);
    if (c === "]") return [pos + 1, array];
    if (c !== ",") throw new TomlDecodeError("Unclosed array", src, pos);
    pos += 1;
    pos = skipCommentsAndArrayWs(src, pos);
    if (src.startsWith("]", pos)) return [pos + 1, array];
  }
}

function parseInlineTable(src: string, pos: number, nestLvl: number): [number, TomlTable] {
  pos += 1;
  const nested = new NestedDict();
  const flags = new Flags();
  pos = skipCommentsAndArrayWs(src, pos);
  if (src.startsWith("}", pos)) return [pos + 1, nested.dict];
  for (;;) {
    let key: Key;
    let value: TomlValue;
    [pos, key, value] = parseKeyValuePair(src, pos, nestLvl);
    const keyParent = key.slice(0, -1);
    const keyStem = key[key.length - 1]!;
    if (flags.is(key, FROZEN)) throw new TomlDecodeError(`Cannot mutate immutable namespace ${keyRepr(key)}`, src, pos);
    let nest: TomlTable;
    try {
      nest = nested.getOrCreateNest(keyParent, false);
    } catch (err) {
      if (err instanceof NoNest) throw new TomlDecodeError("Cannot overwrite a value", src, pos);
      throw err;
    }
    if (Object.hasOwn(nest, keyStem)) throw new TomlDecodeError(`Duplicate inline table key ${pyRepr(keyStem)}`, src, pos);
    nest[keyStem] = value;
    pos = skipCommentsAndArrayWs(src, pos);
    const c = src.slice(pos, pos + 1);
    if (c === "}") return [pos + 1, nested.dict];
    if (c !== ",") throw new TomlDecodeError("Unclosed inline table", src, pos);
    pos += 1;
    pos = skipCommentsAndArrayWs(src, pos);
    if (src.startsWith("}", pos)) return [pos + 1, nested.dict];
    if (isTable(value) || Array.isArray(value)) flags.set(key, FROZEN, true);
  }
}

function parseBasicStrEscape(src: string, pos: number, multiline: boolean): [number, string] {
  const escapeId = src.slice(pos, pos + 2);
  pos += 2;
  if (multiline && (escapeId === "\\ " || escapeId === "\\\t" || escapeId === "\\\n")) {
    if (escapeId !== "\\\n") {
      pos = skipChars(src, pos, TOML_WS);
      const char = src[pos];
      if (char === undefined) return [pos, ""];
      if (char !== "\n") throw new TomlDecodeError("Unescaped '\\' in a string", src, pos);
      pos += 1;
    }
    pos = skipChars(src, pos, TOML_WS_AND_NEWLINE);
    return [pos, ""];
  }
  if (escapeId === "\\x") return parseHexChar(src, pos, 2);
  if (escapeId === "\\u") return parseHexChar(src, pos, 4);
  if (escapeId === "\\U") return parseHexChar(src, pos, 8);
  const replacement = BASIC_STR_ESCAPE_REPLACEMENTS.get(escapeId);
  if (replacement === undefined) throw new TomlDecodeError("Unescaped '\\' in a string", src, pos);
  return [pos, replacement];
}

function parseHexChar(src: string, pos: number, hexLen: number): [number, string] {
  const hex = src.slice(pos, pos + hexLen);
  if (hex.length !== hexLen || ![...hex].every((c) => HEXDIGIT_CHARS.has(c))) {
    throw new TomlDecodeError("Invalid hex value", src, pos);
  }
  pos += hexLen;
  const code = Number.parseInt(hex, 16);
  if (!isUnicodeScalarValue(code)) throw new TomlDecodeError("Escaped character is not a Unicode scalar value", src, pos);
  return [pos, String.fromCodePoint(code)];
}

function parseLiteralStr(src: string, pos: number): [number, string] {
  pos += 1;
  const start = pos;
  pos = skipUntil(src, pos, "'", ILLEGAL_LITERAL_STR_CHARS, true);
  return [pos + 1, src.slice(start, pos)];
}

function parseMultilineStr(src: string, pos: number, literal: boolean): [number, string] {
  pos += 3;
  if (src.startsWith("\n", pos)) pos += 1;
  let delim: string;
  let result: string;
  if (literal) {
    delim = "'";
    const end = skipUntil(src, pos, "'''", ILLEGAL_MULTILINE_LITERAL_STR_CHARS, true);
    result = src.slice(pos, end);
    pos = end + 3;
  } else {
    delim = '"';
    [pos, result] = parseBasicStr(src, pos, true);
  }
  if (!src.startsWith(delim, pos)) return [pos, result];
  pos += 1;
  if (!src.startsWith(delim, pos)) return [pos, result + delim];
  pos += 1;
  return [pos, result + delim + delim];
}

function parseBasicStr(src: string, pos: number, multiline: boolean): [number, string] {
  const errorOn = multiline ? ILLEGAL_MULTILINE_BASIC_STR_CHARS : ILLEGAL_BASIC_STR_CHARS;
  let result = "";
  let start = pos;
  for (;;) {
    const char = src[pos];
    if (char === undefined) throw new TomlDecodeError("Unterminated string", src, pos);
    if (char === '"') {
      if (!multiline) return [pos + 1, result + src.slice(start, pos)];
      if (src.startsWith('"""', pos)) return [pos + 3, result + src.slice(start, pos)];
      pos += 1;
      continue;
    }
    if (char === "\\") {
      result += src.slice(start, pos);
      let escaped: string;
      [pos, escaped] = parseBasicStrEscape(src, pos, multiline);
      result += escaped;
      start = pos;
      continue;
    }
    if (errorOn.has(char)) throw new TomlDecodeError(`Illegal character ${pyRepr(char)}`, src, pos);
    pos += 1;
  }
}

function parseValue(src: string, pos: number, nestLvl: number): [number, TomlValue] {
  if (nestLvl > MAX_INLINE_NESTING) {
    throw new TomlDecodeError(`TOML inline arrays/tables are nested more than the allowed ${MAX_INLINE_NESTING} levels`, src, pos);
  }
  const char = src[pos];
  if (char === '"') {
    if (src.startsWith('"""', pos)) return parseMultilineStr(src, pos, false);
    return parseOneLineBasicStr(src, pos);
  }
  if (char === "'") {
    if (src.startsWith("'''", pos)) return parseMultilineStr(src, pos, true);
    return parseLiteralStr(src, pos);
  }
  if (char === "t" && src.startsWith("true", pos)) return [pos + 4, true];
  if (char === "f" && src.startsWith("false", pos)) return [pos + 5, false];
  if (char === "[") return parseArray(src, pos, nestLvl + 1);
  if (char === "{") return parseInlineTable(src, pos, nestLvl + 1);

  RE_DATETIME.lastIndex = pos;
  const datetime = RE_DATETIME.exec(src);
  if (datetime) {
    if (!validDate(datetime)) throw new TomlDecodeError("Invalid date or datetime", src, pos);
    return [pos + datetime[0].length, new TomlDateTime(datetime[0])];
  }
  RE_LOCALTIME.lastIndex = pos;
  const localtime = RE_LOCALTIME.exec(src);
  if (localtime) return [pos + localtime[0].length, new TomlDateTime(localtime[0])];

  RE_NUMBER.lastIndex = pos;
  const number = RE_NUMBER.exec(src);
  if (number) return [pos + number[0].length, matchToNumber(number)];

  const firstThree = src.slice(pos, pos + 3);
  if (firstThree === "inf" || firstThree === "nan") return [pos + 3, parseFloatText(firstThree)];
  const firstFour = src.slice(pos, pos + 4);
  if (["-inf", "+inf", "-nan", "+nan"].includes(firstFour)) return [pos + 4, parseFloatText(firstFour)];
  throw new TomlDecodeError("Invalid value", src, pos);
}

/** Python's `datetime.date(year, month, day)` check (the regex already bounds month and day). */
function validDate(match: RegExpExecArray): boolean {
  const year = Number(match[1]);
  const month = Number(match[2]);
  const day = Number(match[3]);
  if (year < 1) return false; // datetime.MINYEAR
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]!;
  return day <= days;
}

/** tomli's `match_to_number`: an int (`int(text, 0)`) unless the float part matched. */
function matchToNumber(match: RegExpExecArray): bigint | number {
  const text = match[0];
  if (match.groups?.["floatpart"]) return parseFloatText(text);
  const digits = text.replaceAll("_", "");
  // BigInt() reads 0x/0o/0b prefixes as Python's int(text, 0) does; signs only on decimals.
  if (digits.startsWith("-")) return -BigInt(digits.slice(1));
  if (digits.startsWith("+")) return BigInt(digits.slice(1));
  return BigInt(digits);
}

/** Python's `float(text)` for the texts the number regex and the inf/nan rules admit. */
function parseFloatText(text: string): number {
  const clean = text.replaceAll("_", "");
  const body = clean.replace(/^[+-]/, "");
  const negative = clean.startsWith("-");
  if (body === "inf") return negative ? -Infinity : Infinity;
  if (body === "nan") return Number.NaN;
  const value = Number(body); // decimal text: correctly rounded, as Python's float()
  return negative ? -value : value;
}

function isUnicodeScalarValue(code: number): boolean {
  return (code >= 0 && code <= 55295) || (code >= 57344 && code <= 1114111);
}

function keyRepr(key: Key): string {
  return `(${key.map(pyRepr).join(", ")}${key.length === 1 ? "," : ""})`;
}

function pyRepr(text: string): string {
  return `'${text.replace(/[\\']/g, (c) => `\\${c}`).replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`)}'`;
}
