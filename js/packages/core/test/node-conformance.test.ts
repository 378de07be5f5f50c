/**
 * The whole node against the Python node, message by message (js/conformance/node.json, made by
 * tests/conformance/node.py from the real server and the real Python ONNX node): a server must
 * not be able to tell the two apart except by speed.
 *
 * ColaNode runs here over an environment in memory built from core pieces (MemoryNodeStore,
 * GraphCache / TaskFileCache over MemoryContentStore, KnownServers over a byte buffer,
 * onnxruntime-node on the CPU), with the Python node's fixed session key and identity:
 * - every reply of the honest session equals the Python node's, byte for byte;
 * - every hostile message is refused with the Python node's error class, and afterwards the
 *   node's store, known servers and task files hold the same bytes, its graph cache the graphs
 *   the Python node's holds, and its next honest reply is the Python node's (as if the hostile
 *   message had never come);
 * - a node restarted over the same store, a server that lost a reply, and a node that rejoins
 *   with a newer hello all get the Python node's replies.
 */
import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import test from "node:test";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import {
  ColaNode, GraphCache, KnownServers, MemoryContentStore, MemoryNodeStore, TaskFileCache, webCryptoProvider,
  type ConfigRecord, type ConfigValue, type CryptoProvider, type FlowerArray, type FlowerMessage, type MetricRecord,
  type MetricValue, type NodeConfig, type RecordDict,
} from "../src/index.js";
import { fromHex, toHex } from "../src/util/bytes.js";

interface Typed { t: string; v: unknown }
interface Described {
  configs: Record<string, Record<string, Typed>>;
  arrays: Record<string, Record<string, { dtype: string; shape: number[]; stype: string; data: Typed }>>;
  metrics: Record<string, Record<string, Typed>>;
}
interface Step { kind: "query" | "train"; message: Described; reply: Described }
interface HostileCase {
  name: string;
  at: number;
  kind: "query" | "train";
  message: Described;
  expect: string;
  /** node config changes the node is restarted with before the message (and without after) */
  config: Record<string, Typed>;
  /** the graphs in the Python node's cache after the refusal (SHA-256) */
  cached_after: string[];
}
interface ResumeCase {
  name: string;
  at: number;
  messages: {
    kind: "query" | "train"; restart: boolean; run_id: string; node_id: string; message: Described; reply: Described;
  }[];
}
interface NodeVectors {
  run_id: string;
  node_id: string;
  node_config: Record<string, Typed>;
  csv: string;
  node_key: string;
  node_identity_seed: string;
  server_identity: string;
  known_servers: string;
  steps: Step[];
  hostile: HostileCase[];
  resume: ResumeCase[];
  blobs: Record<string, string>;
}

const V: NodeVectors = JSON.parse(readFileSync(fileURLToPath(new URL("../../../../conformance/node.json", import.meta.url)), "utf8"));
const RUN_ID = BigInt(V.run_id);
const NODE_ID = BigInt(V.node_id);

// ---------------------------------------------------------------------------------------------
// the vectors' RecordDicts

function bytesOf(typed: Typed): Uint8Array {
  if (typed.t === "blob") return fromHex(V.blobs[typed.v as string]!);
  if (typed.t === "bytes") return fromHex(typed.v as string);
  throw new Error(`not bytes: ${typed.t}`);
}

function valueOf(typed: Typed): ConfigValue {
  switch (typed.t) {
    case "bool": return typed.v as boolean;
    case "int": return BigInt(typed.v as string);
    case "float": return typed.v as number;
    case "str": return typed.v as string;
    case "bytes": case "blob": return bytesOf(typed);
    case "list": return (typed.v as Typed[]).map(valueOf) as ConfigValue;
    default: throw new Error(`no value of ${typed.t}`);
  }
}

function recordDictOf(described: Described): RecordDict {
  const configs = new Map<string, ConfigRecord>(Object.entries(described.configs).map(([name, items]) =>
    [name, new Map(Object.entries(items).map(([k, v]) => [k, valueOf(v)]))]));
  const arrays = new Map<string, Map<string, FlowerArray>>(Object.entries(described.arrays).map(([name, items]) =>
    [name, new Map(Object.entries(items).map(([k, a]) =>
      [k, { dtype: a.dtype, shape: a.shape, stype: a.stype, data: bytesOf(a.data) }]))]));
  const metrics = new Map<string, MetricRecord>(Object.entries(described.metrics).map(([name, items]) =>
    [name, new Map(Object.entries(items).map(([k, v]) => [k, valueOf(v) as MetricValue]))]));
  return { configs, arrays, metrics };
}

/** A typed value with its bytes spelt out (a blob resolved), for comparison. */
function plainTyped(typed: Typed): Typed {
  if (typed.t === "blob") return { t: "bytes", v: V.blobs[typed.v as string] };
  if (typed.t === "list") return { t: "list", v: (typed.v as Typed[]).map(plainTyped) };
  return typed;
}

