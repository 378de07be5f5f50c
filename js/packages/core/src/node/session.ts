/**
 * What a node keeps between messages, and how it keeps it: the port of the Python node's
 * `NodeSession` (`cola_fed/federation/protocol.py`) and of its state directory
 * (`cola_fed/federation/node_store.py`), in a format of the JavaScript node's own.
 *
 * The session holds the node's channel key, the hello transcript it accepted (the plan and the
 * server's keys are read back from it, never from anywhere else), its partition, the channel
 * counters, and its numbered learner states: `states` maps a state number to its place in the
 * node's batch stream, `learners` to the learner's bytes. A state file is that session as a
 * bundle payload, behind a magic, a format version and an HMAC-SHA256 tag keyed by the node
 * (`NodeStore.mac`): a file that someone else wrote, or a flipped bit, is refused before a
 * byte of it is parsed.
 */
import { ProtocolError } from "../errors.js";
import { MAX_NODE_STATES } from "../protocol/constants.js";
import { dumpsCanonical, isJsonObject, loadsStrict, type JsonValue } from "../json/strict-json.js";
import { bytesEqual, concatBytes, fromHex, toHex } from "../util/bytes.js";
import { Limits, decodeBundle, encodeBundle } from "../wire/codec.js";

const STATE_MAGIC = new TextEncoder().encode("CFNS");
const STATE_FORMAT = 1;
const TAG_BYTES = 32;
const MAX_STATE_BYTES = 2 ** 31;
const MAX_INT = 2 ** 53;

/** One node's session in one run. */
export interface NodeSession {
  /** the raw X25519 private key of this session's channel */
  nodeKey: Uint8Array;
  /** the hello transcript this node checked and accepted, as received */
  transcript: Uint8Array;
  partitionId: number;
  backend: "onnx";
  sent: number;
  received: number;
  lastRound: number;
  /** the number of the newest state */
  latest: number;
  /** the states the last TRAIN order named: the server's, and its checkpoint's */
  acknowledged: number;
  checkpointed: number;
  /** state number -> batches drawn from the node's stream at that state */
  states: Map<number, number>;
  /** state number -> the learner's bytes at that state */
  learners: Map<number, Uint8Array>;
}

/** Where a node keeps its identity and its state files (a folder, IndexedDB, memory). */
export interface NodeStore {
  /** Save `data` under `name` (atomically: a crash leaves the old or the new file whole). */
  save(name: string, data: Uint8Array): Promise<void>;
  /** The bytes saved under `name`, or null. */
  load(name: string): Promise<Uint8Array | null>;
  /** The names of the saved state files, newest first. */
  list(): Promise<string[]>;
  /** Move a file that failed its checks out of the way, keeping it for inspection. */
  setAside(name: string, why: string): Promise<void>;
  /** HMAC-SHA256 of `data` under a key only this node holds. */
  mac(data: Uint8Array): Promise<Uint8Array>;
}

/** The state file of a run: per server identity and run lineage, as the Python node names it. */
export function runFileName(serverIdentityDigest: Uint8Array, lineage: bigint): string {
  return `run-${toHex(serverIdentityDigest).slice(0, 16)}-${lineage}.state`;
}

/** The session's bytes, as a state file (magic, format, bundle, tag). */
export async function encodeSession(session: NodeSession, store: Pick<NodeStore, "mac">): Promise<Uint8Array> {
  const numbers = [...session.states.keys()].sort((a, b) => a - b);
  const fields: JsonValue = {
    "node-key": toHex(session.nodeKey),
    transcript: toHex(session.transcript),
    "partition-id": BigInt(session.partitionId),
    backend: session.backend,
    sent: BigInt(session.sent),
    received: BigInt(session.received),
    "last-round": BigInt(session.lastRound),
    latest: BigInt(session.latest),
    acknowledged: BigInt(session.acknowledged),
    checkpointed: BigInt(session.checkpointed),
    "state-numbers": numbers.map(BigInt),
    "state-drawn": numbers.map((n) => BigInt(session.states.get(n)!)),
  };
  const parts = new Map<string, Uint8Array>([["session", dumpsCanonical(fields)]]);
  for (const n of numbers) {
    const learner = session.learners.get(n);
    if (learner === undefined) throw new ProtocolError(`the session lists state #${n} but holds no learner for it`);
    parts.set(`learner-${n}`, learner);
  }
  const body = concatBytes(STATE_MAGIC, new Uint8Array([STATE_FORMAT]), encodeBundle(parts));
  return concatBytes(body, await store.mac(body));
}

/**
 * A session from a state file, after its tag, format and every field are checked; throws
 * `ProtocolError` naming what is wrong (the caller sets the file aside).
 */
