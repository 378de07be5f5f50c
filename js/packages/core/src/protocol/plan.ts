/**
 * The plan: what the server resolves for every node of the run (`Plan` and `Assignment` of
 * `cola_fed/federation/protocol.py`), read from the signed transcript with every check
 * `Plan.from_dict` makes, in the same order (the error class depends on it).
 */

import { ConfigError, ProtocolError } from "../errors.js";
import { compareCodePoints } from "../json/python-json.js";
import type { JsonObject, JsonValue } from "../json/strict-json.js";
import type { LayerInfo, Layout, ModuleType } from "../wire/layout.js";
import { WIRE_DTYPES } from "../wire/codec.js";
import { adapterSpec, adapterSpecToDict, isKnownKind, type AdapterSpec, type OptionValue } from "./adapter-spec.js";
import { ACTIVATIONS, BACKENDS, DATA_MODES, MAX_GRAPHS, MAX_PARTITION_ID, MODULE_TYPES, OPTIMIZERS, PARTITIONERS, TASK_FILES } from "./constants.js";
import { asFloat, asInt, checkType, inRange, index, isLowerHex, pyLen, pyPrefix, reprCut, sortedRepr, take, type FieldTable } from "./fields.js";
import { optimizerSpec, optimizerSpecToDict, type OptimizerSpec } from "./optimizer-spec.js";
import { BUILT_IN_TASKS, isTaskName, TASK_FIELDS, taskConfig, type TaskConfig } from "./task-config.js";

/** Run `build` (a config constructor); its ConfigError becomes a ProtocolError (`_validated`). */
function validated<T>(build: () => T, where: string): T {
  try {
    return build();
  } catch (err) {
    if (err instanceof ConfigError) throw new ProtocolError(`${where}: ${err.message}`);
    throw err;
  }
}

/**
 * Which of several options a partition gets: `cycle` (partition `p` gets
 * `cycle[p % cycle.length]`) or, when the cycle is empty, `mapping` with `default`.
 */
export class Assignment {
  constructor(
    readonly cycle: readonly number[] = [],
    readonly mapping: readonly (readonly [number, number])[] = [],
    readonly defaultIndex: number = 0,
  ) {}

  /** The option index of a partition (`index_for`; the last mapping entry of a partition wins,
   * as Python's `dict(mapping)`). */
  indexFor(partitionId: number): number {
    if (this.cycle.length) return this.cycle[partitionId % this.cycle.length]!;
    let found = this.defaultIndex;
    for (const [pid, option] of this.mapping) if (pid === partitionId) found = option;
    return found;
  }

  /** `Assignment.to_dict()` (ints as bigint). */
  toDict(): { cycle: bigint[]; mapping: bigint[][]; default: bigint } {
    return {
      cycle: this.cycle.map(BigInt), mapping: this.mapping.map(([p, i]) => [BigInt(p), BigInt(i)]),
      default: BigInt(this.defaultIndex),
    };
  }

  /** `Assignment.from_dict`: over `options` choices; every entry checked. */
  static fromDict(raw: JsonValue | undefined, options: number, where: string): Assignment {
    const obj = take(raw, { cycle: "list", mapping: "list", default: "int" }, where);
    const rawCycle = obj.cycle as JsonValue[];
    const rawMapping = obj.mapping as JsonValue[];
    const cycle = rawCycle.slice(0, 1024).map((v) => index(v, options, `${where}.cycle`));
    if (rawCycle.length > 1024 || rawMapping.length > 4096) throw new ProtocolError(`${where}: too many entries`);
    const mapping: [number, number][] = [];
    for (const entry of rawMapping) {
      if (!(Array.isArray(entry) && entry.length === 2)) {
        throw new ProtocolError(`${where}.mapping: expected [partition, option] pairs`);
      }
      checkType(entry[0], "int", `${where}.mapping`);
      const pid = inRange(entry[0] as bigint, 0, MAX_PARTITION_ID, `${where}.mapping`);
      mapping.push([pid, index(entry[1], options, `${where}.mapping`)]);
    }
    return new Assignment(cycle, mapping, index(obj.default, options, `${where}.default`));
  }
}

