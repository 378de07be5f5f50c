/**
 * The checks a node makes on a hello before it acts on anything (port of `handle_hello`'s first
 * half in `cola_fed/federation/client.py`: `_checked_hello`, `_prior_state`'s replay check,
 * `_graphs_needed`, `_receive_graphs`, `_receive_files`), in Python's order, so a hostile hello
 * is refused with the same error class: the node config's caps, the records, the signature,
 * the server identity against the fingerprint the node pins or remembers, the transcript (for
 * this run and node), trust on first use, the plan within the caps, a hello id above the one
 * accepted before, then every graph and task file against the signed plan's hashes and checks.
 *
 * {@link checkHello} is `_checked_hello` (plus the replay check when given a history);
 * {@link acceptHello} runs the whole sequence from a message's content and node config.
 */

import { ConfigError, ProtocolError, ReplayError } from "../errors.js";
import type { CryptoProvider } from "../crypto/provider.js";
import { graphKeys } from "../edge/graphs.js";
import type { RecordDict } from "../flower/records.js";
import { pythonFloatRepr } from "../json/python-json.js";
import { checkNodeConfig, partitionOf, type NodeConfig } from "../node/config.js";
import { bytesEqual } from "../util/bytes.js";
import { KnownServers, type KnownServersStorage } from "../wire/identity.js";
import { verifyTranscript } from "../wire/seal.js";
import { NodeCaps } from "./caps.js";
import { Hello, HelloTranscript } from "./hello.js";
import type { Plan } from "./plan.js";

/** Verified content by name and SHA-256 (`edge/cache.ts` `GraphCache` / `TaskFileCache`, or
 * the runtime's own): `put` refuses content that does not hash to the listed digest or fails
 * its check, and stores nothing then. */
export interface ContentCache {
  has(name: string, digest: string): Promise<boolean>;
  put(name: string, data: Uint8Array, digest: string): Promise<void>;
  /** the stored bytes, hashed and checked again */
  get(name: string, digest: string): Promise<Uint8Array>;
}

/** What a node remembers of the hello it accepted last in a run it held (its stored session). */
export interface AcceptedHello {
  readonly identity: Uint8Array;
  readonly lineage: bigint;
  readonly runId: bigint;
  readonly helloId: bigint;
  /** the partition the node held */
  readonly partitionId: number;
}

/** Where a node keeps its sessions: the last hello it accepted for this hello's run (its
 * lineage, from this server), if it held one; the runtime implements it (`_prior_state`: this
 * process's session, else the state directory's for `(identity, lineage)`). */
export interface HelloHistory {
  lastAccepted(transcript: HelloTranscript): Promise<AcceptedHello | null>;
}

/** What {@link checkHello} is told about this node: nothing of it comes from the wire. */
export interface HelloCheckOptions {
  /** Flower's run id and this node's id (from the message's metadata and registration). */
  readonly runId: bigint;
  readonly nodeId: bigint;
  /** this node's caps (node config) */
  readonly caps: NodeCaps;
  /** this node's partition (node config `partition-id`) */
  readonly partitionId: number;
  /** the remembered server keys: a KnownServers, or the storage to read one from */
  readonly knownServers: KnownServers | KnownServersStorage;
  /** the fingerprint this node pins (`server-key-fingerprint`), if any */
  readonly pinned?: string | null;
  /** the federation name the server is remembered under (default "default") */
  readonly federation?: string;
  /** the last accepted hello of this run, for the replay check (none: not checked here) */
  readonly history?: HelloHistory;
  readonly crypto?: CryptoProvider;
  /** the task names this node knows (default: Python's built-ins) */
  readonly knownTasks?: readonly string[];
}

/**
 * `_checked_hello`: the hello's transcript, once its signature holds under a server identity
 * this node pins or remembers (MalformedPayloadError / AuthenticationError /
 * UntrustedKeyError), it is for this run and node (ProtocolError), and its plan is within this
 * node's caps (ProtocolError; ConfigError for selectors that pick no layer). The server is
 * remembered (trust on first use) only once all but the caps held. With `history`, a hello not
 * newer than the one accepted before is then a ReplayError (`_prior_state`).
 */
