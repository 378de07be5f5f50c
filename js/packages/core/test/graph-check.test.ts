/** Shipped train-step graphs are checked before ONNX Runtime sees them, as
 * cola_fed/edge/graph_check.py checks them: the vectors' real exported graphs pass, every
 * hand-made hostile one is refused with Python's class and message, and the verified cache
 * keeps only graphs that pass, checking them again on the way out. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ALLOWED_OPS, checkGraph } from "../src/edge/graph-check.js";
import { GraphCache, MemoryContentStore, TaskFileCache } from "../src/edge/cache.js";
import { contentHash } from "../src/edge/graphs.js";
import { fromHex } from "../src/util/bytes.js";
import { outcome, outcomeAsync, vectors } from "./protocol-vectors.js";

const G = vectors().graphs;

test("the allow-list is Python's", () => {
  assert.deepEqual([...ALLOWED_OPS].sort(), G.allowed_ops);
});

test("every graph passes or is refused as Python does, with Python's message", async () => {
  assert.ok(G.cases.length >= 35);
  const real = G.cases.filter((c: { real: boolean }) => c.real);
  assert.equal(real.length, 3);
  for (const c of G.cases) {
    const model = fromHex(c.hex);
    assert.equal(await contentHash(model), c.sha256);
    if (c.expect === "ok") {
      checkGraph(model, { name: c.name });
      continue;
    }
    assert.throws(() => checkGraph(model, { name: c.name }), (err: Error) => {
      assert.equal(err.constructor.name, c.expect, c.name);
      assert.equal(err.message, c.message, c.name);
      return true;
    });
  }
});

test("a graph over the size limit is refused before it is read", () => {
  const { hex, max_bytes: maxBytes, message } = G.limit;
  assert.throws(() => checkGraph(fromHex(hex), { name: "g", maxBytes }), (err: Error) =>
    `${err.constructor.name}: ${err.message}` === message);
});

test("the graph cache stores checked graphs only, and checks them again on the way out", async () => {
  const good = G.cases.find((c: { real: boolean }) => c.real);
  const bad = G.cases.find((c: { name: string }) => c.name === "external-initializer");
  const store = new MemoryContentStore();
  const cache = new GraphCache(store);
  const model = fromHex(good.hex);
  assert.equal(await cache.has(good.name, good.sha256), false);
  await cache.put(good.name, model, good.sha256);
  assert.deepEqual(await cache.get(good.name, good.sha256), model);
  assert.equal(await outcomeAsync(() => cache.put(good.name, model, bad.sha256)), "PayloadError");
  assert.equal(await outcomeAsync(() => cache.put("evil", fromHex(bad.hex), bad.sha256)), "GraphError");
  assert.equal(store.entries.has(bad.sha256), false);
  assert.equal(await outcomeAsync(() => cache.has("x", "../etc/passwd")), "PayloadError");
  // a stored graph altered since: not held (and removed), and never returned
  store.entries.set(good.sha256, model.slice(1));
  assert.equal(await outcomeAsync(() => cache.get(good.name, good.sha256)), "PayloadError");
  assert.equal(await cache.has(good.name, good.sha256), false);
  assert.equal(store.entries.has(good.sha256), false);
  // bytes stored under their right hash by someone else are still checked on the way out
  store.entries.set(bad.sha256, fromHex(bad.hex));
  assert.equal(await outcomeAsync(() => cache.get("evil", bad.sha256)), "GraphError");
});

test("the task-file cache takes tokenizer.json only", async () => {
  const cache = new TaskFileCache(new MemoryContentStore());
  const data = new TextEncoder().encode('{"model": {"type": "WordLevel"}}');
  const digest = await contentHash(data);
  await cache.put("tokenizer.json", data, digest);
  assert.equal(await outcomeAsync(() => cache.put("evil.py", data, digest)), "PayloadError");
  const junk = new TextEncoder().encode("[1]");
  assert.equal(await outcomeAsync(async () => cache.put("tokenizer.json", junk, await contentHash(junk))), "PayloadError");
  assert.equal(outcome(() => checkGraph(new Uint8Array(), { name: "g" })), "GraphError");
});
