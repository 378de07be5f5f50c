/**
 * A JSON parser that reads text exactly as Python's `json.loads` does (its C scanner), in two
 * modes: `strict`, the refusals `cola_fed/wire/strict_json.py` adds through its hooks, and
 * `python`, the lenient defaults of `json.loads` (duplicate keys: the last value wins in the
 * first key's place; `NaN`/`Infinity` accepted; integers of any length), which
 * `cola_fed/wire/identity.py` uses for the known-servers file.
 *
 * It returns objects as `Map`s, in the order their keys first appear (as a Python dict keeps
 * them; a plain JavaScript object would move integer-like keys first). JSON integers (no `.`,
 * no exponent) become `bigint`, other numbers `number`: Python's `int` versus `float`.
 */

/** A parsed JSON value whose objects keep their key order (Python dict order). */
export type OrderedJson = null | boolean | string | bigint | number | OrderedJson[] | OrderedJsonObject;

/** A parsed JSON object: a Map in the order its keys first appeared. */
export type OrderedJsonObject = Map<string, OrderedJson>;

/** Thrown by {@link parseJson}; the callers turn it into their own error family. */
export class JsonSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "JsonSyntaxError";
  }
}

/** Most digits of a JSON integer in strict mode: every signed 64-bit value fits. */
export const MAX_INT_DIGITS = 19;

/** Deepest nesting the lenient mode follows (Python's C scanner stops near its recursion
 * limit of 1000 with a RecursionError; here it is a syntax error). */
const PYTHON_MAX_NESTING = 1000;

/** How {@link parseJson} reads: `strict` (strict_json.loads_strict's hooks) or `python`
 * (plain `json.loads`). */
export type JsonMode = "strict" | "python";

/**
 * Parse `text` (already decoded, UTF-16) as Python's `json.loads` would, with strict mode's
 * extra refusals: duplicate keys, `NaN`/`Infinity`, floats overflowing to an infinity, integers
 * of more than {@link MAX_INT_DIGITS} digits, and strings holding an unpaired surrogate escape.
 * Throws {@link JsonSyntaxError} for anything refused. Depth is the caller's business in strict
 * mode (checked before, without recursion); lenient mode stops at 1000 levels.
 */