export async function checkHello(hello: Hello, options: HelloCheckOptions): Promise<HelloTranscript> {
  await verifyTranscript(hello.identity, hello.transcript, hello.signature, ...(options.crypto ? [options.crypto] : []));
  const known = options.knownServers instanceof KnownServers ? options.knownServers
    : new KnownServers(options.knownServers, options.crypto ? { crypto: options.crypto } : {});
  const pinned = options.pinned || null;
  const federation = options.federation || "default";
  // a key this node pins or remembers otherwise is refused before its plan is even read
  await known.check(federation, hello.identity, { pinned, remember: false });
  const transcript = HelloTranscript.decode(hello.transcript, { knownTasks: options.knownTasks });
  if (!bytesEqual(transcript.identity, hello.identity)) {
    throw new ProtocolError("the hello's transcript names another server identity");
  }
  if (transcript.runId !== options.runId || transcript.nodeId !== options.nodeId) {
    throw new ProtocolError(`a hello for run ${transcript.runId} and node ${transcript.nodeId} reached node `
      + `${options.nodeId} of run ${options.runId}`);
  }
  // only a hello fit to act on teaches trust on first use
  await known.check(federation, hello.identity, { pinned });
  options.caps.check(transcript.plan, options.partitionId);
  if (options.history) await checkNotReplayed(transcript, options.partitionId, options.history);
  return transcript;
}

/** What {@link acceptHello} is told about this node: nothing of it comes from the wire. */
export interface HelloAcceptContext {
  readonly runId: bigint;
  readonly nodeId: bigint;
  /** the node config: partition-id, num-partitions, server-key-fingerprint, federation, caps */
  readonly nodeConfig: NodeConfig;
  readonly knownServers: KnownServers | KnownServersStorage;
  /** the backend this node trains on: "onnx" receives and checks graphs, "torch" needs none */
  readonly backend: string;
  /** verified graphs by hash (needed on "onnx") */
  readonly graphCache?: ContentCache;
  /** verified task files by hash (needed when the plan lists files) */
  readonly fileCache?: ContentCache;
  readonly history?: HelloHistory;
  readonly crypto?: CryptoProvider;
  readonly knownTasks?: readonly string[];
}

/** A hello the node may act on. */
export interface AcceptedHelloResult {
  readonly hello: Hello;
  readonly transcript: HelloTranscript;
  readonly caps: NodeCaps;
  readonly partitionId: number;
  readonly numPartitions: number;
  /** `name -> sha256` of the train-step graphs this node trains with, all in the graph cache
   * (empty on "torch") */
  readonly graphs: Map<string, string>;
}

/**
 * The whole of `handle_hello` before it acts, from a message's content: the node config
 * (ConfigError), the caps, `Hello.fromRecord` (ProtocolError), {@link checkHello}, the
 * replay check, then the graphs (on "onnx") and the task files against the plan's hashes
 * (ProtocolError, PayloadError, GraphError).
 */
export async function acceptHello(content: RecordDict, ctx: HelloAcceptContext): Promise<AcceptedHelloResult> {
  checkNodeConfig(ctx.nodeConfig);
  const caps = NodeCaps.fromNodeConfig(ctx.nodeConfig);
  const hello = Hello.fromRecord(content);
  const config = ctx.nodeConfig;
  const fingerprintValue = config["server-key-fingerprint"];
  const transcript = await checkHello(hello, {
    runId: ctx.runId, nodeId: ctx.nodeId, caps, knownServers: ctx.knownServers,
    // Python computes the partition inside `_checked_hello`, after trust on first use
    get partitionId() { return partitionOf(config)[0]; },
    pinned: fingerprintValue ? (fingerprintValue as string) : null,
    federation: config.federation ? pyStr(config.federation) : "default",
    ...(ctx.crypto ? { crypto: ctx.crypto } : {}), ...(ctx.knownTasks ? { knownTasks: ctx.knownTasks } : {}),
  });
  const [partitionId, numPartitions] = partitionOf(config);
  if (ctx.history) await checkNotReplayed(transcript, partitionId, ctx.history);
  const graphs = ctx.backend === "onnx" ? await receiveGraphs(hello, transcript.plan, partitionId, ctx.graphCache) : new Map();
  await receiveFiles(hello, transcript.plan, ctx.fileCache);
  return { hello, transcript, caps, partitionId, numPartitions, graphs };
}

