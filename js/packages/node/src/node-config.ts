/**
 * `--node-config`, read exactly as Flower 1.42's `flower-supernode` reads it
 * (`flwr.common.config.parse_config_args` then `flatten_dict`):
 *
 * - a value ending in `.toml` is a TOML file, read whole and flattened;
 * - otherwise every `key=value` pair that the regex `(\S+?)=('[^']*'|"[^"]*"|\S+)` finds is
 *   written as a `key = value` TOML line (text between pairs that the regex skips is ignored,
 *   as Flower ignores it) and the lines are parsed as one TOML document;
 * - nested tables are flattened with dots; values must be ints (-> bigint), floats (-> number),
 *   bools or strings: arrays, dates and times are refused, as `flatten_dict` refuses them.
 */
import { ConfigError } from "@cola-fed/core";
import { parse as parseTomlText, TomlDate, TomlError } from "smol-toml";

type TomlValue = bigint | number | boolean | string | TomlDate | TomlValue[] | TomlTable;
interface TomlTable {
  [key: string]: TomlValue;
}

/** A node config value: Flower's `UserConfigValue` (int as bigint, float as number). */
export type NodeConfigValue = string | number | boolean | bigint;
/** A flat node config (keys joined with dots), as `context.node_config` holds it. */
export type NodeConfig = Record<string, NodeConfigValue>;

// Python's `\s` for str patterns (every code point `re.match(r"\s", c)` accepts); JavaScript's
// `\s` differs (it has U+FEFF, lacks U+001C..U+001F and U+0085), so the class is spelled out.
const PY_SPACE = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PAIR_PATTERN = new RegExp(`([^${PY_SPACE}]+?)=('[^']*'|"[^"]*"|[^${PY_SPACE}]+)`, "gu");

const FORMAT_HINT =
  "The correct format should be, e.g., 'key1=123 key2=false key3=\"string\"', where values must be of " +
  "type bool, int, string, or float. Ensure proper formatting with space-separated key-value pairs.";

/**
 * Parse `--node-config` as `flower-supernode` does; `undefined` or "" gives an empty config.
 * `readFile` reads a `.toml` path (injected so that this module stays free of file I/O).
 * Throws `ConfigError` for what Flower refuses, saying what was wrong and what is accepted.
 */
export function parseNodeConfig(arg: string | undefined, readFile?: (path: string) => string): NodeConfig {
  if (arg === undefined || arg === "") return emptyConfig();
  if (arg.endsWith(".toml")) {
    if (readFile === undefined) throw new ConfigError(`--node-config names a TOML file (${arg}), but no file reader was given`);
    let text: string;
    try {
      text = readFile(expandUser(arg));
    } catch (err) {
      throw new ConfigError(`cannot read the --node-config file ${arg}: ${(err as Error).message}`);
    }
    return flattenConfig(parseToml(text, `the --node-config file ${arg}`));
  }
  const lines = [...arg.matchAll(PAIR_PATTERN)].map((match) => `${match[1]} = ${match[2]}`);
  return flattenConfig(parseToml(lines.join("\n"), "--node-config"));
}

function parseToml(text: string, what: string): TomlTable {
  try {
    return parseTomlText(text, { integersAsBigInt: true }) as TomlTable;
  } catch (err) {
    if (err instanceof TomlError) {
      throw new ConfigError(`${what} is not in a valid format (${err.message}). ${FORMAT_HINT}`);
    }
    throw err;
  }
}

/** Flower's `flatten_dict`: nested tables joined with "."; only bool, int, float and str leaves. */
export function flattenConfig(table: TomlTable, parentKey = "", into: NodeConfig = emptyConfig()): NodeConfig {
  for (const [key, value] of Object.entries(table)) {
    const flatKey = parentKey ? `${parentKey}.${key}` : key;
    if (isPlainTable(value)) {
      flattenConfig(value, flatKey, into);
    } else if (typeof value === "bigint" || typeof value === "number" || typeof value === "boolean" || typeof value === "string") {
      // A key that appears twice after flattening (`a.b` and `"a.b"`) keeps the last value, as
      // Python's dict() of the flattened items does.
      delete into[flatKey];
      into[flatKey] = value;
    } else {
      throw new ConfigError(
        `the node config value for key ${key} is ${describe(value)}; it needs to be of type int, float, bool, str, ` +
          "or a table of those",
      );
    }
  }
  return into;
}

function isPlainTable(value: TomlValue): value is TomlTable {
  return typeof value === "object" && !Array.isArray(value) && !(value instanceof TomlDate);
}

function describe(value: TomlValue): string {
  if (Array.isArray(value)) return "an array";
  if (value instanceof TomlDate) return `a date or time (${value.toISOString()})`;
  return typeof value;
}

function emptyConfig(): NodeConfig {
  return Object.create(null) as NodeConfig;
}

function expandUser(path: string): string {
  const home = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.["HOME"];
  if (home && (path === "~" || path.startsWith("~/"))) return home + path.slice(1);
  return path;
}