const PLAN_FIELDS: FieldTable = {
  layout: "list", task: "dict", "node-specs": "list", "spec-assignment": "dict", optimizer: "dict",
  interval: "int", "wire-dtype": "str", "data-mode": "str", backends: "list", "backend-assignment": "dict",
  graphs: "dict", files: "dict",
};
const SPEC_FIELDS: FieldTable = {
  kind: "str", rank: "int", bias: "bool", hidden: "int", depth: "int", growth: "int", activation: "str",
  options: "dict",
};
const OPTIMIZER_FIELDS: FieldTable = {
  name: "str", lr: "float", weight_decay: "float", betas: "list", eps: "float", momentum: "float",
  nesterov: "bool", warmup_steps: "int", total_steps: "int?", max_grad_norm: "float?",
};
const LAYER_FIELDS: FieldTable = {
  name: "str", d_in: "int", d_out: "int", module_type: "str", has_bias: "bool", kernel_size: "list",
  stride: "list", padding: "list", dilation: "list",
};
/** A convolution's geometry fields: the least value of each, and the value every other layer
 * must keep. */
const GEOMETRY = [
  ["kernel_size", "kernelSize", 1, [1, 1]], ["stride", "stride", 1, [1, 1]],
  ["padding", "padding", 0, [0, 0]], ["dilation", "dilation", 1, [1, 1]],
] as const;

/** The fields of a plan, before they are bundled into a {@link Plan}. */
export interface PlanInit {
  layout: Layout;
  task: TaskConfig;
  nodeSpecs: readonly ReadonlyMap<string, AdapterSpec>[];
  specAssignment: Assignment;
  optimizer: OptimizerSpec;
  interval: number;
  wireDtype?: string;
  dataMode?: string;
  backends?: readonly string[];
  backendAssignment?: Assignment;
  graphs?: ReadonlyMap<string, string>;
  files?: ReadonlyMap<string, string>;
}

/** What {@link Plan.fromDict} is told: the task names this node knows. */
export interface PlanReadOptions {
  knownTasks?: readonly string[];
}

/**
 * What the server tells every node about the run: the adapted layers, the adapter family of
 * each kind of node and which partitions get which, the optimizer, the data the node sends,
 * the backend for each partition and the SHA-256 of every train-step graph and task file.
 * Node-local settings (data paths, caches, threads, caps) are never part of it.
 */
export class Plan {
  readonly layout: Layout;
  readonly task: TaskConfig;
  readonly nodeSpecs: readonly ReadonlyMap<string, AdapterSpec>[];
  readonly specAssignment: Assignment;
  readonly optimizer: OptimizerSpec;
  readonly interval: number;
  readonly wireDtype: string;
  readonly dataMode: string;
  readonly backends: readonly string[];
  readonly backendAssignment: Assignment;
  readonly graphs: ReadonlyMap<string, string>;
  readonly files: ReadonlyMap<string, string>;

  constructor(init: PlanInit) {
    this.layout = init.layout;
    this.task = init.task;
    this.nodeSpecs = init.nodeSpecs;
    this.specAssignment = init.specAssignment;
    this.optimizer = init.optimizer;
    this.interval = init.interval;
    this.wireDtype = init.wireDtype ?? "float32";
    this.dataMode = init.dataMode ?? "stream";
    this.backends = init.backends ?? [""];
    this.backendAssignment = init.backendAssignment ?? new Assignment();
    this.graphs = init.graphs ?? new Map();
    this.files = init.files ?? new Map();
  }

  /** Layer selector -> adapter spec of the node with this partition id (`specs_for`). */
  specsFor(partitionId: number): ReadonlyMap<string, AdapterSpec> {
    return this.nodeSpecs[this.specAssignment.indexFor(partitionId)]!;
  }

  /** `specsFor` of every kind of node the run may have (`all_specs`). */
  allSpecs(): ReadonlyMap<string, AdapterSpec>[] {
    return [...this.nodeSpecs];
  }

  /** The run's backend for this partition (`edge.backends`); "": the node chooses. */
  backendFor(partitionId: number): string {
    return this.backends[this.backendAssignment.indexFor(partitionId)]!;
  }

  /** Seed of a node's batch stream (`seed * 7919 + partition_id`, exact: it may pass 2^53). */
  batchSeed(partitionId: number): bigint {
    return BigInt(this.task.seed) * 7919n + BigInt(partitionId);
  }

  /** Seed of a node's initial adapters (`seed + partition_id`). */
  adapterSeed(partitionId: number): bigint {
    return BigInt(this.task.seed) + BigInt(partitionId);
  }

