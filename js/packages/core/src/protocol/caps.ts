/**
 * Bounds a node puts on what the server asks of it (`NodeCaps` of
 * `cola_fed/federation/protocol.py`). They come from node config, never from the wire.
 */

import { ConfigError, ProtocolError } from "../errors.js";
import { assignSpecs } from "../learner/assign.js";
import { stateShapes } from "../learner/families.js";
import { pythonFloatRepr } from "../json/python-json.js";
import type { NodeConfig } from "../node/config.js";
import { Limits } from "../wire/codec.js";
import { layoutIndex } from "../wire/layout.js";
import { hiddenSizesExact, type AdapterSpec } from "./adapter-spec.js";
import type { Plan } from "./plan.js";

/** The caps, by node config key, and whether each is an int or a float. */
const CAPS = [
  ["max-interval", "maxInterval", "int", 16], ["max-batch-size", "maxBatchSize", "int", 1024],
  ["max-length", "maxLength", "int", 4096], ["max-eval-batches", "maxEvalBatches", "int", 64],
  ["max-layers", "maxLayers", "int", 1024], ["max-width", "maxWidth", "int", 16384],
  ["max-payload-mb", "maxPayloadMb", "float", 1024.0],
] as const;

type CapName = (typeof CAPS)[number][1];

/**
 * Most batches per step (`max-interval`), samples per batch (`max-batch-size`), tokens per
 * sample (`max-length`), held-out batches (`max-eval-batches`), adapted layers (`max-layers`),
 * widest layer or adapter (`max-width`), and the largest sealed payload in MB
 * (`max-payload-mb`). Integer caps are numbers (a huge one is rounded; only comparisons with
 * values below 2^53 use it).
 */
export class NodeCaps {
  readonly maxInterval: number = 16;
  readonly maxBatchSize: number = 1024;
  readonly maxLength: number = 4096;
  readonly maxEvalBatches: number = 64;
  readonly maxLayers: number = 1024;
  readonly maxWidth: number = 16384;
  readonly maxPayloadMb: number = 1024.0;

  constructor(init: Partial<Record<CapName, number>> = {}) {
    Object.assign(this, init);
  }

  /** The node config keys, one per cap. */
  static keys(): string[] {
    return CAPS.map(([key]) => key);
  }

  /**
   * The caps of a node config (`NodeCaps.from_node_config`): each key that is there must be a
   * positive int (a bigint: Flower's config ints), or for `max-payload-mb` a positive int or
   * float. Throws ConfigError naming the key. Also refuses a non-finite `max-payload-mb`, which
   * Python accepts and fails on later with a ValueError.
   */
  static fromNodeConfig(config: NodeConfig | ReadonlyMap<string, unknown>): NodeCaps {
    const get = (key: string): unknown => (config instanceof Map ? config.get(key) : (config as NodeConfig)[key]);
    const has = (key: string): boolean => (config instanceof Map ? config.has(key) : Object.hasOwn(config, key));
    const values: Partial<Record<CapName, number>> = {};
    for (const [key, name, wanted] of CAPS) {
      if (!has(key)) continue;
      const value = get(key);
      const numeric = typeof value === "bigint" || typeof value === "number";
      const positive = numeric && (value as number | bigint) > 0;
      const finite = typeof value !== "number" || Number.isFinite(value);
      if (!numeric || !positive || !finite || (wanted === "int" && typeof value !== "bigint")) {
        throw new ConfigError(`node config ${key}: expected a positive ${wanted}, got ${describe(value)}`);
      }
      values[name] = Number(value);
    }
    return new NodeCaps(values);
  }

  /** `max_payload_bytes`: `int(max_payload_mb * 1e6)`. */
  get maxPayloadBytes(): number {
    return Math.trunc(this.maxPayloadMb * 1e6);
  }

  /**
   * Refuse (ProtocolError, naming the cap) a plan that asks for more than this node, with this
   * partition, allows: interval, batch size, length, held-out batches, layers, widest layer,
   * adapter rank and hidden sizes, then the adapters' total size against `max-payload-mb`. A
   * plan whose selectors pick no layer is a ConfigError (from `assignSpecs`), as in Python.
   */
  check(plan: Plan, partitionId: number): void {
    const task = plan.task;
    const asks: [string, string, bigint, number][] = [
      ["max-interval", "data.interval", BigInt(plan.interval), this.maxInterval],
      ["max-batch-size", "task.batch-size", BigInt(task.batchSize), this.maxBatchSize],
      ["max-length", "task.max-length", BigInt(task.maxLength), this.maxLength],
      ["max-eval-batches", "task.eval-batches", BigInt(task.evalBatches), this.maxEvalBatches],
      ["max-layers", "adapted layers", BigInt(plan.layout.length), this.maxLayers],
      ["max-width", "the widest adapted layer",
        BigInt(Math.max(...plan.layout.map((layer) => Math.max(layer.dIn, layer.dOut)))), this.maxWidth],
    ];
    for (const spec of plan.specsFor(partitionId).values()) {
      const widths = [BigInt(spec.rank), ...hiddenSizesExact(spec)];
      asks.push(["max-width", "adapter.rank / adapter.hidden", widths.reduce((a, b) => (b > a ? b : a)), this.maxWidth]);
    }
    for (const [key, what, asked, cap] of asks) {
      if (asked > cap) {
        throw new ProtocolError(`the server asks for ${what} = ${asked}, above this node's ${key} = ${capRepr(key, cap)}; `
          + `refused (raise ${key} in the node config if the run is legitimate)`);
      }
    }
    // the adapters travel in every reply: their total bounds the learner the node builds
    const adapterBytes = stateBytes(plan, plan.specsFor(partitionId));
    if (adapterBytes > this.maxPayloadBytes) {
      throw new ProtocolError(`the plan's adapters take ${(Number(adapterBytes) / 1e6).toFixed(1)} MB, above this node's `
        + `max-payload-mb = ${capRepr("max-payload-mb", this.maxPayloadMb)}; refused`);
    }
  }

  /** Decoding limits of a payload from the server under this plan (`NodeCaps.limits`): this
   * node's payload cap, and rows up to the plan's most, or the widest weight-space or
   * parameter-gradient form of any kind of node's adapters. */
  limits(plan: Plan): Limits {
    let widest = Math.max(...plan.layout.map((layer) => layer.dOut));
    const index = layoutIndex(plan.layout);
    for (const specs of plan.allSpecs()) {
      for (const shapes of stateShapes(index, assignSpecs(plan.layout, specs)).values()) {
        for (const shape of shapes.values()) if (shape.length) widest = Math.max(widest, shape[0]!);
      }
    }
    return new Limits({ maxBytes: this.maxPayloadBytes, maxRows: Math.max(plan.maxRows, widest) });
  }
}

/** Bytes of the float32 adapter state of these specs on the plan's layout (`state_nbytes`),
 * exact. */
export function stateBytes(plan: Plan, specs: ReadonlyMap<string, AdapterSpec>): bigint {
  let total = 0n;
  const shapes = stateShapes(layoutIndex(plan.layout), assignSpecs(plan.layout, specs));
  for (const params of shapes.values()) {
    for (const shape of params.values()) total += 4n * shape.reduce((n, d) => n * BigInt(d), 1n);
  }
  return total;
}

function capRepr(key: string, cap: number): string {
  return key === "max-payload-mb" && Number.isInteger(cap) ? pythonFloatRepr(cap) : String(cap);
}

function describe(value: unknown): string {
  if (typeof value === "string") return `'${value}'`;
  if (typeof value === "boolean") return value ? "True" : "False";
  return String(value);
}
