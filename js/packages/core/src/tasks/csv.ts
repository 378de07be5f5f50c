/**
 * A strict CSV reader (RFC 4180 quoting) for a node's own data, with the line numbering of
 * Python's `csv.reader(..., strict=True)` over `io.StringIO(text, newline="")`, so that a
 * JavaScript node names the same line as a Python node in its errors.
 *
 * - Records end at `\r\n`, `\n` or `\r` outside quotes; every one of them counts as a line.
 * - A quoted field may hold commas, line breaks and doubled quotes (`""`); after its closing
 *   quote only a delimiter or the end of the record may follow (else: malformed).
 * - A quote inside an unquoted field is an ordinary character (as Python's csv reads it).
 * - An empty line is an empty record (`[]`); callers skip it, as `csv.DictReader` does.
 * - A field longer than Python's default `csv.field_size_limit()` (131,072) is refused.
 */

import { ConfigError } from "../errors.js";

/** Python's default `csv.field_size_limit()`: a longer field is malformed there too. */
export const FIELD_SIZE_LIMIT = 131072;

/** One record and the (1-based) line it ends on, as `csv.reader.line_num` reports it. */
export interface CsvRecord {
  fields: string[];
  line: number;
}

/** Options of {@link readCsv}. */
export interface CsvOptions {
  /** Named in every error (e.g. `task.data-path`). */
  what: string;
  /** Most fields a record may have before reading is refused (bounds memory). */
  maxFields?: number;
  /**
   * Python's `strict` (default true). Non-strict, as `csv.DictReader` reads by default: text
   * after a closing quote joins the field, and a quote left open at the end closes there.
   */
  strict?: boolean;
}

/**
 * The records of `text`, lazily. Throws {@link ConfigError} on malformed quoting, a field
 * over {@link FIELD_SIZE_LIMIT} characters or a record over `maxFields` fields.
 */
export function* readCsv(text: string, options: CsvOptions): Generator<CsvRecord> {
  const { what } = options;
  const maxFields = options.maxFields ?? Number.POSITIVE_INFINITY;
  const strict = options.strict ?? true;
  const n = text.length;
  let pos = 0;
  let line = 0;
  while (pos < n) {
    line += 1;
    const fields: string[] = [];
    let field = "";
    let inRecord = false; // a field has begun (START_FIELD or later in Python's reader)
    let quoted = false; // inside a quoted field
    let closed = false; // just after the closing quote of a quoted field
    let pendingBreak = false; // a line break inside quotes: the next character starts a line
    const malformed = (why: string): ConfigError =>
      new ConfigError(`${what}: malformed CSV at line ${line} (${why})`);
    const add = (char: string): void => {
      if (field.length >= FIELD_SIZE_LIMIT) {
        throw malformed(`field larger than field limit (${FIELD_SIZE_LIMIT})`);
      }
      field += char;
    };
    const save = (): void => {
      fields.push(field);
      field = "";
      if (fields.length > maxFields) throw malformed(`more than ${maxFields} fields`);
    };
    for (;;) {
      if (pos >= n) {
        if (quoted && strict) throw malformed("unexpected end of data");
        if (quoted) inRecord = true;
        if (inRecord) save();
        break;
      }
      const char = text[pos]!;
      pos += 1;
      if (pendingBreak) { // Python counts a line when it reads its first character
        line += 1;
        pendingBreak = false;
      }
      if (quoted) {
        if (char === '"') {
          quoted = false;
          closed = true;
        } else {
          // a line break inside quotes is part of the field, and a new physical line
          if (char === "\n" || (char === "\r" && text[pos] !== "\n")) pendingBreak = true;
          add(char);
        }
        continue;
      }
      if (char === "\r" || char === "\n") {
        if (char === "\r" && text[pos] === "\n") pos += 1;
        if (inRecord) save();
        break;
      }
      if (closed) {
        closed = false;
        if (char === '"') { // a doubled quote: one literal quote, still quoted
          add('"');
          quoted = true;
          continue;
        }
        if (char === ",") {
          save();
          continue;
        }
        if (strict) throw malformed(`',' expected after '"'`);
        add(char); // non-strict: the field goes on unquoted
        continue;
      }
      if (char === ",") {
        inRecord = true;
        save();
        continue;
      }
      if (char === '"' && field.length === 0) { // a quote opens a field only at its start
        inRecord = true;
        quoted = true;
        continue;
      }
      inRecord = true;
      add(char);
    }
    yield { fields, line };
  }
}
