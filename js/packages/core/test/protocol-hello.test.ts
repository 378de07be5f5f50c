/** The checks a node makes on a hello before it acts (cola_fed/federation/client.py
 * `_checked_hello` and the helpers after it), against the Python vectors: signed hellos as
 * RecordDicts, with the node's config, known servers, previous session and caches, each
 * accepted or refused with the class Python raises; trust on first use writes what Python
 * writes. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GraphCache, MemoryContentStore, TaskFileCache } from "../src/edge/cache.js";
import { contentHash } from "../src/edge/graphs.js";
import type { NodeConfig } from "../src/node/config.js";
import { acceptHello, checkHello, Hello, NodeCaps, type HelloHistory } from "../src/protocol/index.js";
import { fromHex, toHex } from "../src/util/bytes.js";
import type { KnownServersStorage } from "../src/wire/identity.js";
import { transcriptHash } from "../src/wire/seal.js";
import { bytesOf, configValueOf, recordDictOf, vectors, type Typed } from "./protocol-vectors.js";

const H = vectors().hellos;

class MemoryKnown implements KnownServersStorage {
  constructor(public text: string | null) {}
  async read(): Promise<Uint8Array | null> {
    return this.text === null ? null : new TextEncoder().encode(this.text);
  }
  async write(data: Uint8Array): Promise<void> {
    this.text = new TextDecoder().decode(data);
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a case of the JSON vectors
async function run(c: any): Promise<{ got: string; known: string | null; result?: Awaited<ReturnType<typeof acceptHello>> }> {
  const ctx = c.context;
  const config: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(ctx.config as Record<string, Typed>)) config[k] = configValueOf(v);
  const known = new MemoryKnown(ctx.known_before);
  const graphStore = new MemoryContentStore();
  for (const typed of ctx.cached_graphs as Typed[]) {
    const data = bytesOf(typed);
    graphStore.entries.set(await contentHash(data), data);
  }
  const fileStore = new MemoryContentStore();
  for (const typed of ctx.cached_files as Typed[]) {
    const data = bytesOf(typed);
    fileStore.entries.set(await contentHash(data), data);
  }
  const previous = ctx.previous;
  const history: HelloHistory = {
    lastAccepted: async () => previous === null ? null : {
      identity: fromHex(previous.identity), lineage: BigInt(previous.lineage), runId: BigInt(previous.run_id),
      helloId: BigInt(previous.hello_id), partitionId: previous.partition,
    },
  };
  try {
    const result = await acceptHello(recordDictOf(c.content), {
      runId: BigInt(ctx.run_id), nodeId: BigInt(ctx.node_id), nodeConfig: config as NodeConfig, knownServers: known,
      backend: ctx.backend, graphCache: new GraphCache(graphStore), fileCache: new TaskFileCache(fileStore), history,
    });
    return { got: "ok", known: known.text, result };
  } catch (err) {
    return { got: (err as Error).constructor.name, known: known.text };
  }
}

test("every hello is accepted or refused as the Python node does", async () => {
  assert.ok(H.cases.length >= 50);
  const wrong: string[] = [];
  for (const c of H.cases) {
    const { got, known, result } = await run(c);
    if (got !== c.expect) {
      wrong.push(`${c.name}: expected ${c.expect}, got ${got}`);
      continue;
    }
    if (known !== c.known_after) wrong.push(`${c.name}: known servers ${known} != ${c.known_after}`);
    if (result !== undefined) {
      assert.equal(toHex(await transcriptHash(result.hello.transcript)), c.transcript_sha256, c.name);
      assert.deepEqual(Object.fromEntries(result.graphs), c.graphs, c.name);
    }
  }
  assert.deepEqual(wrong, []);
  const refused = new Set(H.cases.map((c: { expect: string }) => c.expect));
  for (const name of ["ok", "AuthenticationError", "UntrustedKeyError", "ProtocolError", "ReplayError", "ConfigError",
    "PayloadError", "GraphError"]) assert.ok(refused.has(name), name);
});

test("checkHello alone: a rewritten transcript never reaches the plan, a good one teaches trust once", async () => {
  const good = H.cases.find((c: { name: string }) => c.name === "tofu");
  const hello = Hello.fromRecord(recordDictOf(good.content));
  const known = new MemoryKnown(null);
  const options = {
    runId: BigInt(good.context.run_id), nodeId: BigInt(good.context.node_id), caps: new NodeCaps(), partitionId: 0,
    knownServers: known,
  };
  const transcript = await checkHello(hello, options);
  assert.equal(transcript.plan.interval, 2);
  assert.equal(known.text, good.known_after);
  const rewritten = new Hello(hello.identity, hello.transcript.map((b, i) => (i === 10 ? b ^ 1 : b)), hello.signature);
  await assert.rejects(checkHello(rewritten, options), { name: "AuthenticationError" });
  await assert.rejects(checkHello(hello, { ...options, caps: new NodeCaps({ maxInterval: 1 }) }), { name: "ProtocolError" });
  await assert.rejects(checkHello(hello, { ...options, history: { lastAccepted: async () => ({
    identity: hello.identity, lineage: transcript.lineage, runId: transcript.runId, helloId: transcript.helloId, partitionId: 0,
  }) } }), { name: "ReplayError" });
});
