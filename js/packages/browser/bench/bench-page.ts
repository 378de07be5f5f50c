/**
 * The benchmark page of the browser node (bench-only: built by bench/build-bench.mjs into a
 * folder of its own, never into dist-web/, so `cola-fed serve-node` does not ship it).
 *
 * It runs the core's `ColaNode` with the browser environment of the shipped page (environment.ts:
 * the identity, state files and caches in IndexedDB under non-extractable WebCrypto keys, ONNX
 * Runtime on WebAssembly with one thread), built as `startBrowserNode` builds it, but fed
 * messages by the benchmark driver (drive-bench.mjs) instead of the Fleet API: the same
 * message object trees `js/packages/node/bench/node-process.mjs` gets, so the two nodes are
 * timed on the same work. Per message, `window.colaBench.handle()`:
 *   1. fetches `/bench/message`: the driver's frames (4-byte big-endian length, then bytes):
 *      the `flwr.proto.ObjectTree`, the object count (ASCII), one frame per object (64-hex id,
 *      then Flower's deflated bytes);
 *   2. inflates it with every check (`decodeMessageTree`), runs the node's handler, builds the
 *      reply (`makeReply`; an exception becomes Flower's error reply) and deflates it
 *      (`encodeMessage`);
 *   3. posts the reply, framed the same way, to `/bench/reply`, and returns its timings, as
 *      node-process.mjs reports them: handle_s (the handler alone: open, decode, fit, encode,
 *      seal, save), message_s (with the object codec around it), fit_s (the learner's `fit`
 *      calls), session_s (ONNX Runtime sessions made, inside fit_s), message_bytes, error,
 *      and save_s (the state file's IndexedDB transactions; browser only).
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  CLIENT_APP_RAISED_EXCEPTION, ColaNode, decodeMessageTree, encodeMessage, exceptionReason, GraphCache, makeReply,
  message as schema, OrtLearner, TaskFileCache, TaskTokenizer, webCryptoProvider, type NodeConfig, type ObjectTree,
  type RecordDict, type SessionFactory,
} from "@cola-fed/core";
import { ConfirmingKnownServers } from "../src/confirm.js";
import {
  IndexedDbContentStore, IndexedDbNodeStore, knownServersStorage, loadIdentity, wasmSessionFactory,
} from "../src/environment.js";
import { NodeDatabase } from "../src/idb.js";

/** What the driver passes to `colaBench.start`. */
interface BenchSettings {
  nodeId: string;
  partitionId: number;
  numPartitions: number;
  dataName: string;
}

/** The timings of one message (node-process.mjs's stats, less the process memory the driver adds). */
interface MessageStats {
  handle_s: number;
  message_s: number;
  fit_s: number;
  session_s: number;
  save_s: number;
  message_bytes: number;
  error: string | null;
}

const log = (line: string): void => console.log(`[browser-node] ${line}`);
let fitSeconds = 0;
let sessionSeconds = 0;
let saveSeconds = 0;

// The fit alone: the learner's own calls, timed where the node makes them (as node-process.mjs does).
const fit = OrtLearner.prototype.fit;
OrtLearner.prototype.fit = async function timedFit(this: OrtLearner, ...args: Parameters<OrtLearner["fit"]>) {
  const started = performance.now();
  try {
    return await fit.apply(this, args);
  } finally {
    fitSeconds += (performance.now() - started) / 1000;
  }
};

/** The shipped session factory (onnxruntime-web, WASM, one thread), its calls timed. */
function timedSessions(inner: SessionFactory): SessionFactory {
  return async (model) => {
    const started = performance.now();
    try {
      return await inner(model);
    } finally {
      sessionSeconds += (performance.now() - started) / 1000;
    }
  };
}

let node: ColaNode | undefined;
let nodeId = 0n;

/** Build the node (as `startBrowserNode` does; the server's key is confirmed without asking:
 * the benchmark's server is its own). */
async function start(settings: BenchSettings): Promise<void> {
  const db = await NodeDatabase.open();
  const csv = await (await fetch("/bench/data.csv")).text();
  const crypto = webCryptoProvider();
  const nodeConfig: NodeConfig = {
    "partition-id": BigInt(settings.partitionId),
    "num-partitions": BigInt(settings.numPartitions),
    "data-path": settings.dataName,
  };
  const identity = await loadIdentity(db, log);
  nodeId = BigInt(settings.nodeId);
  // the state file's save (an IndexedDB transaction), timed: the browser's part of the step
  const store = await IndexedDbNodeStore.open(db);
  const save = store.save.bind(store);
  store.save = async (name, data) => {
    const started = performance.now();
    try {
      await save(name, data);
    } finally {
      saveSeconds += (performance.now() - started) / 1000;
    }
  };
  node = new ColaNode({
    crypto,
    nodeConfig,
    store,
    identity: async () => identity,
    knownServers: new ConfirmingKnownServers(knownServersStorage(db), async () => true, { crypto }),
    graphCache: new GraphCache(new IndexedDbContentStore(db, "graphs")),
    fileCache: new TaskFileCache(new IndexedDbContentStore(db, "files"), (_name, data) => void new TaskTokenizer(data)),
    sessionFactory: timedSessions(wasmSessionFactory(new URL("ort/", location.href).href)),
    readData: async () => csv,
    log,
  });
}

