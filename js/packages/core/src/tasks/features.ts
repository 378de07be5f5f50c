/**
 * A node's own numeric data (the digits and MNIST tasks): a port of
 * `cola_fed.tasks.tables.read_feature_csv`. A CSV with a header, one `label` column and the
 * feature columns in order; features are plain decimal numbers in `[low, high]`, read as
 * float64 and rounded to float32 (`Math.fround` rounds to nearest even, as numpy's cast of the
 * float64 does); labels are digit strings in `[0, classes)`. Checks run in Python's order,
 * and errors name the same line.
 */

import { ConfigError } from "../errors.js";
import { readCsv } from "./csv.js";

/** The label column's name. */
export const LABEL = "label";
/** A feature value, exactly `tables.NUMBER`: no spaces, no nan/inf, no `1_0`, no hex. */
const NUMBER = "[+-]?(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:[eE][+-]?[0-9]+)?";
const NUMBER_RE = new RegExp(`^${NUMBER}$`);
const LABEL_RE = /^[0-9]+$/;

/** What {@link readFeatureCsv} reads. */
export interface FeatureCsvSpec {
  features: number;
  low: number;
  high: number;
  classes: number;
  /** Named in every error (Python names the key and the path: `task.data-path <path>`). */
  what: string;
  /**
   * Drop the rows that cannot be used instead of refusing the file (`task.skip-invalid-rows`;
   * node config `skip-invalid-rows`); a file of which no row can be used is refused either way.
   */
  skipInvalid?: boolean;
}

/** The features (float32, row-major `[rows, features]`) and labels (int64) of a CSV. */
export interface FeatureTable {
  rows: number;
  features: Float32Array;
  labels: BigInt64Array;
  /** Rows dropped with `skipInvalid` (each a problem: `line N: what is wrong`). */
  skipped: string[];
}

/** How many bad rows an error lists (`tables.SHOWN_BAD_ROWS`). */
export const SHOWN_BAD_ROWS = 5;

/**
 * `tables.invalid_rows_error` (without a key): how many rows cannot be used, the first
 * {@link SHOWN_BAD_ROWS} by line, and what to do.
 */
export function invalidRowsError(source: string, problems: readonly string[], total: number,
                                 skip: boolean): ConfigError {
  let listed = problems.slice(0, SHOWN_BAD_ROWS).map((line) => `  ${line}`).join("\n");
  const more = problems.length - SHOWN_BAD_ROWS;
  if (more > 0) listed += `\n  ... and ${more} more`;
  const rows = `its ${total} rows`;
  if (skip && problems.length === total) {
    return new ConfigError(`${source}: none of ${rows} can be used (task.skip-invalid-rows ` +
      `would leave no data):\n${listed}`);
  }
  return new ConfigError(`${source}: ${problems.length} of ${rows} cannot be used:\n${listed}\n` +
    "Fix or remove them, or set task.skip-invalid-rows = true to skip them (they are counted " +
    "and logged)");
}

