import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { parseNodeConfig, type NodeConfigValue } from "../src/node-config.js";

// Written by test/fixtures/node_config_vectors.py from Flower's own parse_config_args.
const FIXTURE = new URL("../../test/fixtures/node-config.json", import.meta.url);

type Tagged = { int: string } | { float: string } | { bool: boolean } | { str: string };
interface Vector {
  input?: string;
  file?: string;
  config?: Array<[string, Tagged]>;
  error?: string;
}

function untag(tagged: Tagged): NodeConfigValue {
  if ("int" in tagged) return BigInt(tagged.int);
  if ("bool" in tagged) return tagged.bool;
  if ("str" in tagged) return tagged.str;
  if (tagged.float === "nan") return Number.NaN;
  if (tagged.float === "inf") return Infinity;
  if (tagged.float === "-inf") return -Infinity;
  return Number(tagged.float);
}

const vectors = JSON.parse(readFileSync(FIXTURE, "utf-8")) as Vector[];

function parseVector(vector: Vector): ReturnType<typeof parseNodeConfig> {
  if (vector.file === undefined) return parseNodeConfig(vector.input, () => assert.fail("no file expected"));
  const dir = mkdtempSync(join(tmpdir(), "node-config-"));
  try {
    const path = join(dir, "node.toml");
    writeFileSync(path, vector.file);
    return parseNodeConfig(path, (p) => readFileSync(p, "utf-8"));
  } finally {
    rmSync(dir, { recursive: true });
  }
}

test("the vectors cover accepted and refused configs", () => {
  assert.ok(vectors.filter((v) => v.error).length >= 20);
  assert.ok(vectors.filter((v) => v.config && v.config.length > 0).length >= 15);
});

for (const vector of vectors) {
  const name = JSON.stringify(vector.input ?? vector.file);
  if (vector.error !== undefined) {
    test(`refuses ${name} as Flower does (${vector.error})`, () => {
      assert.throws(() => parseVector(vector), { name: "ConfigError" });
    });
  } else {
    test(`parses ${name} as Flower does`, () => {
      const parsed = parseVector(vector);
      const expected = vector.config!;
      assert.deepEqual(Object.keys(parsed), expected.map(([key]) => key));
      for (const [key, tagged] of expected) {
        const want = untag(tagged);
        const got = parsed[key];
        assert.equal(typeof got, typeof want, `type of ${key}`);
        assert.ok(Object.is(got, want) || (typeof want === "number" && Number.isNaN(want) && Number.isNaN(got)), `${key}: ${String(got)} != ${String(want)}`);
      }
    });
  }
}

test("a parsed config has no prototype: __proto__ is a plain key", () => {
  const parsed = parseNodeConfig("__proto__=1");
  assert.equal(Object.getPrototypeOf(parsed), null);
  assert.equal(parsed["__proto__"], 1n);
});

test("a missing .toml file is a ConfigError that names it", () => {
  assert.throws(
    () => parseNodeConfig("/nonexistent/node.toml", (p) => readFileSync(p, "utf-8")),
    (err: Error) => err.name === "ConfigError" && err.message.includes("/nonexistent/node.toml"),
  );
});
