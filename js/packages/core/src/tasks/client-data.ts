/**
 * One node's data, as `cola_fed/tasks/base.py` builds it for a node with its own `data-path`:
 * the training arrays it draws batches from, its held-out batches, and the endless, seeded,
 * reshuffled batch stream (numpy's permutation, bit for bit: {@link NumpyGenerator}).
 */

import { ConfigError } from "../errors.js";
import { NumpyGenerator } from "../random/numpy.js";
import type { DType, DTypeArrays, NdArray } from "../tensor.js";

/** A batch or a set of column arrays: key -> array whose first axis is the sample. */
export type Batch = Map<string, NdArray>;

/** The task settings the node side reads (the plan's task, camelCase). */
export interface SplitConfig {
  batchSize: number;
  evalBatches: number;
  serverTestSize: number;
  seed: number;
}

/** The rows `rows` (first axis) of `array`, in that order: numpy's `array[rows]`. */
export function takeRows<D extends DType>(array: NdArray<D>, rows: ArrayLike<number>): NdArray<D> {
  const [count, ...rest] = array.shape;
  if (count === undefined) throw new RangeError("takeRows: a 0-d array has no rows");
  const width = rest.reduce((a, b) => a * b, 1);
  const source = array.data;
  const Ctor = source.constructor as new (length: number) => DTypeArrays[D];
  const out = new Ctor(rows.length * width);
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i]!;
    if (!(row >= 0 && row < count)) throw new RangeError(`takeRows: row ${row} outside [0, ${count})`);
    (out as { set(a: ArrayLike<number | bigint>, offset: number): void }).set(
      source.subarray(row * width, (row + 1) * width) as ArrayLike<number | bigint>, i * width);
  }
  return { dtype: array.dtype, shape: [rows.length, ...rest], data: out };
}

/** Rows `[start, stop)` of `array` (a copy): numpy's `array[start:stop]`. */
export function sliceRows<D extends DType>(array: NdArray<D>, start: number, stop: number): NdArray<D> {
  const count = array.shape[0] ?? 0;
  const lo = Math.min(Math.max(start, 0), count);
  const hi = Math.min(Math.max(stop, lo), count);
  const rows = new Int32Array(hi - lo);
  for (let i = 0; i < rows.length; i++) rows[i] = lo + i;
  return takeRows(array, rows);
}

function mapBatch(batch: Batch, f: (a: NdArray) => NdArray): Batch {
  const out: Batch = new Map();
  for (const [key, value] of batch) out.set(key, f(value));
  return out;
}

/** One node's data: training arrays (batches are drawn from them) and held-out batches. */
export class ClientData {
  /** The training samples, key -> array (first axis: the sample). */
  readonly train: Batch;
  /** The held-out batches, sent once for personalised evaluation. */
  readonly evalBatches: Batch[];

  /** Wrap `train` (every array the same number of rows) and the held-out batches. */
  constructor(train: Batch, evalBatches: Batch[]) {
    this.train = train;
    this.evalBatches = evalBatches;
  }

  /** Training samples: the rows of the first training array (as Python's `num_examples`). */
  get numExamples(): number {
    const first = this.train.values().next();
    return first.done ? 0 : (first.value.shape[0] ?? 0);
  }

  /**
   * Endless fixed-size batches, reshuffled every epoch with `default_rng(seed).permutation`:
   * the same stream as Python's `ClientData.batches(batch_size, seed)`.
   */
  *batches(batchSize: number, seed: number | bigint): Generator<Batch, never> {
    const rng = NumpyGenerator.fromSeed(seed);
    const n = this.numExamples;
    if (n < batchSize) {
      throw new RangeError(`the partition has ${n} samples, fewer than one batch (${batchSize})`);
    }
    for (;;) {
      const order = rng.permutation(n);
      for (let lo = 0; lo + batchSize <= n; lo += batchSize) {
        const idx = order.subarray(lo, lo + batchSize);
        yield mapBatch(this.train, (array) => takeRows(array, idx));
      }
    }
  }
}

/**
 * The rows a node with its own data uses, in order (`Task.client_data(0, 1)`): the rows left
 * after the server-held test set (`task.server-test-size`, a seeded permutation), in a seeded
 * order. Throws {@link ConfigError} as Python does when no rows are left.
 */
export function ownDataRows(total: number, config: SplitConfig): Int32Array {
  const size = config.serverTestSize;
  if (size >= total) {
    throw new ConfigError(`task.server-test-size ${size} leaves no data for the nodes`);
  }
  let pool: Int32Array;
  if (size === 0) {
    pool = new Int32Array(total);
    for (let i = 0; i < total; i++) pool[i] = i;
  } else {
    pool = NumpyGenerator.fromSeed(config.seed).permutation(total).slice(size).sort();
  }
  const order = NumpyGenerator.fromSeed(config.seed).permutation(pool.length);
  const rows = new Int32Array(pool.length);
  for (let i = 0; i < rows.length; i++) rows[i] = pool[order[i]!]!;
  return rows;
}

/**
 * `Task.client_data(0, 1)`: `encode` the node's rows ({@link ownDataRows}), hold out the
 * first `eval-batches` batches, train on the rest.
 */
export function splitClientData(total: number, encode: (rows: Int32Array) => Batch,
  config: SplitConfig): ClientData {
  const rows = ownDataRows(total, config);
  const size = config.batchSize;
  const heldOut = config.evalBatches * size;
  if (rows.length < heldOut + size) {
    throw new ConfigError(`partition 0 has ${rows.length} samples, too few for ` +
      `${config.evalBatches} evaluation batches plus one training batch`);
  }
  const encoded = encode(rows);
  const train = mapBatch(encoded, (a) => sliceRows(a, heldOut, a.shape[0] ?? 0));
  const evals: Batch[] = [];
  for (let lo = 0; lo < heldOut; lo += size) evals.push(mapBatch(encoded, (a) => sliceRows(a, lo, lo + size)));
  return new ClientData(train, evals);
}
