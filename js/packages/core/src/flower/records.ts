/**
 * Flower's records as plain TypeScript values: the content of a message.
 *
 * The types follow Flower 1.42's `RecordDict` (`flwr.app`): named `ConfigRecord`s of scalar or
 * list values, `ArrayRecord`s of serialised arrays and `MetricRecord`s. Integers are `bigint`
 * (Flower sends them as sint64), floats are `number` (double), so that a value read and sent
 * back keeps its protobuf type.
 */

export type ConfigScalar = bigint | number | boolean | string | Uint8Array;
export type ConfigValue = ConfigScalar | bigint[] | number[] | boolean[] | string[] | Uint8Array[];
export type ConfigRecord = Map<string, ConfigValue>;

export type MetricValue = bigint | number | bigint[] | number[];
export type MetricRecord = Map<string, MetricValue>;

/** One serialised array of an `ArrayRecord` (Flower's `Array`): its bytes as Flower keeps them
 * (for `stype` "numpy.ndarray", a `.npy` file's bytes). */
export interface FlowerArray {
  dtype: string;
  shape: number[];
  stype: string;
  data: Uint8Array;
}
export type ArrayRecord = Map<string, FlowerArray>;

/** A message's content: records by name, of three kinds (names are unique across kinds). */
export interface RecordDict {
  configs: Map<string, ConfigRecord>;
  arrays: Map<string, ArrayRecord>;
  metrics: Map<string, MetricRecord>;
}

/** An empty `RecordDict`. */
export function recordDict(parts: Partial<RecordDict> = {}): RecordDict {
  return {
    configs: parts.configs ?? new Map(),
    arrays: parts.arrays ?? new Map(),
    metrics: parts.metrics ?? new Map(),
  };
}