export function parseJson(text: string, mode: JsonMode): OrderedJson {
  const parser = new Parser(text, mode);
  parser.skipWhitespace();
  const value = parser.value(0);
  parser.skipWhitespace();
  if (parser.at !== text.length) parser.fail("extra data");
  return value;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

class Parser {
  at = 0;

  constructor(private readonly text: string, private readonly mode: JsonMode) {}

  fail(why: string): never {
    throw new JsonSyntaxError(`${why} at character ${this.at}`);
  }

  /** JSON whitespace as Python's scanner knows it: space, tab, newline, carriage return. */
  skipWhitespace(): void {
    const text = this.text;
    while (this.at < text.length) {
      const c = text.charCodeAt(this.at);
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return;
      this.at++;
    }
  }

  value(depth: number): OrderedJson {
    const text = this.text;
    if (this.at >= text.length) this.fail("expecting a value");
    const c = text.charCodeAt(this.at);
    if (c === QUOTE) return this.string();
    if (c === 0x7b /* { */) return this.object(depth + 1);
    if (c === 0x5b /* [ */) return this.array(depth + 1);
    if (text.startsWith("null", this.at)) return this.literal(4, null);
    if (text.startsWith("true", this.at)) return this.literal(4, true);
    if (text.startsWith("false", this.at)) return this.literal(5, false);
    if (text.startsWith("NaN", this.at)) return this.constant("NaN", Number.NaN);
    if (text.startsWith("Infinity", this.at)) return this.constant("Infinity", Infinity);
    if (text.startsWith("-Infinity", this.at)) return this.constant("-Infinity", -Infinity);
    return this.number();
  }

  private literal<T>(length: number, value: T): T {
    this.at += length;
    return value;
  }

  private constant(name: string, value: number): number {
    if (this.mode === "strict") this.fail(`${name} is not a JSON number`);
    this.at += name.length;
    return value;
  }

  private nest(depth: number): void {
    if (this.mode === "python" && depth > PYTHON_MAX_NESTING) {
      this.fail(`nesting deeper than ${PYTHON_MAX_NESTING} levels`);
    }
  }

  private object(depth: number): OrderedJsonObject {
    this.nest(depth);
    const text = this.text;
    const result: OrderedJsonObject = new Map();
    this.at++; // {
    this.skipWhitespace();
    if (text.charCodeAt(this.at) === 0x7d /* } */) {
      this.at++;
      return result;
    }
    for (;;) {
      if (text.charCodeAt(this.at) !== QUOTE) this.fail("expecting a property name in double quotes");
      const key = this.string();
      this.skipWhitespace();
      if (text.charCodeAt(this.at) !== 0x3a /* : */) this.fail("expecting ':' delimiter");
      this.at++;
      this.skipWhitespace();
      const item = this.value(depth);
      if (this.mode === "strict" && result.has(key)) {
        // (Python refuses a duplicate once the object is complete; every refusal is one class)
        this.fail(`duplicate key ${JSON.stringify(key.slice(0, 80))}`);
      }
      result.set(key, item); // a repeated key keeps its first place, as a Python dict does
      this.skipWhitespace();
      const next = text.charCodeAt(this.at);
      this.at++;
      if (next === 0x7d /* } */) return result;
      if (next !== 0x2c /* , */) {
        this.at--;
        this.fail("expecting ',' delimiter");
      }
      this.skipWhitespace();
    }
  }

  private array(depth: number): OrderedJson[] {
    this.nest(depth);
    const text = this.text;
    const result: OrderedJson[] = [];
    this.at++; // [
    this.skipWhitespace();
    if (text.charCodeAt(this.at) === 0x5d /* ] */) {
      this.at++;
      return result;
    }
    for (;;) {
      result.push(this.value(depth));
      this.skipWhitespace();
      const next = text.charCodeAt(this.at);
      this.at++;
      if (next === 0x5d /* ] */) return result;
      if (next !== 0x2c /* , */) {
        this.at--;
        this.fail("expecting ',' delimiter");
      }
      this.skipWhitespace();
    }
  }

  /** A number as Python's `_match_number_unicode` reads it: `-?(0|[1-9][0-9]*)(\.[0-9]+)?
   * ([eE][-+]?[0-9]+)?`, a fraction or exponent without digits left unread. */
  private number(): bigint | number {
    const text = this.text;
    const start = this.at;
    let i = start;
    if (text.charCodeAt(i) === 0x2d /* - */) i++;
    const first = text.charCodeAt(i);
    if (first === 0x30 /* 0 */) {
      i++;
    } else if (first >= 0x31 && first <= 0x39) {
      i++;
      while (isDigit(text.charCodeAt(i))) i++;
    } else {
      this.fail("expecting a value");
    }
    let isFloat = false;
    if (text.charCodeAt(i) === 0x2e /* . */ && isDigit(text.charCodeAt(i + 1))) {
      i += 2;
      while (isDigit(text.charCodeAt(i))) i++;
      isFloat = true;
    }
    const e = text.charCodeAt(i);
    if (e === 0x65 || e === 0x45) {
      let j = i + 1;
      const sign = text.charCodeAt(j);
      if (sign === 0x2b || sign === 0x2d) j++;
      if (isDigit(text.charCodeAt(j))) {
        while (isDigit(text.charCodeAt(j))) j++;
        i = j;
        isFloat = true;
      }
    }
    const literal = text.slice(start, i);
    this.at = i;
    if (isFloat) {
      const value = Number(literal); // correctly rounded, as Python's float()
      if (this.mode === "strict" && !Number.isFinite(value)) {
        this.at = start;
        this.fail(literal.length > 40 ? `number ${literal.slice(0, 40)}... overflows a float`
          : `number ${literal} overflows a float`);
      }
      return value;
    }
    const digits = literal.length - (literal.startsWith("-") ? 1 : 0);
    if (this.mode === "strict" && digits > MAX_INT_DIGITS) {
      this.at = start;
      this.fail(`an integer of ${digits} digits; at most ${MAX_INT_DIGITS} are accepted`);
    }
    return BigInt(literal);
  }

  /** A string from its opening quote, as Python's `scanstring` reads it: control characters
   * (below U+0020) refused, escapes `\" \\ \/ \b \f \n \r \t \uXXXX` only. */
  private string(): string {
    const text = this.text;
    const start = this.at;
    this.at++; // "
    let out = "";
    let chunk = this.at;
    for (;;) {
      if (this.at >= text.length) {
        this.at = start;
        this.fail("unterminated string");
      }
      const c = text.charCodeAt(this.at);
      if (c === QUOTE) {
        out += text.slice(chunk, this.at);
        this.at++;
        break;
      }
      if (c < 0x20) this.fail("invalid control character");
      if (c !== BACKSLASH) {
        this.at++;
        continue;
      }
      out += text.slice(chunk, this.at);
      const escape = text.charCodeAt(this.at + 1);
      if (escape === 0x75 /* u */) {
        const hex = text.slice(this.at + 2, this.at + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail("invalid \\uXXXX escape");
        out += String.fromCharCode(parseInt(hex, 16));
        this.at += 6;
      } else {
        const simple = SIMPLE_ESCAPES.get(escape);
        if (simple === undefined) this.fail("invalid \\escape");
        out += simple;
        this.at += 2;
      }
      chunk = this.at;
    }
    // An escaped surrogate that pairs with no other decodes, in Python, to a string that no
    // UTF-8 can carry (it fails later, far from the parser): strict JSON refuses it here.
    if (this.mode === "strict" && !isWellFormed(out)) {
      this.at = start;
      this.fail("a string holds an unpaired surrogate escape");
    }
    return out;
  }
}

const SIMPLE_ESCAPES = new Map<number, string>([
  [0x22, "\""], [0x5c, "\\"], [0x2f, "/"], [0x62, "\b"], [0x66, "\f"], [0x6e, "\n"],
  [0x72, "\r"], [0x74, "\t"],
]);

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** Whether a string holds no unpaired surrogate (is valid Unicode, encodable as UTF-8). */
export function isWellFormed(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c >= 0xdc00) return false; // a low surrogate with no high one before it
    const next = text.charCodeAt(i + 1);
    if (!(next >= 0xdc00 && next <= 0xdfff)) return false;
    i++;
  }
  return true;
}