  /** Most rows of adaptation data one chunk can hold (a sample per token at most). */
  get maxRows(): number {
    return this.task.batchSize * this.task.maxLength;
  }

  /** This plan with other graph hashes (`with_graphs`). */
  withGraphs(graphs: ReadonlyMap<string, string>): Plan {
    return new Plan({ ...this, graphs: new Map(graphs) });
  }

  /** This plan with other task-file hashes (`with_files`). */
  withFiles(files: ReadonlyMap<string, string>): Plan {
    return new Plan({ ...this, files: new Map(files) });
  }

  /** `Plan.to_dict()`: the JSON value the transcript carries (ints as bigint). */
  toDict(): JsonObject {
    const task: Record<string, JsonValue> = {};
    for (const [wire, kind, prop] of TASK_FIELDS) {
      const value = this.task[prop];
      task[wire] = kind === "int" ? BigInt(value as number) : value;
    }
    const sorted = (map: ReadonlyMap<string, string>): Record<string, string> =>
      Object.fromEntries([...map].sort((a, b) => compareCodePoints(a[0], b[0])));
    return {
      layout: this.layout.map((layer) => ({
        name: layer.name, d_in: BigInt(layer.dIn), d_out: BigInt(layer.dOut), module_type: layer.moduleType,
        has_bias: layer.hasBias, kernel_size: layer.kernelSize.map(BigInt), stride: layer.stride.map(BigInt),
        padding: layer.padding.map(BigInt), dilation: layer.dilation.map(BigInt),
      })),
      task,
      "node-specs": this.nodeSpecs.map((specs) => Object.fromEntries(
        [...specs].map(([selector, spec]) => [selector, adapterSpecToDict(spec) as unknown as JsonValue]))),
      "spec-assignment": this.specAssignment.toDict(),
      optimizer: optimizerSpecToDict(this.optimizer),
      interval: BigInt(this.interval),
      "wire-dtype": this.wireDtype,
      "data-mode": this.dataMode,
      backends: [...this.backends],
      "backend-assignment": this.backendAssignment.toDict(),
      graphs: sorted(this.graphs),
      files: sorted(this.files),
    } as unknown as JsonObject;
  }

  /** `Plan.from_dict`: a plan from the transcript's JSON, every field checked. Throws
   * ProtocolError (a config check's ConfigError becomes one, naming the field). */
  static fromDict(raw: JsonValue | undefined, options: PlanReadOptions = {}): Plan {
    const obj = take(raw, PLAN_FIELDS, "plan");
    const rawSpecs = obj["node-specs"] as JsonValue[];
    const nodeSpecs = rawSpecs.slice(0, 64).map((s, i) => readNodeSpecs(s, `plan.node-specs[${i}]`));
    if (!nodeSpecs.length || rawSpecs.length > 64) throw new ProtocolError("plan.node-specs: expected 1 to 64 kinds of node");
    const backends = obj.backends as JsonValue[];
    if (!backends.length || backends.length > 8
      || backends.some((b) => typeof b !== "string" || !(b === "" || BACKENDS.includes(b)))) {
      throw new ProtocolError(`plan.backends: expected entries of ${pyTuple(BACKENDS)} or '', got ${reprCut(backends, 80)}`);
    }
    if (!(WIRE_DTYPES as readonly string[]).includes(obj["wire-dtype"] as string)
      || !DATA_MODES.includes(obj["data-mode"] as string)) {
      throw new ProtocolError("plan: unknown wire-dtype or data-mode");
    }
    // in the order of Python's keyword arguments
    const layout = readLayout(obj.layout as JsonValue[]);
    const task = readTask(obj.task as JsonObject, options.knownTasks ?? BUILT_IN_TASKS);
    const specAssignment = Assignment.fromDict(obj["spec-assignment"], nodeSpecs.length, "plan.spec-assignment");
    const optimizer = readOptimizer(obj.optimizer as JsonObject);
    const interval = inRange(obj.interval as bigint, 1, 2 ** 16, "plan.interval");
    const backendAssignment = Assignment.fromDict(obj["backend-assignment"], backends.length, "plan.backend-assignment");
    const graphs = readHashes(obj.graphs as JsonObject, "plan.graphs", MAX_GRAPHS);
    const files = readFileHashes(obj.files as JsonObject);
    return new Plan({
      layout, task, nodeSpecs, specAssignment, optimizer, interval, wireDtype: obj["wire-dtype"] as string,
      dataMode: obj["data-mode"] as string, backends: backends as string[], backendAssignment, graphs, files,
    });
  }
}

