/**
 * The JavaScript node's app in a process of its own, fed over stdin/stdout: the counterpart of
 * `python -m cola_fed.federation.node_process` for `python -m benchmarks.js_node`.
 *
 *   node --expose-gc js/packages/node/bench/node-process.mjs '<node config>' <node id>
 *
 * The node config is the `--node-config` string of `cola-fed-node` (parsed by the same code).
 * Every frame is a 4-byte big-endian length, then its bytes. Per message the parent writes:
 *   1. the message's `flwr.proto.ObjectTree` (protobuf), as a SuperLink sends it on PullMessages;
 *   2. the number of objects (ASCII decimal);
 *   3. one frame per object: its 64-character hex id, then its bytes (Flower's `deflate`).
 * This process then does what `cola-fed-node` does with a pulled message (supernode.ts): inflates
 * it with every check (`decodeMessageTree`: ids recomputed, tree, limits), runs the cola-fed app
 * (`createColaApp`: the real `ColaNode` with the Node.js environment: state dir, caches, known
 * servers, onnxruntime-node), builds the reply (`makeReply`; an exception becomes Flower's error
 * reply) and deflates it (`encodeMessage`). It writes back the reply in the same three parts,
 * then a JSON frame of stats:
 *   handle_s     the app handler alone (open, decode, fit, encode, seal, save): what the Python
 *                node_process times as `seconds`;
 *   message_s    inflating the message + the handler + building and deflating the reply;
 *   fit_s        the learner's `fit` calls within the handler (summed over the interval);
 *   session_s    ONNX Runtime sessions created within the handler (the learner creates them
 *                lazily, in its first `fit`: part of fit_s);
 *   peak_rss_mb  this process's peak resident memory so far (VmHWM of /proc/self/status);
 *   held_rss_mb  its resident memory after the message, once garbage is collected (VmRSS);
 *   heap_used_mb V8's heap in use then; message_bytes the objects' bytes that came.
 * Between messages it drops the message and collects garbage (`--expose-gc`), as the Python node
 * process drops its message and trims its heap, so each message's peak counts what the node keeps
 * and that message.
 */
import { readFileSync } from "node:fs";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { decodeMessageTree, encodeMessage, makeReply, message as schema, OrtLearner } from "@cola-fed/core";
import * as ort from "onnxruntime-node";
import { createColaApp } from "../dist/app.js";
import { parseNodeConfig } from "../dist/node-config.js";
import { FrameReader, writeFrame } from "./frames.mjs";
import { CLIENT_APP_RAISED_EXCEPTION, exceptionReason } from "../dist/supernode.js";

const [configArg, nodeIdArg] = process.argv.slice(2);
if (configArg === undefined || nodeIdArg === undefined) {
  process.stderr.write("usage: node --expose-gc node-process.mjs '<node config>' <node id>\n");
  process.exit(2);
}
const nodeId = BigInt(nodeIdArg);
const nodeConfig = parseNodeConfig(configArg, (path) => readFileSync(path, "utf8"));
const log = (line) => process.stderr.write(`[js-node] ${line}\n`);

// The fit alone: the learner's own calls, timed where the app makes them.
let fitSeconds = 0;
const fit = OrtLearner.prototype.fit;
OrtLearner.prototype.fit = async function timedFit(...args) {
  const started = performance.now();
  try {
    return await fit.apply(this, args);
  } finally {
    fitSeconds += (performance.now() - started) / 1000;
  }
};

// ONNX Runtime session creation (lazy, inside fit on both nodes), timed the same way.
let sessionSeconds = 0;
const createSession = ort.InferenceSession.create.bind(ort.InferenceSession);
const arenaOff = process.env.COLA_FED_BENCH_ORT_ARENA === "off";
ort.InferenceSession.create = async (model, options, ...rest) => {
  const started = performance.now();
  try {
    // the experiment `--js-arena-off`: the session options the Python learner sets
    const opts = arenaOff ? { ...options, enableCpuMemArena: false, enableMemPattern: false } : options;
    return await createSession(model, opts, ...rest);
  } finally {
    sessionSeconds += (performance.now() - started) / 1000;
  }
};

function treeFromProto(tree) {
  return { objectId: tree.objectId, children: tree.children.map(treeFromProto) };
}

function treeToProto(tree) {
  return create(schema("flwr.proto.ObjectTree"), { objectId: tree.objectId, children: tree.children.map(treeToProto) });
}

function statusMb(field) {
  const line = readFileSync("/proc/self/status", "utf8").split("\n").find((l) => l.startsWith(`${field}:`));
  return line === undefined ? 0 : Number.parseInt(line.split(/\s+/)[1], 10) / 1024;
}

const app = await createColaApp({ nodeConfig, log });
const reader = new FrameReader(process.stdin);
const decoder = new TextDecoder();
for (;;) {
  const treeBytes = await reader.next();
  if (treeBytes === undefined) break;
  const count = Number(decoder.decode(await reader.next()));
  let objects = new Map();
  let messageBytes = 0;
  for (let i = 0; i < count; i++) {
    const frame = await reader.next();
    objects.set(decoder.decode(frame.subarray(0, 64)), frame.subarray(64));
    messageBytes += frame.length - 64;
  }
  fitSeconds = 0;
  sessionSeconds = 0;
  const started = performance.now();
  let message = await decodeMessageTree(treeFromProto(fromBinary(schema("flwr.proto.ObjectTree"), treeBytes)), objects);
  objects = undefined;
  const handleStarted = performance.now();
  let body;
  try {
    body = { content: await app(message, { nodeId, runId: message.metadata.runId, nodeConfig }) };
  } catch (err) {
    log(`the app raised: ${err instanceof Error ? err.stack : String(err)}`);
    body = { error: { code: CLIENT_APP_RAISED_EXCEPTION, reason: exceptionReason(err) } };
  }
  const handleSeconds = (performance.now() - handleStarted) / 1000;
  let reply = await makeReply(message, body);
  let encoded = await encodeMessage(reply);
  const messageSeconds = (performance.now() - started) / 1000;
  writeFrame(toBinary(schema("flwr.proto.ObjectTree"), treeToProto(encoded.tree)));
  writeFrame(new TextEncoder().encode(String(encoded.objects.size)));
  for (const [id, content] of encoded.objects) {
    const frame = new Uint8Array(64 + content.length);
    frame.set(new TextEncoder().encode(id));
    frame.set(content, 64);
    writeFrame(frame);
  }
  const error = body.error?.reason ?? null;
  message = reply = encoded = body = undefined;
  globalThis.gc?.();
  const stats = {
    handle_s: handleSeconds, message_s: messageSeconds, fit_s: fitSeconds, session_s: sessionSeconds, message_bytes: messageBytes,
    peak_rss_mb: statusMb("VmHWM"), held_rss_mb: statusMb("VmRSS"),
    heap_used_mb: process.memoryUsage().heapUsed / 2 ** 20, error,
  };
  writeFrame(new TextEncoder().encode(JSON.stringify(stats)));
}
