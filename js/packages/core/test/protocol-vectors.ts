/** Reading js/conformance/protocol.json (made by tests/conformance/protocol.py) for the
 * protocol-* and graph-check tests: typed values, RecordDicts, plans. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { loadsStrict, type JsonValue } from "../src/json/strict-json.js";
import { fromHex } from "../src/util/bytes.js";
import type { ConfigRecord, ConfigValue, FlowerArray, MetricRecord, MetricValue, RecordDict } from "../src/flower/records.js";
import { Plan } from "../src/protocol/plan.js";

/** A typed value of the vectors: `{"t": kind, "v": value}`. */
export interface Typed {
  t: "null" | "bool" | "int" | "float" | "str" | "bytes" | "blob" | "list" | "dict";
  v: unknown;
  pad?: number;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the JSON file's shape is checked by its use
export type Vectors = any;

let cached: Vectors | undefined;

/** The protocol vectors (read once). */
export function vectors(): Vectors {
  cached ??= JSON.parse(readFileSync(fileURLToPath(new URL("../../../../conformance/protocol.json", import.meta.url)), "utf8"));
  return cached;
}

/** A typed value's bytes (hex, or a blob by hash, plus `pad` spaces). */
export function bytesOf(typed: Typed): Uint8Array {
  const body = typed.t === "blob" ? fromHex(vectors().blobs[typed.v as string]) : fromHex(typed.v as string);
  if (!typed.pad) return body;
  const out = new Uint8Array(body.length + typed.pad).fill(0x20);
  out.set(body);
  return out;
}

/** A typed value as a JSON value (ints bigint, floats number). */
export function jsonOf(typed: Typed): JsonValue {
  switch (typed.t) {
    case "null": return null;
    case "bool": return typed.v as boolean;
    case "int": return BigInt(typed.v as string);
    case "float": return typed.v as number;
    case "str": return typed.v as string;
    case "list": return (typed.v as Typed[]).map(jsonOf);
    case "dict": {
      const out = Object.create(null) as Record<string, JsonValue>;
      for (const [k, v] of Object.entries(typed.v as Record<string, Typed>)) out[k] = jsonOf(v);
      return out;
    }
    default: throw new Error(`no JSON value of ${typed.t}`);
  }
}

/** A typed value as a Flower config value. */
export function configValueOf(typed: Typed): ConfigValue {
  switch (typed.t) {
    case "bool": return typed.v as boolean;
    case "int": return BigInt(typed.v as string);
    case "float": return typed.v as number;
    case "str": return typed.v as string;
    case "bytes": case "blob": return bytesOf(typed);
    case "list": return (typed.v as Typed[]).map(configValueOf) as ConfigValue;
    default: throw new Error(`no config value of ${typed.t}`);
  }
}

/** A RecordDict described value by value in the vectors. */
export function recordDictOf(described: {
  configs: Record<string, Record<string, Typed>>;
  arrays: Record<string, Record<string, { dtype: string; shape: number[]; stype: string; data: string }>>;
  metrics: Record<string, Record<string, Typed>>;
}): RecordDict {
  const configs = new Map<string, ConfigRecord>();
  for (const [name, items] of Object.entries(described.configs)) {
    configs.set(name, new Map(Object.entries(items).map(([k, v]) => [k, configValueOf(v)])));
  }
  const arrays = new Map<string, Map<string, FlowerArray>>();
  for (const [name, items] of Object.entries(described.arrays)) {
    arrays.set(name, new Map(Object.entries(items).map(([k, a]) =>
      [k, { dtype: a.dtype, shape: a.shape, stype: a.stype, data: fromHex(a.data) }])));
  }
  const metrics = new Map<string, MetricRecord>();
  for (const [name, items] of Object.entries(described.metrics)) {
    metrics.set(name, new Map(Object.entries(items).map(([k, v]) => [k, configValueOf(v) as MetricValue])));
  }
  return { configs, arrays, metrics };
}

/** A RecordDict as the vectors describe one (to compare what JS builds). */
export function describe(content: RecordDict): unknown {
  const typed = (v: ConfigValue): unknown => {
    if (v instanceof Uint8Array) return { t: "bytes", v: Buffer.from(v).toString("hex") };
    if (typeof v === "bigint") return { t: "int", v: v.toString() };
    if (typeof v === "number") return { t: "float", v };
    if (typeof v === "boolean") return { t: "bool", v };
    if (typeof v === "string") return { t: "str", v };
    return { t: "list", v: (v as ConfigValue[]).map(typed) };
  };
  return {
    configs: Object.fromEntries([...content.configs].map(([n, r]) => [n, Object.fromEntries([...r].map(([k, v]) => [k, typed(v)]))])),
    arrays: Object.fromEntries([...content.arrays].map(([n, r]) => [n, Object.fromEntries([...r].map(([k, a]) =>
      [k, { dtype: a.dtype, shape: a.shape, stype: a.stype, data: Buffer.from(a.data).toString("hex") }]))])),
    metrics: Object.fromEntries([...content.metrics].map(([n, r]) => [n, Object.fromEntries([...r].map(([k, v]) => [k, typed(v as ConfigValue)]))])),
  };
}

/** A plan from its canonical JSON text in the vectors (read with every check). */
export function planOf(text: string): Plan {
  return Plan.fromDict(loadsStrict(text, { what: "plan", maxBytes: 2 ** 24, maxDepth: 16 }));
}

/** The class name of what `fn` throws ("ok" if nothing). */
export function outcome(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).constructor.name;
  }
  return "ok";
}

/** The class name of what the promise rejects with ("ok" if it resolves). */
export async function outcomeAsync(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
  } catch (err) {
    return (err as Error).constructor.name;
  }
  return "ok";
}

/** Assert every case's outcome, reporting all mismatches at once. */
export function assertOutcomes(results: { name: string; expect: string; got: string }[]): void {
  const wrong = results.filter((r) => r.expect !== r.got);
  assert.deepEqual(wrong.map((r) => `${r.name}: expected ${r.expect}, got ${r.got}`), []);
}
