/**
 * The numeric tasks on a node's own CSV: `digits` (64 pixels in [0, 1], an 8x8 image
 * flattened) and `mnist` (784 pixels in [0, 1], reshaped to `[1, 28, 28]`), labels 0-9. Ports
 * of `DigitsTask` / `MnistTask` with a data path: the batches hold `x` (float32) and `labels`
 * (int64), exactly the arrays the Python node builds from the same file.
 */

import type { NdArray } from "../tensor.js";
import { type Batch, type ClientData, type SplitConfig, splitClientData, takeRows } from "./client-data.js";
import { readFeatureCsv } from "./features.js";

/** Shape of one numeric task: features per sample, the sample shape `x` takes, classes. */
export interface NumericTaskSpec {
  name: string;
  features: number;
  sampleShape: readonly number[];
  classes: number;
}

/** `digits`: scikit-learn's 8x8 digits, flattened. */
export const DIGITS: NumericTaskSpec = { name: "digits", features: 64, sampleShape: [64], classes: 10 };
/** `mnist`: 28x28 digits, one channel. */
export const MNIST: NumericTaskSpec = { name: "mnist", features: 784, sampleShape: [1, 28, 28], classes: 10 };

/**
 * The node's data for a numeric task: its own CSV (`dataText`) read, checked and split as
 * `Task.client_data(0, 1)` does. `what` names the file in errors (Python: `task.data-path <path>`).
 */
export function numericClientData(spec: NumericTaskSpec, dataText: string, config: SplitConfig,
  what: string): ClientData {
  const table = readFeatureCsv(dataText, { features: spec.features, low: 0, high: 1,
    classes: spec.classes, what });
  const x: NdArray<"float32"> = { dtype: "float32", shape: [table.rows, ...spec.sampleShape],
    data: table.features };
  const labels: NdArray<"int64"> = { dtype: "int64", shape: [table.rows], data: table.labels };
  const encode = (rows: Int32Array): Batch =>
    new Map<string, NdArray>([["x", takeRows(x, rows)], ["labels", takeRows(labels, rows)]]);
  return splitClientData(table.rows, encode, config);
}