/** The frames of a body: 4-byte big-endian length, then that many bytes, to the end. */
function* frames(body: Uint8Array): Generator<Uint8Array> {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  for (let at = 0; at < body.length;) {
    if (at + 4 > body.length) throw new Error("a frame header runs past the end of the body");
    const size = view.getUint32(at);
    if (at + 4 + size > body.length) throw new Error(`a frame of ${size} bytes runs past the end of the body`);
    yield body.subarray(at + 4, at + 4 + size);
    at += 4 + size;
  }
}

function framed(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + 4 + p.length, 0));
  const view = new DataView(out.buffer);
  let at = 0;
  for (const part of parts) {
    view.setUint32(at, part.length);
    out.set(part, at + 4);
    at += 4 + part.length;
  }
  return out;
}

type ProtoTree = { objectId: string; children: ProtoTree[] };
const treeFromProto = (tree: ProtoTree): ObjectTree => ({ objectId: tree.objectId, children: tree.children.map(treeFromProto) });
const treeToProto = (tree: ObjectTree): ProtoTree => ({ objectId: tree.objectId, children: tree.children.map(treeToProto) });

/** One message from the driver, handled; its reply posted back; its timings. */
async function handle(): Promise<MessageStats> {
  if (node === undefined) throw new Error("colaBench.start() first");
  const body = new Uint8Array(await (await fetch("/bench/message")).arrayBuffer());
  const text = new TextDecoder();
  const [treeBytes, countBytes, ...objectFrames] = [...frames(body)];
  if (treeBytes === undefined || countBytes === undefined) throw new Error("a message body without its tree and count");
  if (Number(text.decode(countBytes)) !== objectFrames.length) throw new Error("the object count does not match the frames");
  let objects: Map<string, Uint8Array> | undefined = new Map();
  let messageBytes = 0;
  for (const frame of objectFrames) {
    objects.set(text.decode(frame.subarray(0, 64)), frame.subarray(64));
    messageBytes += frame.length - 64;
  }
  fitSeconds = 0;
  sessionSeconds = 0;
  saveSeconds = 0;
  const started = performance.now();
  const tree = fromBinary(schema("flwr.proto.ObjectTree"), treeBytes) as unknown as ProtoTree;
  const message = await decodeMessageTree(treeFromProto(tree), objects);
  objects = undefined;
  const handleStarted = performance.now();
  let reply: { content: RecordDict } | { error: { code: bigint; reason: string } };
  try {
    reply = { content: await node.handle(message, nodeId) };
  } catch (err) {
    log(`the node raised: ${err instanceof Error ? err.stack : String(err)}`);
    reply = { error: { code: CLIENT_APP_RAISED_EXCEPTION, reason: exceptionReason(err) } };
  }
  const handleSeconds = (performance.now() - handleStarted) / 1000;
  const encoded = await encodeMessage(await makeReply(message, reply));
  const messageSeconds = (performance.now() - started) / 1000;
  const encoder = new TextEncoder();
  const parts = [
    toBinary(schema("flwr.proto.ObjectTree"), create(schema("flwr.proto.ObjectTree"), treeToProto(encoded.tree) as never)),
    encoder.encode(String(encoded.objects.size)),
  ];
  for (const [id, content] of encoded.objects) {
    const frame = new Uint8Array(64 + content.length);
    frame.set(encoder.encode(id));
    frame.set(content, 64);
    parts.push(frame);
  }
  const posted = await fetch("/bench/reply", { method: "POST", body: framed(parts) as Uint8Array<ArrayBuffer> });
  if (!posted.ok) throw new Error(`the driver refused the reply: HTTP ${posted.status}`);
  return {
    handle_s: handleSeconds, message_s: messageSeconds, fit_s: fitSeconds, session_s: sessionSeconds,
    save_s: saveSeconds, message_bytes: messageBytes, error: "error" in reply ? reply.error.reason : null,
  };
}

/** What this browser offers WebGPU (reported; the node runs on WASM whatever it says). */
async function webgpu(): Promise<{ api: boolean; adapter: string | null }> {
  const gpu = (navigator as Navigator & { gpu?: { requestAdapter(): Promise<{ info?: { vendor?: string; architecture?: string } } | null> } }).gpu;
  if (gpu === undefined) return { api: false, adapter: null };
  const adapter = await gpu.requestAdapter().catch(() => null);
  return { api: true, adapter: adapter === null ? null : `${adapter.info?.vendor ?? "?"} ${adapter.info?.architecture ?? ""}`.trim() };
}

declare global {
  interface Window {
    colaBench: { start: typeof start; handle: typeof handle; webgpu: typeof webgpu; crossOriginIsolated: boolean };
  }
}
window.colaBench = { start, handle, webgpu, crossOriginIsolated: globalThis.crossOriginIsolated };
