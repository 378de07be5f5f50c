/**
 * The optimizer's per-step numbers (`cola_fed.gl.optim_spec.OptimizerSpec`): slot names, the
 * warmup + linear-decay learning rate, the scalar hyper-parameters a train-step graph takes and
 * the clipping coefficient. Computed in float64 with the same operations in the same order as
 * Python, so the float32 graph inputs they round to are bit-equal.
 */

import { ConfigError } from "../errors.js";
import type { OptimizerSpecLike } from "./types.js";

/** The scalar hyper-parameters of one step, in the order train-step graphs take them. */
export const HYPER_PARAMETERS = ["lr", "step", "beta1", "beta2", "eps", "weight_decay", "momentum"] as const;

/** One step's hyper-parameters, keyed as the graphs name their inputs. */
export type Hyper = Record<(typeof HYPER_PARAMETERS)[number], number>;

/**
 * Optimizer state per parameter: AdamW's two moments, or SGD's momentum buffer (kept even at
 * momentum 0, so a state has one shape whatever the momentum).
 */
export function slotNames(optimizer: string): readonly string[] {
  return optimizer === "adamw" ? ["exp_avg", "exp_avg_sq"] : ["momentum_buffer"];
}

/** Refuse an optimizer this learner has no graphs for (the protocol validated the rest). */
export function checkOptimizer(spec: OptimizerSpecLike): void {
  if (spec.name !== "adamw" && spec.name !== "sgd") {
    throw new ConfigError(`optimizer.name: expected one of adamw, sgd, got ${JSON.stringify(spec.name)}`);
  }
  if (!Number.isSafeInteger(spec.warmupSteps) || spec.warmupSteps < 0) {
    throw new ConfigError(`optimizer.warmup-steps: expected an integer >= 0, got ${spec.warmupSteps}`);
  }
}

/** Learning rate of the `step`-th optimizer step (1-based), as `OptimizerSpec.lr_at`. */
export function lrAt(spec: OptimizerSpecLike, step: number): number {
  const done = step - 1;
  if (done < spec.warmupSteps) return (spec.lr * done) / spec.warmupSteps;
  if (spec.totalSteps === null || spec.totalSteps === undefined) return spec.lr;
  const remaining = (spec.totalSteps - done) / (spec.totalSteps - spec.warmupSteps);
  return spec.lr * (remaining > 0.0 ? remaining : 0.0); // Python's max(0.0, remaining)
}

/** The hyper-parameters of the `step`-th step (1-based), as `OptimizerSpec.hyper`. */
export function hyperAt(spec: OptimizerSpecLike, step: number): Hyper {
  return {
    lr: lrAt(spec, step),
    step,
    beta1: spec.betas[0]!,
    beta2: spec.betas[1]!,
    eps: spec.eps,
    weight_decay: spec.weightDecay,
    momentum: spec.momentum,
  };
}

/**
 * `torch.nn.utils.clip_grad_norm_`'s scale for a global gradient norm:
 * `min(1, max_grad_norm / (norm + 1e-6))`, or 1 without clipping.
 */
export function clipCoefficient(spec: OptimizerSpecLike, gradNorm: number): number {
  if (spec.maxGradNorm === null || spec.maxGradNorm === undefined) return 1.0;
  const scale = spec.maxGradNorm / (gradNorm + 1e-6);
  return scale < 1.0 ? scale : 1.0; // Python's min(1.0, scale), NaN included

}