/** `_prior_state`'s checks: a second hello of this run must be a newer one from the same
 * server and lineage (ReplayError), for the partition the node held (ConfigError). */
export async function checkNotReplayed(transcript: HelloTranscript, partitionId: number, history?: HelloHistory): Promise<void> {
  const previous = history ? await history.lastAccepted(transcript) : null;
  if (!previous) return;
  // (a hello of another run names that run: a resumed run's hellos need not be newer)
  if (!bytesEqual(previous.identity, transcript.identity) || previous.lineage !== transcript.lineage
    || (previous.runId === transcript.runId && transcript.helloId <= previous.helloId)) {
    throw new ReplayError("a second hello for this run that is not a newer one from the same server; the session is "
      + "kept");
  }
  if (previous.partitionId !== partitionId) {
    throw new ConfigError(`this node held partition ${previous.partitionId} in this run, and its node config now says `
      + `partition-id = ${partitionId}; a node keeps its partition for the whole run`);
  }
}

/**
 * `_graphs_needed`: `name -> sha256` of the train-step graphs this node trains with, as the
 * signed plan lists them: every rows graph of its adapters (ProtocolError if one is not
 * listed), and the graphs of the other exact forms the plan lists.
 */
export function graphsNeeded(plan: Plan, partitionId: number): Map<string, string> {
  const specs = [plan.specsFor(partitionId)];
  const needed = graphKeys(plan.layout, specs, plan.optimizer);
  const missing = [...needed.keys()].filter((name) => !plan.graphs.has(name)).sort();
  if (missing.length) {
    throw new ProtocolError(`this node trains on ONNX Runtime, but the server lists no train-step graph `
      + `[${missing.map((m) => `'${m}'`).join(", ")}]; run the server with edge.graphs = true, or install PyTorch on `
      + "this node");
  }
  const optional = graphKeys(plan.layout, specs, plan.optimizer, "all");
  const out = new Map<string, string>();
  for (const name of optional.keys()) if (needed.has(name) || plan.graphs.has(name)) out.set(name, plan.graphs.get(name)!);
  return out;
}

/** `_receive_graphs`: each graph this node needs, from the cache or checked against the plan's
 * hash and the graph checks and cached; graphs not needed are ignored. */
export async function receiveGraphs(hello: Hello, plan: Plan, partitionId: number, cache?: ContentCache): Promise<Map<string, string>> {
  const needed = graphsNeeded(plan, partitionId);
  if (cache === undefined) throw new ConfigError("a node on the onnx backend needs a graph cache");
  for (const [name, digest] of needed) {
    if (!await cache.has(name, digest)) {
      const shipped = hello.graphs.get(name);
      if (shipped === undefined) throw new ProtocolError(`train-step graph '${name}' is listed but was not shipped`);
      await cache.put(name, shipped, digest);
    }
  }
  return needed;
}

/** `_receive_files`: each task file the plan lists, from the cache or checked against its
 * hash and what it must be, and cached; a file not listed is ignored. */
export async function receiveFiles(hello: Hello, plan: Plan, cache?: ContentCache): Promise<void> {
  if (plan.files.size && cache === undefined) throw new ConfigError("the plan lists task files: the node needs a file cache");
  for (const [name, digest] of plan.files) {
    if (!await cache!.has(name, digest)) {
      const shipped = hello.files.get(name);
      if (shipped === undefined) throw new ProtocolError(`task file '${name}' is listed but was not shipped`);
      await cache!.put(name, shipped, digest);
    }
  }
}

/** Python's `str()` of a node config value. */
function pyStr(value: string | number | boolean | bigint): string {
  if (typeof value === "number") return pythonFloatRepr(value);
  if (typeof value === "boolean") return value ? "True" : "False";
  return String(value);
}