/** A Python tuple's repr of strings, for messages. */
function pyTuple(items: readonly string[]): string {
  return `(${items.map((s) => `'${s}'`).join(", ")})`;
}

/** `_layout`: 1 to 4096 typed layers, geometry only on convolutions, unique names. */
function readLayout(raw: JsonValue[]): Layout {
  if (!(raw.length >= 1 && raw.length <= 4096)) {
    throw new ProtocolError(`plan.layout: expected 1 to 4096 layers, got ${raw.length}`);
  }
  const layers: LayerInfo[] = [];
  raw.forEach((entry, i) => {
    const layer = take(entry, LAYER_FIELDS, `plan.layout[${i}]`);
    const moduleType = layer.module_type as string;
    if (!MODULE_TYPES.includes(moduleType)) {
      throw new ProtocolError(`plan.layout[${i}].module_type: expected one of ${pyTuple(MODULE_TYPES)}`);
    }
    const dIn = inRange(layer.d_in as bigint, 1, 2 ** 20, `plan.layout[${i}].d_in`);
    const dOut = inRange(layer.d_out as bigint, 1, 2 ** 20, `plan.layout[${i}].d_out`);
    const geometry: Record<string, [number, number]> = {};
    for (const [key, prop, low, fallback] of GEOMETRY) {
      const pair = intPair(layer[key] as JsonValue[], low, `plan.layout[${i}].${key}`);
      if (moduleType !== "conv2d" && (pair[0] !== fallback[0] || pair[1] !== fallback[1])) {
        throw new ProtocolError(`plan.layout[${i}].${key}: a ${moduleType} layer has no geometry; expected [${fallback.join(", ")}]`);
      }
      geometry[prop] = pair;
    }
    const [kh, kw] = geometry.kernelSize!;
    if (dIn % (kh * kw)) {
      throw new ProtocolError(`plan.layout[${i}].d_in: a conv2d layer's d_in = in_channels * kh * kw must be a `
        + `multiple of ${kh * kw}, got ${dIn}`);
    }
    layers.push({
      name: layer.name as string, dIn, dOut, moduleType: moduleType as ModuleType, hasBias: layer.has_bias as boolean,
      kernelSize: geometry.kernelSize!, stride: geometry.stride!, padding: geometry.padding!, dilation: geometry.dilation!,
    });
  });
  if (new Set(layers.map((layer) => layer.name)).size !== layers.length) {
    throw new ProtocolError("plan.layout: duplicate layer names");
  }
  return layers;
}

/** `_int_pair`: two integers in `[low, 1024]`. */
function intPair(raw: JsonValue[], low: number, where: string): [number, number] {
  if (raw.length !== 2) throw new ProtocolError(`${where}: expected two integers, got ${reprCut(raw, 80)}`);
  for (const value of raw) {
    checkType(value, "int", where);
    inRange(value as bigint, low, 2 ** 10, where);
  }
  return [asInt(raw[0]), asInt(raw[1])];
}

/** `_task`: typed fields, a well-formed name and a known partitioner, then TaskConfig's checks. */
function readTask(raw: JsonObject, knownTasks: readonly string[]): TaskConfig {
  const table: Record<string, "str" | "int" | "float"> = {};
  for (const [wire, kind] of TASK_FIELDS) table[wire] = kind;
  const obj = take(raw, table, "plan.task");
  if (!isTaskName(obj.name) || !PARTITIONERS.includes(obj.partitioner as string)) {
    throw new ProtocolError(`plan.task: malformed task name ${reprCut(obj.name, 40)} or unknown partitioner`);
  }
  const task: Record<string, string | number> = {};
  for (const [wire, kind, prop] of TASK_FIELDS) {
    task[prop] = kind === "str" ? (obj[wire] as string) : kind === "int" ? asInt(obj[wire]) : asFloat(obj[wire]);
  }
  return validated(() => taskConfig(task as unknown as TaskConfig, knownTasks), "plan.task");
}

