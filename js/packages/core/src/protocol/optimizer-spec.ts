/**
 * How a node's adapters are optimised (`cola_fed/gl/optim_spec.py` `OptimizerSpec`), with every
 * check its constructor makes. The learner's per-step numbers (`learner/optimizer.ts`) read
 * this shape.
 */

import { ConfigError } from "../errors.js";
import { pythonFloatRepr } from "../json/python-json.js";
import { OPTIMIZERS } from "./constants.js";

/** Optimizer, schedule and clipping of a node's adapters. */
export interface OptimizerSpec {
  /** "adamw" or "sgd" */
  readonly name: string;
  readonly lr: number;
  readonly weightDecay: number;
  readonly betas: readonly [number, number];
  readonly eps: number;
  readonly momentum: number;
  readonly nesterov: boolean;
  readonly warmupSteps: number;
  /** null: keep `lr` after warmup */
  readonly totalSteps: number | null;
  /** null: no clipping */
  readonly maxGradNorm: number | null;
}

/**
 * A checked spec (`OptimizerSpec.__post_init__`), Python's defaults for what is left out.
 * Throws ConfigError naming the key.
 */
export function optimizerSpec(init: Partial<OptimizerSpec> = {}): OptimizerSpec {
  const spec: OptimizerSpec = {
    name: init.name ?? "adamw", lr: init.lr ?? 1e-3, weightDecay: init.weightDecay ?? 0.0,
    betas: init.betas ?? [0.9, 0.999], eps: init.eps ?? 1e-8, momentum: init.momentum ?? 0.0,
    nesterov: init.nesterov ?? false, warmupSteps: init.warmupSteps ?? 0,
    totalSteps: init.totalSteps ?? null, maxGradNorm: init.maxGradNorm ?? null,
  };
  if (!OPTIMIZERS.includes(spec.name)) {
    throw new ConfigError(`optimizer.name: expected one of ${OPTIMIZERS.join(", ")}, got '${spec.name}'`);
  }
  checkRange("optimizer.lr", spec.lr, 0.0, null);
  checkRange("optimizer.weight-decay", spec.weightDecay, 0.0, null);
  checkRange("optimizer.eps", spec.eps, 0.0, null);
  checkRange("optimizer.momentum", spec.momentum, 0.0, 1.0);
  if (spec.betas.length !== 2) throw new ConfigError(`optimizer.betas: expected two values, got ${spec.betas.length}`);
  for (const beta of spec.betas) checkRange("optimizer.betas", beta, 0.0, 1.0, { upperOpen: true });
  if (spec.nesterov && spec.momentum === 0) {
    throw new ConfigError("optimizer.nesterov: Nesterov momentum needs optimizer.momentum > 0");
  }
  if (!Number.isSafeInteger(spec.warmupSteps) || spec.warmupSteps < 0) {
    throw new ConfigError(`optimizer.warmup-steps: expected an integer >= 0, got ${spec.warmupSteps}`);
  }
  if (spec.totalSteps !== null && (!Number.isSafeInteger(spec.totalSteps) || spec.totalSteps <= spec.warmupSteps)) {
    throw new ConfigError(`optimizer.total-steps: expected an integer above warmup-steps (${spec.warmupSteps}), `
      + `got ${spec.totalSteps}`);
  }
  if (spec.maxGradNorm !== null) checkRange("optimizer.max-grad-norm", spec.maxGradNorm, 0.0, null, { lowerOpen: true });
  return spec;
}

/** `_check_range`: a number (not NaN) in the interval, else ConfigError naming it. */
function checkRange(key: string, value: number, low: number, high: number | null,
  { lowerOpen = false, upperOpen = false } = {}): void {
  let ok = typeof value === "number" && !Number.isNaN(value);
  if (ok) {
    ok = (lowerOpen ? value > low : value >= low) && (high === null || (upperOpen ? value < high : value <= high));
  }
  if (!ok) {
    let bounds = `${lowerOpen ? "(" : "["}${pythonFloatRepr(low)}, ${high !== null ? pythonFloatRepr(high) : "inf"}`;
    bounds += upperOpen || high === null ? ")" : "]";
    throw new ConfigError(`${key}: expected a number in ${bounds}, got ${value}`);
  }
}

/** `OptimizerSpec.to_dict()`, as the plan's JSON carries it (ints as bigint, floats as numbers). */
export function optimizerSpecToDict(spec: OptimizerSpec): Record<string, string | number | bigint | boolean | number[] | null> {
  return {
    name: spec.name, lr: spec.lr, weight_decay: spec.weightDecay, betas: [...spec.betas], eps: spec.eps,
    momentum: spec.momentum, nesterov: spec.nesterov, warmup_steps: BigInt(spec.warmupSteps),
    total_steps: spec.totalSteps === null ? null : BigInt(spec.totalSteps), max_grad_norm: spec.maxGradNorm,
  };
}