/** A described RecordDict with every blob resolved: what {@link describe} gives for JS. */
function plain(described: Described): unknown {
  const typedRecords = (records: Record<string, Record<string, Typed>>) => Object.fromEntries(Object.entries(records)
    .map(([name, items]) => [name, Object.fromEntries(Object.entries(items).map(([k, v]) => [k, plainTyped(v)]))]));
  return {
    configs: typedRecords(described.configs),
    arrays: Object.fromEntries(Object.entries(described.arrays).map(([name, items]) => [name, Object.fromEntries(
      Object.entries(items).map(([k, a]) => [k, { ...a, data: plainTyped(a.data) }]))])),
    metrics: typedRecords(described.metrics),
  };
}

function typedOf(value: ConfigValue | MetricValue): Typed {
  if (value instanceof Uint8Array) return { t: "bytes", v: toHex(value) };
  if (typeof value === "bigint") return { t: "int", v: value.toString() };
  if (typeof value === "number") return { t: "float", v: value };
  if (typeof value === "boolean") return { t: "bool", v: value };
  if (typeof value === "string") return { t: "str", v: value };
  return { t: "list", v: (value as ConfigValue[]).map((v) => typedOf(v)) };
}

/** What ColaNode sent, described as the Python vectors describe a RecordDict. */
function describe(content: RecordDict): unknown {
  const typedRecords = (records: Map<string, Map<string, ConfigValue | MetricValue>>) => Object.fromEntries(
    [...records].map(([name, record]) => [name, Object.fromEntries([...record].map(([k, v]) => [k, typedOf(v)]))]));
  return {
    configs: typedRecords(content.configs),
    arrays: Object.fromEntries([...content.arrays].map(([name, record]) => [name, Object.fromEntries([...record]
      .map(([k, a]) => [k, { dtype: a.dtype, shape: [...a.shape], stype: a.stype, data: typedOf(a.data) }]))])),
    metrics: typedRecords(content.metrics),
  };
}

function message(kind: "query" | "train", content: Described, runId: bigint, nodeId: bigint): FlowerMessage {
  return {
    metadata: {
      runId, messageId: "ab".repeat(32), srcNodeId: 1n, dstNodeId: nodeId, replyToMessageId: "",
      groupId: "0", ttl: 3600, messageType: kind, createdAt: Date.now() / 1000,
    },
    content: recordDictOf(content),
  };
}

// ---------------------------------------------------------------------------------------------
// the node, in memory

function nodeConfigOf(typed: Record<string, Typed>): NodeConfig {
  return Object.fromEntries(Object.entries(typed).map(([k, v]) => [k, valueOf(v) as NodeConfig[string]]));
}

const nodeConfig = nodeConfigOf(V.node_config);

/** WebCrypto, whose random bytes are the vector's node key (the only randomness a node draws
 * at hello): the node's per-session X25519 key is the Python node's. */
function fixedKeyCrypto(): CryptoProvider {
  const base = webCryptoProvider();
  return {
    ...base,
    randomBytes(length: number): Uint8Array {
      assert.equal(length, 32, "the node draws only its 32-byte session key");
      return fromHex(V.node_key);
    },
  };
}

const sessionFactory = (model: Uint8Array): Promise<ort.InferenceSession> => ort.InferenceSession.create(model, {
  executionProviders: ["cpu"], intraOpNumThreads: 1, interOpNumThreads: 1,
});

/** A node's persistent things (store, known servers, caches), and ColaNodes over them: a new
 * ColaNode over the same device is a restarted process. */
class Device {
  readonly crypto = fixedKeyCrypto();
  readonly store = new MemoryNodeStore(async (key, data) => new Uint8Array(createHmac("sha256", key).update(data).digest()),
    new Uint8Array(32).fill(7));
  known: Uint8Array | null = new TextEncoder().encode(V.known_servers);
  readonly graphs = new MemoryContentStore();
  readonly files = new MemoryContentStore();
  readonly log: string[] = [];
  node: ColaNode;

  constructor() {
    this.node = this.start();
  }

  /** A new process over this device's storage (with node config `changes`). */
  start(changes: NodeConfig = {}): ColaNode {
    const identity = this.crypto.ed25519FromSeed(fromHex(V.node_identity_seed));
    this.node = new ColaNode({
      crypto: this.crypto,
      nodeConfig: { ...nodeConfig, ...changes },
      store: this.store,
      identity: () => identity,
      knownServers: new KnownServers({
        location: "known-servers.json",
        read: async () => this.known,
        write: async (data) => { this.known = data.slice(); },
      }, { crypto: this.crypto }),
      graphCache: new GraphCache(this.graphs),
      fileCache: new TaskFileCache(this.files),
      sessionFactory,
      readData: async (path) => {
        assert.equal(path, "data.csv");
        return V.csv;
      },
      log: (line) => this.log.push(line),
    });
    return this.node;
  }