export async function decodeSession(data: Uint8Array, store: Pick<NodeStore, "mac">): Promise<NodeSession> {
  if (data.length < STATE_MAGIC.length + 1 + TAG_BYTES || data.length > MAX_STATE_BYTES) {
    throw new ProtocolError("a node state file of the wrong size");
  }
  const body = data.subarray(0, data.length - TAG_BYTES);
  const tag = data.subarray(data.length - TAG_BYTES);
  if (!bytesEqual(body.subarray(0, STATE_MAGIC.length), STATE_MAGIC)) {
    throw new ProtocolError("not a cola-fed JavaScript node's state file");
  }
  if (!constantTimeEqual(await store.mac(body), tag)) {
    throw new ProtocolError("the state file's tag does not verify: it was changed, or written by another node");
  }
  if (body[STATE_MAGIC.length] !== STATE_FORMAT) {
    throw new ProtocolError(`state file format ${body[STATE_MAGIC.length]}; this node reads format ${STATE_FORMAT}`);
  }
  const bundle = body.subarray(STATE_MAGIC.length + 1);
  const parts = decodeBundle(bundle, new Limits({ maxBytes: bundle.length + 8, maxRows: bundle.length + 8 }));
  const raw = parts.get("session");
  if (raw === undefined) throw new ProtocolError("a state file without its session");
  const session = sessionFields(loadsStrict(raw, { what: "node session", maxBytes: 2 ** 22, maxDepth: 2 }));
  for (const n of session.states.keys()) {
    const learner = parts.get(`learner-${n}`);
    if (learner === undefined) throw new ProtocolError(`the state file lacks the learner of state #${n}`);
    session.learners.set(n, learner.slice());
  }
  if (parts.size !== session.states.size + 1) throw new ProtocolError("the state file holds parts its session does not list");
  return session;
}

function sessionFields(raw: JsonValue): NodeSession {
  if (!isJsonObject(raw)) throw new ProtocolError("the node session is not a JSON object");
  const expected = ["node-key", "transcript", "partition-id", "backend", "sent", "received", "last-round", "latest",
    "acknowledged", "checkpointed", "state-numbers", "state-drawn"];
  const got = Object.keys(raw);
  if (got.length !== expected.length || !expected.every((k) => k in raw)) {
    throw new ProtocolError(`the node session has fields ${got.sort().join(", ")}; expected ${expected.sort().join(", ")}`);
  }
  const int = (key: string, low = 0): number => {
    const value = raw[key];
    if (typeof value !== "bigint" || value < BigInt(low) || value >= BigInt(MAX_INT)) {
      throw new ProtocolError(`node session ${key}: expected an integer >= ${low}`);
    }
    return Number(value);
  };
  const hex = (key: string, size?: number): Uint8Array => {
    const value = raw[key];
    if (typeof value !== "string" || !/^([0-9a-f]{2})*$/.test(value)) throw new ProtocolError(`node session ${key}: expected hex`);
    const bytes = fromHex(value);
    if (size !== undefined && bytes.length !== size) throw new ProtocolError(`node session ${key}: expected ${size} bytes`);
    return bytes;
  };
  const ints = (key: string): number[] => {
    const value = raw[key];
    if (!Array.isArray(value) || value.length > MAX_NODE_STATES
      || !value.every((v) => typeof v === "bigint" && v >= 0n && v < BigInt(MAX_INT))) {
      throw new ProtocolError(`node session ${key}: expected at most ${MAX_NODE_STATES} integers`);
    }
    return value.map((v) => Number(v));
  };
  if (raw.backend !== "onnx") throw new ProtocolError("node session backend: expected onnx");
  const numbers = ints("state-numbers");
  const drawn = ints("state-drawn");
  if (numbers.length !== drawn.length || new Set(numbers).size !== numbers.length || numbers.some((n) => n < 1)) {
    throw new ProtocolError("node session states: expected distinct state numbers >= 1, one place each");
  }
  const session: NodeSession = {
    nodeKey: hex("node-key", 32),
    transcript: hex("transcript"),
    partitionId: int("partition-id"),
    backend: "onnx",
    sent: int("sent"),
    received: int("received"),
    lastRound: int("last-round"),
    latest: int("latest"),
    acknowledged: int("acknowledged"),
    checkpointed: int("checkpointed"),
    states: new Map(numbers.map((n, i) => [n, drawn[i]!])),
    learners: new Map(),
  };
  if (!session.states.has(session.latest)) throw new ProtocolError("node session: its latest state is not among its states");
  return session;
}

function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** A store in memory: a node without a state directory (its state dies with the process). */
export class MemoryNodeStore implements NodeStore {
  private readonly files = new Map<string, Uint8Array>();
  private readonly order: string[] = [];
  private readonly key: Uint8Array;
  private readonly hmac: (key: Uint8Array, data: Uint8Array) => Promise<Uint8Array>;

  /** `hmac` computes HMAC-SHA256 (the crypto provider's); the key is fresh per process. */
  constructor(hmac: (key: Uint8Array, data: Uint8Array) => Promise<Uint8Array>, key: Uint8Array) {
    this.hmac = hmac;
    this.key = key;
  }

  async save(name: string, data: Uint8Array): Promise<void> {
    this.files.set(name, data.slice());
    const at = this.order.indexOf(name);
    if (at >= 0) this.order.splice(at, 1);
    this.order.unshift(name);
  }

  async load(name: string): Promise<Uint8Array | null> {
    return this.files.get(name) ?? null;
  }

  async list(): Promise<string[]> {
    return [...this.order];
  }

  async setAside(name: string): Promise<void> {
    this.files.delete(name);
    const at = this.order.indexOf(name);
    if (at >= 0) this.order.splice(at, 1);
  }

  mac(data: Uint8Array): Promise<Uint8Array> {
    return this.hmac(this.key, data);
  }
}
