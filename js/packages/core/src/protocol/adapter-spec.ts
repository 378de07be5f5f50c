/**
 * What a node's auxiliary models look like (`cola_fed/adapters/spec.py` `AdapterSpec`), with
 * every check its constructor makes, and which kinds this node knows (the built-in families of
 * `cola_fed/adapters/registry.py`; a Python plugin family is not installed here, so a plan
 * naming one is refused, as a Python node without that plugin refuses it).
 */

import { ConfigError } from "../errors.js";
import { familyOf } from "../learner/families.js";
import { compareCodePoints } from "../json/python-json.js";
import { ACTIVATIONS } from "./constants.js";

/** A family option's value: Python's `int` (bigint), `float` (number), `bool` or `str`. */
export type OptionValue = bigint | number | boolean | string;

/** The family and size of the auxiliary model attached to each adapted layer. */
export interface AdapterSpec {
  readonly kind: string;
  readonly rank: number;
  readonly bias: boolean;
  readonly hidden: number;
  readonly depth: number;
  readonly growth: number;
  readonly activation: string;
  /** the family's own options, sorted by name (empty for every built-in family) */
  readonly options: readonly (readonly [string, OptionValue])[];
}

/** The options each built-in family declares (`AdapterFamily.options`): none. */
const FAMILY_OPTIONS: ReadonlyMap<string, ReadonlyMap<string, "int" | "float" | "bool" | "str">> = new Map([
  ["lowrank", new Map()], ["linear", new Map()], ["mlp", new Map()],
]);

/** Whether `kind` names a family this node knows (`is_known_kind`), without throwing. */
export function isKnownKind(kind: unknown): boolean {
  if (typeof kind !== "string") return false;
  try {
    familyOf(kind);
  } catch (err) {
    if (err instanceof ConfigError) return false;
    throw err;
  }
  return FAMILY_OPTIONS.has(kind);
}

/** Fields of an {@link AdapterSpec} before its checks; Python's defaults where left out. */
export interface AdapterSpecInit {
  kind?: string;
  rank?: number;
  bias?: boolean;
  hidden?: number;
  depth?: number;
  growth?: number;
  activation?: string;
  options?: ReadonlyMap<string, OptionValue> | readonly (readonly [string, OptionValue])[];
}

/**
 * A checked spec (`AdapterSpec.__post_init__`): options canonical (sorted, each name once, each
 * value a finite number, an integer within +-2^53, a boolean or a string), a known kind,
 * `bias` a boolean, positive integer sizes, a known activation, and the family's own check
 * (every option declared by the family, of its type, none missing). Throws ConfigError.
 */
export function adapterSpec(init: AdapterSpecInit = {}): AdapterSpec {
  const kind = init.kind ?? "lowrank";
  let options = canonicalOptions(init.options ?? []);
  if (typeof kind !== "string") throw new ConfigError(`adapter.kind: expected a string, got ${String(kind)}`);
  familyOf(kind);
  const declared = FAMILY_OPTIONS.get(kind) ?? new Map<string, string>();
  // an option declared float may be written as an integer: one spec either way
  options = options.map(([name, value]) =>
    [name, declared.get(name) === "float" && typeof value === "bigint" ? Number(value) : value] as const);
  const spec: AdapterSpec = {
    kind, rank: init.rank ?? 8, bias: init.bias ?? false, hidden: init.hidden ?? 128,
    depth: init.depth ?? 2, growth: init.growth ?? 2, activation: init.activation ?? "relu", options,
  };
  if (typeof spec.bias !== "boolean") throw new ConfigError(`adapter.bias: expected true or false, got ${String(spec.bias)}`);
  for (const name of ["rank", "hidden", "depth", "growth"] as const) {
    const value = spec[name];
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new ConfigError(`adapter.${name}: expected a positive integer, got ${String(value)}`);
    }
  }
  if (!ACTIVATIONS.includes(spec.activation)) {
    throw new ConfigError(`adapter.activation: expected one of ${ACTIVATIONS.join(", ")}, got '${spec.activation}'`);
  }
  checkFamilyOptions(kind, declared, spec.options);
  return spec;
}