/** `_node_specs`: 1 to 64 selectors, each a typed, bounded, checked adapter spec. */
function readNodeSpecs(raw: JsonValue | undefined, where: string): Map<string, AdapterSpec> {
  const count = raw !== null && typeof raw === "object" && !Array.isArray(raw) ? Object.keys(raw).length : 0;
  if (!(count >= 1 && count <= 64)) throw new ProtocolError(`${where}: expected 1 to 64 layer selectors`);
  const specs = new Map<string, AdapterSpec>();
  for (const [selector, value] of Object.entries(raw as JsonObject)) {
    const spec = take(value, SPEC_FIELDS, `${where}.${pyPrefix(selector, 40)}`);
    if (!isKnownKind(spec.kind) || !ACTIVATIONS.includes(spec.activation as string)) {
      throw new ProtocolError(`${where}: adapter kind ${reprCut(spec.kind, 40)} is not installed on this node, or `
        + "unknown activation");
    }
    const options = spec.options as JsonObject;
    checkOptions(options, where);
    for (const size of ["rank", "hidden", "growth"]) inRange(spec[size] as bigint, 1, 2 ** 20, `${where}.${size}`);
    inRange(spec.depth as bigint, 1, 16, `${where}.depth`);
    specs.set(selector, validated(() => adapterSpec({
      kind: spec.kind as string, rank: asInt(spec.rank), bias: spec.bias as boolean, hidden: asInt(spec.hidden),
      depth: asInt(spec.depth), growth: asInt(spec.growth), activation: spec.activation as string,
      options: Object.entries(options) as unknown as [string, OptionValue][],
    }), where));
  }
  return specs;
}

/** `_check_options`: at most 16 names of 1 to 32 characters, strings of at most 64 (the
 * values' types are the spec's to check). */
function checkOptions(options: JsonObject, where: string): void {
  const entries = Object.entries(options);
  if (entries.length > 16 || !entries.every(([k, v]) => pyLen(k) >= 1 && pyLen(k) <= 32
    && !(typeof v === "string" && pyLen(v) > 64))) {
    throw new ProtocolError(`${where}.options: expected at most 16 names of at most 32 characters, each a number, `
      + "a boolean or a string of at most 64");
  }
}

/** `_optimizer`: typed fields, a known name, two betas, then OptimizerSpec's checks. */
function readOptimizer(raw: JsonObject): OptimizerSpec {
  const obj = take(raw, OPTIMIZER_FIELDS, "plan.optimizer");
  if (!OPTIMIZERS.includes(obj.name as string)) {
    throw new ProtocolError(`plan.optimizer.name: expected one of ${pyTuple(OPTIMIZERS)}`);
  }
  const betas = obj.betas as JsonValue[];
  if (betas.length !== 2) throw new ProtocolError("plan.optimizer.betas: expected two numbers");
  for (const beta of betas) checkType(beta, "float", "plan.optimizer.betas");
  const maxGradNorm = obj.max_grad_norm;
  return validated(() => optimizerSpec({
    name: obj.name as string, lr: asFloat(obj.lr), weightDecay: asFloat(obj.weight_decay),
    betas: [asFloat(betas[0]), asFloat(betas[1])], eps: asFloat(obj.eps), momentum: asFloat(obj.momentum),
    nesterov: obj.nesterov as boolean, warmupSteps: asInt(obj.warmup_steps),
    totalSteps: obj.total_steps === null ? null : asInt(obj.total_steps),
    // Python keeps an int given here as an int; its value is the same number
    maxGradNorm: maxGradNorm === null ? null : asFloat(maxGradNorm),
  }), "plan.optimizer");
}

/** `_hashes`: at most `most` entries, each a SHA-256 hex digest. */
function readHashes(raw: JsonObject, where: string, most: number): Map<string, string> {
  const entries = Object.entries(raw);
  if (entries.length > most) throw new ProtocolError(`${where}: more than ${most} entries`);
  for (const [name, digest] of entries) {
    if (!(typeof digest === "string" && isLowerHex(digest, 64))) {
      throw new ProtocolError(`${where}[${pyPrefix(name, 60)}]: expected a SHA-256 hex digest`);
    }
  }
  return new Map(entries as [string, string][]);
}

/** `_file_hashes`: only the task files a node knows, each with its hash. */
function readFileHashes(raw: JsonObject): Map<string, string> {
  const unknown = Object.keys(raw).filter((name) => !TASK_FILES.includes(name));
  if (unknown.length) {
    throw new ProtocolError(`plan.files: unknown task file(s) ${pyPrefix(sortedRepr(unknown), 80)}; expected some of `
      + pyTuple(TASK_FILES));
  }
  return readHashes(raw, "plan.files", TASK_FILES.length);
}
