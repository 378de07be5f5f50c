/**
 * Text classification on a node's own CSV with the tokenizer the server ships:
 * - `text-classification` (the MiniLM demo; `cola_fed/tasks/text_classification.py`
 *   `load_local_text` + `tokenize`): columns `text` and `label` read as `csv.DictReader` does,
 *   labels as Python's `int()`, truncation to `max-length` around the special tokens, padding
 *   with id 0; keys `input_ids`, `token_type_ids`, `attention_mask`, `labels` (all int64).
 * - `sequence-classification` (`cola_fed/tasks/hf.py` + `tables.py`): `task.text-column` and
 *   `task.label-column`, label names or integer ids in `[0, num-labels)`, texts cut to
 *   `max-length * 64` characters, ids cut to `max-length`, padded with the plan's `pad-id`;
 *   keys `input_ids`, `attention_mask`, `labels`. Templates are not ported (refused).
 */

import { ConfigError } from "../errors.js";
import type { NdArray } from "../tensor.js";
import { type Batch, type ClientData, type SplitConfig, splitClientData } from "./client-data.js";
import { readCsv } from "./csv.js";
import { listNames, pyRepr } from "./features.js";
import { TaskTokenizer, type TextEncoding } from "./tokenizer.js";

/** The text settings of the plan's task (camelCase of `TaskConfig`). */
export interface TextTaskConfig extends SplitConfig {
  maxLength: number;
  textColumn?: string;
  labelColumn?: string;
  /** Comma-separated class names (`task.label-names`); empty: integer labels. */
  labelNames?: string;
  numLabels?: number;
  padId?: number;
  template?: string;
}

/** Characters a text may have per token of max-length before it is tokenised (hf.py). */
export const MAX_CHARS_PER_TOKEN = 64;
/** Python's `str.strip()` whitespace (what `int(" 1 ")` ignores). */
const PY_SPACE = "[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const PY_INT = new RegExp(`^${PY_SPACE}*([+-]?[0-9]+(?:_[0-9]+)*)${PY_SPACE}*$`);
const INT64_MAX = 2n ** 63n - 1n;

/**
 * Python's `int(text)` for ASCII digits (signs, underscores between digits, surrounding
 * whitespace), or null where it raises. (Python also reads non-ASCII digits; the node does not.)
 */
export function pyInt(text: string): bigint | null {
  const match = PY_INT.exec(text);
  return match ? BigInt(match[1]!.replace(/_/g, "")) : null;
}

/** The records of a CSV as `csv.DictReader(handle)` sees them: header, then non-empty rows. */
function dictReaderRows(text: string, what: string): { header: string[]; rows: { fields: string[]; line: number }[] } {
  const records = readCsv(text, { what, strict: false });
  const first = records.next();
  const header = first.done ? [] : first.value.fields;
  const rows: { fields: string[]; line: number }[] = [];
  for (let next = records.next(); !next.done; next = records.next()) {
    if (next.value.fields.length > 0) rows.push(next.value);
  }
  return { header, rows };
}

interface TextDataset { texts: string[]; labels: bigint[] }

/** `load_local_text` for a CSV: `text` and `label` columns (the last of each name wins). */
export function loadLocalText(text: string, what: string): TextDataset {
  const fail = (why: string): ConfigError => new ConfigError(`${what}: expected text and label columns (${why})`);
  const { header, rows } = dictReaderRows(text, what);
  const textAt = header.lastIndexOf("text");
  const labelAt = header.lastIndexOf("label");
  if (rows.length > 0 && textAt < 0) throw fail("'text'");
  if (rows.length > 0 && labelAt < 0) throw fail("'label'");
  // a short row has no value (Python: None, which str() makes "None")
  const texts = rows.map((row) => row.fields[textAt] ?? "None");
  const labels = rows.map((row) => {
    const value = row.fields[labelAt];
    if (value === undefined) {
      throw new ConfigError(`${what}: line ${row.line} has no label field`);
    }
    const label = pyInt(value);
    if (label === null) throw fail(`invalid literal for int() with base 10: ${pyRepr(value)}`);
    if (label > INT64_MAX || label < -INT64_MAX - 1n) throw new ConfigError(`${what}: line ${row.line}: label ${value} does not fit int64`);
    return label;
  });
  return { texts, labels };
}

function int64Matrix(rows: number[][], width: number, fill: number): NdArray<"int64"> {
  const data = new BigInt64Array(rows.length * width).fill(BigInt(fill));
  rows.forEach((row, r) => row.slice(0, width).forEach((v, c) => { data[r * width + c] = BigInt(v); }));
  return { dtype: "int64", shape: [rows.length, width], data };
}

function int64Vector(values: bigint[]): NdArray<"int64"> {
  return { dtype: "int64", shape: [values.length], data: BigInt64Array.from(values) };
}

