/**
 * Adaptation data: what the server sends a node for one batch (port of `cola_fed/gl/data.py`).
 *
 * Per adapted layer, the rows `x` that entered the layer and the gradient `d = dL/dh` at its
 * output; layers that read the same input share one `x` and name the rows of it they use
 * (`rows`, or null for every row in order). A convolution's `x` and `d` stay compact, 4-D.
 * A layer may instead carry its weight-space gradient (`weightGrads`: `G [dOut, dIn]` and
 * `gBias [dOut]`), or the gradient of the node's own adapter parameters (`paramGrads`, computed
 * at the adapter whose digest `paramAt` names).
 */

import type { NdArray } from "../tensor.js";
import { numel } from "../tensor.js";

/** One client's adaptation data for one batch (`AdaptationData`); Maps keep Python's order. */
export interface AdaptationData {
  /** Shared input rows, keyed by the first layer (in model order) that reads them. */
  inputs: Map<string, NdArray<"float32">>;
  /** Per layer carried as rows, the adaptation gradient rows `d`. */
  grads: Map<string, NdArray<"float32">>;
  /** Per layer, the key of its rows in `inputs`. */
  inputOf: Map<string, string>;
  /** Per layer, indices into its shared `x` matching the rows of `d`, or null for all rows. */
  rows: Map<string, NdArray<"int64"> | null>;
  /** The client's mean loss on this batch; NaN when not computed. */
  loss: number;
  /** Number of samples of the client's batch. */
  numSamples: number;
  /** Per layer in weight-space form, `[G [dOut, dIn], gBias [dOut]]`. */
  weightGrads: Map<string, [NdArray<"float32">, NdArray<"float32">]>;
  /** Per layer in parameter-gradient form, `{param: gradient}`. */
  paramGrads: Map<string, Map<string, NdArray<"float32">>>;
  /** Per layer in `paramGrads`, the digest of the adapter parameters it was computed at. */
  paramAt: Map<string, string>;
}

/** Empty adaptation data (Python's dataclass defaults: loss NaN, no samples). */
export function emptyAdaptation(): AdaptationData {
  return {
    inputs: new Map(), grads: new Map(), inputOf: new Map(), rows: new Map(), loss: Number.NaN,
    numSamples: 0, weightGrads: new Map(), paramGrads: new Map(), paramAt: new Map(),
  };
}

/** Every layer the data carries, in any form (`layer_names`). */
export function layerNames(data: AdaptationData): string[] {
  return [...data.grads.keys(), ...data.weightGrads.keys(), ...data.paramGrads.keys()];
}

/** The layers carried as rows `(x, d)` (`row_layers`). */
export function rowLayers(data: AdaptationData): string[] {
  return [...data.grads.keys()];
}

/** `[x, d]` of one row layer, with the shared input rows gathered (`layer`). */
export function layerRows(data: AdaptationData, name: string): [NdArray<"float32">, NdArray<"float32">] {
  const x = data.inputs.get(data.inputOf.get(name) ?? "");
  const d = data.grads.get(name);
  if (x === undefined || d === undefined) throw new RangeError(`layer '${name}' is not carried as rows`);
  const rows = data.rows.get(name);
  if (rows === null || rows === undefined) return [x, d];
  const width = numel(x.shape.slice(1));
  const out = new Float32Array(rows.data.length * width);
  rows.data.forEach((row, i) => out.set(x.data.subarray(Number(row) * width, (Number(row) + 1) * width), i * width));
  return [{ dtype: "float32", shape: [rows.data.length, ...x.shape.slice(1)], data: out }, d];
}

/** Floats carried, whatever the arrays' rank (`num_values`). */
export function numValues(data: AdaptationData): number {
  let total = 0;
  for (const a of data.inputs.values()) total += numel(a.shape);
  for (const a of data.grads.values()) total += numel(a.shape);
  for (const [g, b] of data.weightGrads.values()) total += numel(g.shape) + numel(b.shape);
  for (const grads of data.paramGrads.values()) for (const a of grads.values()) total += numel(a.shape);
  return total;
}

/** Rows of `d` of one layer (samples, for a convolution); `num_rows`. */
export function numRows(data: AdaptationData, name: string): number {
  const d = data.grads.get(name);
  if (d === undefined) throw new RangeError(`layer '${name}' is not carried as rows`);
  return d.shape[0] as number;
}