  async handle(kind: "query" | "train", content: Described, runId = RUN_ID, nodeId = NODE_ID): Promise<unknown> {
    return describe(await this.node.handle(message(kind, content, runId, nodeId), nodeId));
  }

  /** Every byte the node keeps, by place. */
  async snapshot(): Promise<Record<string, string>> {
    const out: Record<string, string> = { known: this.known === null ? "none" : toHex(this.known) };
    const names = await this.store.list();
    out.order = names.join(",");
    for (const name of names) out[`store:${name}`] = hashHex((await this.store.load(name))!);
    for (const [hash, data] of this.files.entries) out[`file:${hash}`] = hashHex(data);
    return out;
  }

  /** The graphs in the cache (each checked against the signed plan on the way in). */
  cached(): string[] {
    return [...this.graphs.entries.keys()].sort();
  }
}

function hashHex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** A device whose node handled the first `upto` honest messages, each reply checked. */
async function deviceAfter(upto: number): Promise<Device> {
  const device = new Device();
  for (const [i, step] of V.steps.slice(0, upto).entries()) {
    assert.deepEqual(await device.handle(step.kind, step.message), plain(step.reply), `honest step ${i}`);
  }
  return device;
}

async function refusal(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
  } catch (err) {
    return (err as Error).constructor.name;
  }
  return "ok";
}

// ---------------------------------------------------------------------------------------------

test("the vectors cover a whole session: hello, two TRAIN rounds, hostile variants, resumes", () => {
  assert.deepEqual(V.steps.map((s) => s.kind), ["query", "train", "train"]);
  assert.ok(V.hostile.length >= 25, `${V.hostile.length} hostile variants`);
  assert.ok(V.resume.length >= 5);
});

test("honest session: every reply equals the Python ONNX node's, byte for byte", async () => {
  const device = new Device();
  for (const [i, step] of V.steps.entries()) {
    assert.deepEqual(await device.handle(step.kind, step.message), plain(step.reply), `step ${i} (${step.kind})`);
  }
  // the TOFU store already remembered this server: an accepted hello does not rewrite it
  assert.equal(new TextDecoder().decode(device.known!), V.known_servers);
});

test("hostile messages: refused with the Python class, state unchanged, the next reply the Python node's", async () => {
  const wrong: string[] = [];
  for (const c of V.hostile) {
    const device = await deviceAfter(c.at);
    const changes = nodeConfigOf(c.config);
    const restarted = Object.keys(changes).length > 0;
    if (restarted) device.start(changes);
    const before = await device.snapshot();
    const got = await refusal(() => device.handle(c.kind, c.message));
    if (got !== c.expect) wrong.push(`${c.name}: expected ${c.expect}, got ${got}`);
    const after = await device.snapshot();
    if (JSON.stringify(after) !== JSON.stringify(before)) wrong.push(`${c.name}: the node's stored bytes changed`);
    for (const hash of device.cached()) assert.equal(hashHex(device.graphs.entries.get(hash)!), hash);
    if (JSON.stringify(device.cached()) !== JSON.stringify(c.cached_after)) {
      wrong.push(`${c.name}: the graph cache holds ${device.cached().length} graphs; the Python node's `
        + `${c.cached_after.length}`);
    }
    if (restarted) device.start();
    const next = V.steps[c.at]!;
    let reply: unknown;
    try {
      reply = await device.handle(next.kind, next.message);
    } catch (err) {
      reply = `${(err as Error).constructor.name}: ${(err as Error).message}`;
    }
    try {
      assert.deepEqual(reply, plain(next.reply));
    } catch {
      wrong.push(`${c.name}: the next honest reply is not the Python node's (${typeof reply === "string" ? reply : "bytes differ"})`);
    }
  }
  assert.deepEqual(wrong, []);
});

test("resume: a restart, a lost reply, a rejoin, a new node id and a resumed server: the Python node's replies", async () => {
  for (const c of V.resume) {
    const device = await deviceAfter(c.at);
    for (const [i, m] of c.messages.entries()) {
      if (m.restart) device.start();
      const reply = await device.handle(m.kind, m.message, BigInt(m.run_id), BigInt(m.node_id));
      assert.deepEqual(reply, plain(m.reply), `${c.name}: message ${i}`);
    }
  }
});

test("a restarted node with an empty store has no session: TRAIN is refused as in Python", async () => {
  const device = await deviceAfter(2);
  for (const name of await device.store.list()) await device.store.setAside(name);
  device.start();
  assert.equal(await refusal(() => device.handle("train", V.steps[2]!.message)), "ProtocolError");
});