/** `text-classification` (the MiniLM demo) on the node's own CSV. */
export function textClassificationClientData(dataText: string, tokenizer: TaskTokenizer,
  config: TextTaskConfig, what: string): ClientData {
  const dataset = loadLocalText(dataText, what);
  const length = config.maxLength;
  const encode = (rows: Int32Array): Batch => {
    const encodings: TextEncoding[] = [...rows].map((r) => tokenizer.encodeTruncated(dataset.texts[r]!, length));
    return new Map<string, NdArray>([
      ["input_ids", int64Matrix(encodings.map((e) => e.ids), length, 0)],
      ["token_type_ids", int64Matrix(encodings.map((e) => e.typeIds), length, 0)],
      ["attention_mask", int64Matrix(encodings.map((e) => e.ids.map(() => 1)), length, 0)],
      ["labels", int64Vector([...rows].map((r) => dataset.labels[r]!))],
    ]);
  };
  return splitClientData(dataset.labels.length, encode, config);
}

/** `tables.read_table` + `_read_csv` for CSV text: columns by name, every row complete. */
export function readTable(text: string, what: string): Map<string, string[]> {
  if (text.startsWith("\ufeff")) text = text.slice(1);
  if (text.trim().length === 0) throw new ConfigError(`${what}: the file is empty`);
  const { header, rows } = dictReaderRows(text, what);
  const repeated = [...new Set(header.filter((name, i) => header.indexOf(name) !== i))].sort();
  if (repeated.length > 0) throw new ConfigError(`${what}: the header repeats column(s) ${listNames(repeated)}`);
  const table = new Map<string, string[]>(header.map((name) => [name, []]));
  for (const row of rows) {
    if (row.fields.length !== header.length) {
      throw new ConfigError(`${what}: line ${row.line} has ${row.fields.length} fields, the header has ${header.length}`);
    }
    header.forEach((name, i) => table.get(name)!.push(row.fields[i]!));
  }
  if (table.size === 0) throw new ConfigError(`${what}: the data has no columns`);
  if (rows.length === 0) throw new ConfigError(`${what}: the file has a header but no rows`);
  return table;
}

function column(table: Map<string, string[]>, name: string, key: string): string[] {
  const values = table.get(name);
  if (values === undefined) {
    throw new ConfigError(`${key}: the data has no column ${pyRepr(name)} (columns: ${listNames([...table.keys()].sort())})`);
  }
  return values;
}

/** `tables.label_ids` for CSV (string) labels. */
export function labelIds(values: string[], names: string[], numLabels: number, key = "task.label-column"): bigint[] {
  if (numLabels < 1) throw new ConfigError(`${key}: the number of labels must be >= 1, got ${numLabels}`);
  let index: Map<string, number> | null = null;
  if (names.length > 0) {
    if (names.length !== numLabels) {
      throw new ConfigError(`${key}: ${names.length} label names (${listNames(names)}) for ${numLabels} labels; give one name per label`);
    }
    if (new Set(names).size !== names.length) throw new ConfigError(`${key}: label names repeat (${listNames(names)})`);
    index = new Map(names.map((name, i) => [name, i]));
  }
  return values.map((value, row) => {
    const id = index ? index.get(value) : pyInt(value);
    const ok = id !== undefined && id !== null && BigInt(id) >= 0n && BigInt(id) < BigInt(numLabels);
    if (!ok) {
      const expected = index ? `one of the label names (${listNames(names)})` : `an integer in [0, ${numLabels})`;
      throw new ConfigError(`${key}: row ${row} has label ${pyRepr(value)}, expected ${expected}`);
    }
    return BigInt(id);
  });
}

/** `sequence-classification` on the node's own CSV (no template). */
export function sequenceClassificationClientData(dataText: string, tokenizer: TaskTokenizer,
  config: TextTaskConfig, what: string): ClientData {
  if (config.template) {
    throw new ConfigError("task.template: the JavaScript node does not render templates yet; " +
      "give the text in one column (task.text-column)");
  }
  if (config.padId === undefined || config.padId < 0) {
    throw new ConfigError("plan: task.pad-id and task.eos-id must come resolved from the server");
  }
  const padId = config.padId;
  const table = readTable(dataText, what);
  const names = (config.labelNames ?? "").split(",").map((n) => n.trim()).filter((n) => n);
  const numLabels = names.length || (config.numLabels ?? 2);
  const labels = labelIds(column(table, config.labelColumn ?? "label", "task.label-column"), names, numLabels);
  const length = config.maxLength;
  const limit = length * MAX_CHARS_PER_TOKEN;
  const encode = (rows: Int32Array): Batch => {
    const texts = column(table, config.textColumn ?? "text", "task.text-column");
    const ids = [...rows].map((r) => {
      let text = texts[r]!;
      if (text.length > limit) text = Array.from(text).slice(0, limit).join(""); // code points, as Python
      return tokenizer.encode(text, true).ids.slice(0, length);
    });
    return new Map<string, NdArray>([
      ["input_ids", int64Matrix(ids, length, padId)],
      ["attention_mask", int64Matrix(ids.map((s) => s.map(() => 1)), length, 0)],
      ["labels", int64Vector([...rows].map((r) => labels[r]!))],
    ]);
  };
  return splitClientData(labels.length, encode, config);
}
