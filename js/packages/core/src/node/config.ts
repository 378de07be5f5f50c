/**
 * The node config keys a cola-fed node reads, and their checks: the same keys and meanings as
 * the Python node (`cola_fed/federation/client.py`). Node config is local: nothing here ever
 * comes from the wire.
 */
import { ConfigError } from "../errors.js";

/** A node config value: Flower's `UserConfigValue` (an int is a bigint, a float a number). */
export type NodeConfigValue = string | number | boolean | bigint;
/** A flat node config, as `flower-supernode --node-config` gives it. */
export type NodeConfig = Readonly<Record<string, NodeConfigValue>>;

/** The caps a node puts on what a server may ask (`NodeCaps` in the Python protocol). */
export const CAP_KEYS = [
  "max-interval", "max-batch-size", "max-length", "max-eval-batches", "max-layers", "max-width",
  "max-payload-mb",
] as const;

/** Every node config key cola-fed reads (others may belong to other apps of the node). */
export const NODE_CONFIG_KEYS: readonly string[] = [
  "partition-id", "num-partitions", "data-path", "server-key-fingerprint", "federation",
  "known-servers", "backend", "graph-cache", "onnx-threads", "state-dir", "allow-tasks",
  ...CAP_KEYS,
];

/**
 * Refuse a key that looks like a misspelt cola-fed key: a silently ignored
 * `server_key_fingerprint` would turn pinning off. Same rule as the Python node: anything with
 * "state" in it must be `state-dir`; otherwise a close match (difflib ratio >= 0.8) is refused
 * with the key it resembles.
 */
export function checkNodeConfig(config: NodeConfig): void {
  for (const key of Object.keys(config)) {
    if (NODE_CONFIG_KEYS.includes(key)) continue;
    if (key.toLowerCase().includes("state")) {
      throw new ConfigError(`node config '${key}' is not a cola-fed key; did you mean 'state-dir'? `
        + "(docs/configuration.md lists them)");
    }
    const probe = key.replaceAll("_", "-").toLowerCase();
    let best: [number, string] | undefined;
    for (const known of NODE_CONFIG_KEYS) {
      const score = similarity(probe, known);
      if (score >= 0.8 && (best === undefined || score > best[0])) best = [score, known];
    }
    if (best !== undefined) {
      throw new ConfigError(`node config '${key}' is not a cola-fed key; did you mean '${best[1]}'? `
        + "(docs/configuration.md lists them)");
    }
  }
}

/** `[partition-id, num-partitions]`, both required integers with 0 <= id < count. */
export function partitionOf(config: NodeConfig): [number, number] {
  const id = config["partition-id"];
  const count = config["num-partitions"];
  if (id === undefined || count === undefined) {
    const missing = id === undefined ? "partition-id" : "num-partitions";
    throw new ConfigError(`node config lacks '${missing}'; start the node with --node-config `
      + "\"partition-id=<i> num-partitions=<n>\"");
  }
  if (typeof id !== "bigint" || typeof count !== "bigint" || !(0n <= id && id < count && count <= 2n ** 31n - 1n)) {
    throw new ConfigError(`node config partition-id ${String(id)} and num-partitions ${String(count)}: `
      + "expected integers with 0 <= id < count");
  }
  return [Number(id), Number(count)];
}

/** An optional string setting; "" counts as unset. */
export function optionalString(config: NodeConfig, key: string): string | undefined {
  const value = config[key];
  if (value === undefined || value === "") return undefined;
  if (typeof value !== "string") throw new ConfigError(`node config ${key}: expected a string, got ${String(value)}`);
  return value;
}

/**
 * difflib's `SequenceMatcher(None, a, b).ratio()` for short strings (no junk heuristics apply
 * below 200 characters): 2 * matches / (len(a) + len(b)), matches found by Ratcliff/Obershelp.
 */
export function similarity(a: string, b: string): number {
  const total = a.length + b.length;
  return total === 0 ? 1 : (2 * matchingCharacters(a, b)) / total;
}

function matchingCharacters(a: string, b: string): number {
  if (a.length === 0 || b.length === 0) return 0;
  // the longest common substring (first one found, as difflib's find_longest_match)
  let bestI = 0;
  let bestJ = 0;
  let bestSize = 0;
  for (let i = 0; i < a.length; i++) {
    for (let j = 0; j < b.length; j++) {
      let k = 0;
      while (i + k < a.length && j + k < b.length && a[i + k] === b[j + k]) k++;
      if (k > bestSize) [bestI, bestJ, bestSize] = [i, j, k];
    }
  }
  if (bestSize === 0) return 0;
  return bestSize + matchingCharacters(a.slice(0, bestI), b.slice(0, bestJ))
    + matchingCharacters(a.slice(bestI + bestSize), b.slice(bestJ + bestSize));
}