/** `AdapterFamily.check`: every option declared by the family and of its type, none missing. */
function checkFamilyOptions(kind: string, declared: ReadonlyMap<string, string>,
  options: readonly (readonly [string, OptionValue])[]): void {
  for (const [name, value] of options) {
    const expected = declared.get(name);
    if (expected === undefined) {
      const known = [...declared.keys()].join(", ") || "none";
      throw new ConfigError(`adapter.options: a '${kind}' adapter has no option '${name}' (its options: ${known})`);
    }
    const ok = typeof value === "boolean" ? expected === "bool"
      : expected === "float" ? typeof value === "bigint" || (typeof value === "number" && !Number.isNaN(value))
        : expected === "int" ? typeof value === "bigint" : typeof value === "string";
    if (!ok) throw new ConfigError(`adapter.options.${name}: expected ${expected}, got ${String(value)}`);
  }
  const given = new Set(options.map(([name]) => name));
  const missing = [...declared.keys()].filter((name) => !given.has(name)).sort(compareCodePoints);
  if (missing.length) throw new ConfigError(`adapter.options: a '${kind}' adapter needs ${missing.join(", ")}`);
}

/** `_canonical_options`: sorted `(name, value)` pairs, each name once, each value finite. */
function canonicalOptions(
  options: ReadonlyMap<string, OptionValue> | readonly (readonly [string, OptionValue])[],
): (readonly [string, OptionValue])[] {
  const pairs = options instanceof Map ? [...options.entries()] : [...(options as readonly (readonly [string, OptionValue])[])];
  let problem: string | undefined;
  if (!pairs.every((p) => Array.isArray(p) && p.length === 2 && typeof p[0] === "string")) {
    problem = "expected a mapping of names to numbers, booleans or strings";
  } else if (new Set(pairs.map(([name]) => name)).size !== pairs.length) {
    problem = "a name is given twice";
  } else {
    for (const [name, value] of pairs) {
      const ok = typeof value === "boolean" || typeof value === "string"
        || (typeof value === "bigint" && value < 2n ** 53n && value > -(2n ** 53n))
        || (typeof value === "number" && Number.isFinite(value));
      if (!ok) problem = `${name}: expected a finite number, a boolean or a string`;
    }
  }
  if (problem !== undefined) throw new ConfigError(`adapter.options: ${problem}`);
  return pairs.sort((a, b) => compareCodePoints(a[0], b[0]) || 0);
}

/** Widths of an MLP adapter's hidden layers (`hidden_sizes`), exact (Python ints are
 * unbounded: a hostile plan's `hidden * growth^i` may pass 2^53). */
export function hiddenSizesExact(spec: AdapterSpec): bigint[] {
  return Array.from({ length: spec.depth }, (_, i) => BigInt(spec.hidden) * BigInt(spec.growth) ** BigInt(i));
}

/** Two specs are the same spec (Python's dataclass `==`). */
export function sameSpec(a: AdapterSpec, b: AdapterSpec): boolean {
  return a.kind === b.kind && a.rank === b.rank && a.bias === b.bias && a.hidden === b.hidden
    && a.depth === b.depth && a.growth === b.growth && a.activation === b.activation
    && a.options.length === b.options.length
    && a.options.every(([name, value], i) => b.options[i]![0] === name && b.options[i]![1] === value);
}

/** `AdapterSpec.to_dict()`, as the plan's JSON carries it (ints as bigint). */
export function adapterSpecToDict(spec: AdapterSpec): Record<string, bigint | number | boolean | string | Record<string, OptionValue>> {
  return {
    kind: spec.kind, rank: BigInt(spec.rank), bias: spec.bias, hidden: BigInt(spec.hidden),
    depth: BigInt(spec.depth), growth: BigInt(spec.growth), activation: spec.activation,
    options: Object.fromEntries(spec.options),
  };
}