/** Python's `repr` of a short piece of a value, for messages (Python shows `value[:40]!r`). */
export function pyRepr(value: string): string {
  const quote = value.includes("'") && !value.includes('"') ? '"' : "'";
  const body = value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\r/g, "\\r")
    .replace(/\t/g, "\\t");
  return quote + (quote === "'" ? body.replace(/'/g, "\\'") : body) + quote;
}

/** `tables._names`: the first 10 items, comma-separated, then how many more. */
export function listNames(items: readonly string[]): string {
  const more = items.length - 10;
  return items.slice(0, 10).join(", ") + (more > 0 ? `, ... (${more} more)` : "");
}

function show(value: string): string {
  return pyRepr(value.slice(0, 40));
}

/** Python's `str(float)` of a bound, for messages (0.0, 1.0). */
function pyFloat(value: number): string {
  return Number.isInteger(value) ? value.toFixed(1) : String(value);
}

/**
 * Read a node's own feature CSV (the text, BOM allowed). Throws {@link ConfigError} where
 * Python's `read_feature_csv` raises it: empty text, header without `label`, repeated
 * columns, the wrong number of feature columns, a row with the wrong number of fields, a
 * value that is not a decimal number, a bad label, a feature out of range, no rows.
 */
export function readFeatureCsv(text: string, spec: FeatureCsvSpec): FeatureTable {
  const { features, low, high, classes, what } = spec;
  if (text.startsWith("\ufeff")) text = text.slice(1);
  if (text.trim().length === 0) throw new ConfigError(`${what}: the file is empty`);
  // a record may have a few fields more than the header (the error says how many), not more
  const records = readCsv(text, { what, maxFields: features + 1 + 1024 });
  let header: string[] = [];
  let where = `${what}: line 0`;
  // by hand: a `for...of` that breaks would close the generator the rows come from
  for (let next = records.next(); !next.done; next = records.next()) {
    where = `${what}: line ${next.value.line}`;
    if (next.value.fields.length > 0) {
      header = next.value.fields;
      break;
    }
  }
  const seen = new Set<string>();
  const repeated = new Set<string>();
  for (const name of header) (seen.has(name) ? repeated : seen).add(name);
  if (repeated.size > 0) {
    throw new ConfigError(`${where}: the header repeats column(s) ${listNames([...repeated].sort())}`);
  }
  if (!seen.has(LABEL)) {
    throw new ConfigError(`${where}: the header has no '${LABEL}' column (expected '${LABEL}' ` +
      `and ${features} feature columns)`);
  }
  if (header.length !== features + 1) {
    throw new ConfigError(`${where}: the header has ${header.length - 1} feature columns ` +
      `besides '${LABEL}', the task reads ${features}`);
  }
  const at = header.indexOf(LABEL);
  const rows: Float64Array[] = [];
  const labels: bigint[] = [];
  const problems: string[] = [];
  for (let next = records.next(); !next.done; next = records.next()) {
    const record = next.value;
    if (record.fields.length === 0) continue;
    const problem = featureRow(record.fields, header, at, spec);
    if (typeof problem === "string") {
      problems.push(`line ${record.line}: ${problem}`);
      continue;
    }
    rows.push(problem.numbers);
    labels.push(problem.label);
  }
  if (labels.length === 0 && problems.length === 0) {
    throw new ConfigError(`${what}: the file has no rows`);
  }
  if (problems.length > 0) {
    const skip = spec.skipInvalid === true;
    if (!skip || labels.length === 0) {
      throw invalidRowsError(what, problems, labels.length + problems.length, skip);
    }
  }
  const out = new Float32Array(rows.length * features);
  rows.forEach((numbers, r) => out.set(numbers, r * features)); // Float32Array.set: fround
  return { rows: rows.length, features: out, labels: BigInt64Array.from(labels), skipped: problems };
}

/**
 * One row of a feature CSV (`tables._feature_row`): its features (float64) and label, or what
 * is wrong with it (the caller adds the line), checked in Python's order.
 */
function featureRow(row: readonly string[], header: readonly string[], at: number,
                    spec: FeatureCsvSpec): { numbers: Float64Array; label: bigint } | string {
  const { low, high, classes } = spec;
  if (row.length !== header.length) return `${row.length} fields, the header has ${header.length}`;
  const label = row[at]!;
  const values = row.slice(0, at).concat(row.slice(at + 1));
  const bad = values.findIndex((v) => !NUMBER_RE.test(v));
  if (bad >= 0) {
    const name = header[bad + (bad >= at ? 1 : 0)]!;
    return `column '${name}' holds ${show(values[bad]!)}, expected a decimal number`;
  }
  if (label.trim().length === 0) return `no label in column '${LABEL}'`;
  if (!LABEL_RE.test(label) || BigInt(label) >= BigInt(classes)) {
    return `label ${show(label)}, expected an integer in [0, ${classes})`;
  }
  const numbers = new Float64Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const value = Number(values[i]!); // correctly rounded, as Python's float()
    if (!(value >= low && value <= high)) {
      const name = header[i + (i >= at ? 1 : 0)]!;
      return `column '${name}' holds ${values[i]!.slice(0, 40)}, outside ` +
        `[${pyFloat(low)}, ${pyFloat(high)}]`;
    }
    numbers[i] = value;
  }
  return { numbers, label: BigInt(label) };
}
