/**
 * The shapes the learner consumes from its neighbours, declared structurally so that the
 * protocol's `AdapterSpec` / `OptimizerSpec` classes satisfy them without this module importing
 * theirs. Layers and adaptation data are the wire's own types (`wire/layout.ts`,
 * `wire/adaptation.ts`).
 */

import type { NdArray } from "../tensor.js";

/** The auxiliary model of a layer (`cola_fed.adapters.spec.AdapterSpec`), as validated there. */
export interface AdapterSpecLike {
  readonly kind: string;
  readonly rank: number;
  readonly bias: boolean;
  readonly hidden: number;
  readonly depth: number;
  readonly growth: number;
  readonly activation: string;
}

/** Optimizer, schedule and clipping (`cola_fed.gl.optim_spec.OptimizerSpec`), as validated there. */
export interface OptimizerSpecLike {
  /** "adamw" | "sgd" */
  readonly name: string;
  readonly lr: number;
  readonly weightDecay: number;
  readonly betas: readonly [number, number] | readonly number[];
  readonly eps: number;
  readonly momentum: number;
  readonly nesterov: boolean;
  readonly warmupSteps: number;
  /** null (or undefined): keep `lr` after warmup */
  readonly totalSteps: number | null | undefined;
  /** null (or undefined): no clipping */
  readonly maxGradNorm: number | null | undefined;
}

/** `{layer: {param: float32 array}}`: the only thing a client returns. */
export type AdapterStateMap = Map<string, Map<string, NdArray<"float32">>>;

/** `{layer: {param: {slot: float32 array}}}`: optimizer state. */
export type SlotStateMap = Map<string, Map<string, Map<string, NdArray<"float32">>>>;

/** Parameter name -> shape, in the family's order. */
export type Shapes = Map<string, readonly number[]>;

