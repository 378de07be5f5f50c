/**
 * End-to-end sealing of payloads between the server and one node, and the signed hello: a
 * port of `cola_fed/wire/crypto.py`, byte for byte.
 *
 * - Key agreement: X25519 between the server's per-run exchange key and a per-run node key.
 * - Key derivation: HKDF-SHA256 over the shared secret, the run id (8 bytes, big-endian) as
 *   salt, `"cola-fed v<version> <direction> node <node id> " + SHA-256(hello transcript)` as
 *   info: one AES-256 key per direction, bound to the exact hello the node accepted.
 * - Sealing: AES-256-GCM; the nonce is 4 zero bytes and the sender's 64-bit message counter
 *   (never random: a counter never repeats under a key, and the state persists it); the
 *   associated data binds protocol version, run id, node id, counter, direction and kind.
 * - Replay and reordering: the receiver accepts only counters above the last one it accepted.
 */

import type { CryptoProvider, Ed25519Identity } from "../crypto/provider.js";
import { defaultCryptoProvider } from "../crypto/provider.js";
import { AuthenticationError, ConfigError, MalformedPayloadError, ReplayError } from "../errors.js";
import { concatBytes, toHex } from "../util/bytes.js";

/** The protocol version bound into keys and associated data. */
export const PROTOCOL_VERSION = 4;
/** The direction the server sends in. */
export const SERVER_TO_NODE = "server->node";
/** The direction a node sends in. */
export const NODE_TO_SERVER = "node->server";
/** A direction of a channel. */
export type Direction = typeof SERVER_TO_NODE | typeof NODE_TO_SERVER;
/** Each direction's byte in the associated data. */
export const DIRECTIONS: Readonly<Record<Direction, number>> = { "server->node": 1, "node->server": 2 };
/** "CFS2": cola-fed sealed, envelope version 2. */
export const MAGIC = new TextEncoder().encode("CFS2");
/** Bytes of the envelope header: magic and the 64-bit counter. */
export const HEADER_BYTES = 12;
/** Bytes of the AES-GCM tag. */
export const TAG_BYTES = 16;
/** Bytes of an Ed25519 signature. */
export const SIGNATURE_BYTES = 64;
/** Prefixed to a hello transcript before it is signed. */
export const HELLO_CONTEXT = new TextEncoder().encode("cola-fed hello v2\x00");
/** Prefixed to a node's claim before it is signed. */
export const NODE_CLAIM_CONTEXT = new TextEncoder().encode("cola-fed node claim v1\x00");
/** The largest envelope {@link SecureChannel.open} decrypts unless told otherwise: the codec's
 * default payload cap plus the envelope's overhead. WebCrypto cannot stream AES-GCM, so the
 * size is checked before decrypting. */
export const DEFAULT_MAX_ENVELOPE_BYTES = 2 ** 31 + HEADER_BYTES + TAG_BYTES;

const U64 = 2n ** 64n;
const encoder = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// keys and fingerprints

/** SHA-256 of a raw public key, hex, in groups of four: what users compare and pin. */
export async function fingerprint(publicKey: Uint8Array, crypto: CryptoProvider = defaultCryptoProvider()): Promise<string> {
  return groupsOfFour(toHex(await crypto.sha256(publicKey)));
}

function groupsOfFour(digest: string): string {
  const groups: string[] = [];
  for (let i = 0; i < digest.length; i += 4) groups.push(digest.slice(i, i + 4));
  return groups.join(":");
}

function pyRepr(value: unknown): string {
  return typeof value === "string" ? `'${value}'` : String(value);
}

/** A fingerprint as {@link fingerprint} writes it, from any spelling with colons or spaces and
 * either case; {@link ConfigError} for anything else (`normalise_fingerprint`). */
export function normaliseFingerprint(value: unknown): string {
  if (typeof value !== "string") throw new ConfigError(`server-key-fingerprint: expected a string, got ${pyRepr(value)}`);
  // (Python's str.lower() is Unicode-wide too; no non-ASCII letter lowers to an ASCII hex digit)
  const digest = value.replaceAll(":", "").replaceAll(" ", "").toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(digest)) {
    throw new ConfigError(`server-key-fingerprint: expected 64 hex digits (colons allowed), got ${pyRepr(value)}`);
  }
  return groupsOfFour(digest);
}

/** SHA-256 of the signed hello transcript: bound into every key of the session. */
export async function transcriptHash(transcript: Uint8Array, crypto: CryptoProvider = defaultCryptoProvider()): Promise<Uint8Array> {
  return crypto.sha256(transcript);
}

/** The server's Ed25519 signature of a hello transcript (`sign_transcript`; tests and tools). */
export async function signTranscript(identity: Ed25519Identity, transcript: Uint8Array): Promise<Uint8Array> {
  return identity.sign(concatBytes(HELLO_CONTEXT, transcript));
}

/** Check a hello transcript's signature (`verify_transcript`): {@link MalformedPayloadError}
 * for a key or signature of the wrong size, {@link AuthenticationError} if it does not hold. */
export async function verifyTranscript(identityPublic: Uint8Array, transcript: Uint8Array, signature: Uint8Array,
  crypto: CryptoProvider = defaultCryptoProvider()): Promise<void> {
  if (identityPublic.length !== 32 || signature.length !== SIGNATURE_BYTES) {
    throw new MalformedPayloadError("a server identity key is 32 bytes and a signature 64");
  }
  if (!await crypto.ed25519Verify(identityPublic, signature, concatBytes(HELLO_CONTEXT, transcript))) {
    throw new AuthenticationError("the hello's signature does not verify under the server's identity key: the hello "
      + "was rewritten on its way, or signed by another key; refused before acting on it");
  }
}

/** A node's Ed25519 signature binding its long-term identity to one session: the hello it
 * answers (by transcript hash) and the exchange key it answers with (`sign_node_claim`). */
export async function signNodeClaim(identity: Ed25519Identity, transcriptDigest: Uint8Array, nodePublic: Uint8Array): Promise<Uint8Array> {
  return identity.sign(concatBytes(NODE_CLAIM_CONTEXT, transcriptDigest, nodePublic));
}

/** Check {@link signNodeClaim} (`verify_node_claim`; tests and tools). */
export async function verifyNodeClaim(identityPublic: Uint8Array, transcriptDigest: Uint8Array, nodePublic: Uint8Array,
  signature: Uint8Array, crypto: CryptoProvider = defaultCryptoProvider()): Promise<void> {
  if (identityPublic.length !== 32 || signature.length !== SIGNATURE_BYTES) {
    throw new MalformedPayloadError("a node identity key is 32 bytes and a signature 64");
  }
  if (!await crypto.ed25519Verify(identityPublic, signature, concatBytes(NODE_CLAIM_CONTEXT, transcriptDigest, nodePublic))) {
    throw new AuthenticationError("the node's claim is not signed by the identity it names; refused");
  }
}

/** An id as Python's `_u64` takes it: an integer (bigint, or a safe-integer number) modulo 2^64,
 * 8 bytes big-endian; {@link ConfigError} for anything else. */
function u64(value: bigint | number, what: string): Uint8Array {
  const big = toBigInt(value, what);
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, ((big % U64) + U64) % U64);
  return out;
}

function toBigInt(value: bigint | number, what: string): bigint {
  if (typeof value === "bigint") return value;
  if (typeof value === "number" && Number.isSafeInteger(value)) return BigInt(value);
  throw new ConfigError(`${what} must be an integer, got ${pyRepr(value)}`);
}

/** The server's X25519 key for one run, from its Ed25519 identity seed and the run id
 * (`exchange_key_for_run`; what a server derives; tests and tools). */
export async function exchangeKeyForRun(identitySeed: Uint8Array, runId: bigint | number,
  crypto: CryptoProvider = defaultCryptoProvider()): Promise<Uint8Array> {
  return crypto.hkdfSha256(identitySeed, u64(runId, "run id"), encoder.encode("cola-fed v2 exchange key"), 32);
}

// ---------------------------------------------------------------------------------------------
// key derivation and associated data

/** What binds a session's keys: run, node, transcript hash and protocol version. */
export interface SessionBinding {
  runId: bigint | number;
  nodeId: bigint | number;
  /** SHA-256 of the signed hello transcript (32 bytes). */
  transcript: Uint8Array;
  version?: number;
}

/** One AES-256 key per direction from the X25519 shared secret and the transcript hash
 * (`derive_keys`). {@link ConfigError} for a transcript hash that is not 32 bytes. */
export async function deriveKeys(crypto: CryptoProvider, sharedSecret: Uint8Array, binding: SessionBinding): Promise<Record<Direction, Uint8Array>> {
  if (binding.transcript.length !== 32) throw new ConfigError("the transcript hash must be 32 bytes (SHA-256)");
  const version = binding.version ?? PROTOCOL_VERSION;
  const keys: Partial<Record<Direction, Uint8Array>> = {};
  for (const direction of [SERVER_TO_NODE, NODE_TO_SERVER] as const) {
    const nodeId = toBigInt(binding.nodeId, "node id");
    const info = concatBytes(encoder.encode(`cola-fed v${version} ${direction} node ${nodeId} `), binding.transcript);
    keys[direction] = await crypto.hkdfSha256(sharedSecret, u64(binding.runId, "run id"), info, 32);
  }
  return keys as Record<Direction, Uint8Array>;
}

/** What the tag binds besides the ciphertext (`associated_data`): `"cola-fed"`, version (u16),
 * run id, node id, counter (u64 each, big-endian), direction (u8), then the kind in UTF-8. */
export function associatedData(fields: { version: number; runId: bigint | number; nodeId: bigint | number;
  counter: bigint | number; direction: Direction; kind: string }): Uint8Array {
  const fixed = new Uint8Array(8 + 2 + 8 + 8 + 8 + 1);
  fixed.set(encoder.encode("cola-fed"));
  const view = new DataView(fixed.buffer);
  if (!Number.isInteger(fields.version) || fields.version < 0 || fields.version > 0xffff) {
    throw new ConfigError(`the protocol version must fit 16 bits, got ${fields.version}`);
  }
  view.setUint16(8, fields.version);
  fixed.set(u64(fields.runId, "run id"), 10);
  fixed.set(u64(fields.nodeId, "node id"), 18);
  const counter = toBigInt(fields.counter, "counter");
  if (counter < 0n || counter >= U64) throw new ConfigError(`a counter must fit 64 bits, got ${counter}`);
  view.setBigUint64(26, counter);
  view.setUint8(34, DIRECTIONS[fields.direction]);
  return concatBytes(fixed, encoder.encode(fields.kind));
}

/** The AES-GCM nonce of a message: 4 zero bytes, then its counter (u64, big-endian). */
export function nonce(counter: bigint): Uint8Array {
  const out = new Uint8Array(12);
  new DataView(out.buffer).setBigUint64(4, counter);
  return out;
}

// ---------------------------------------------------------------------------------------------
// the channel

/** The counters a channel must persist between messages. */
export class ChannelState {
  constructor(public sent = 0, public received = 0) {}
}

/** How to open a {@link SecureChannel}. */
export interface SecureChannelOptions {
  /** Where the primitives come from (default: {@link defaultCryptoProvider}). */
  crypto?: CryptoProvider;
  /** This side's raw 32-byte X25519 private key (the node's per-run key). */
  privateKey: Uint8Array;
  /** The other side's raw 32-byte X25519 public key. */
  peerPublic: Uint8Array;
  /** Which side this is: decides which direction it sends in. */
  role: "node" | "server";
  /** Flower's run id and the node's id: both bound into keys and associated data. */
  runId: bigint | number;
  nodeId: bigint | number;
  /** SHA-256 of the signed hello transcript the session was opened with. */
  transcript: Uint8Array;
  /** Counters from an earlier message of the same session. */
  state?: ChannelState;
  /** The protocol version (default {@link PROTOCOL_VERSION}). */
  version?: number;
  /** Largest envelope opened (default {@link DEFAULT_MAX_ENVELOPE_BYTES}). */
  maxEnvelopeBytes?: number;
}

/** Seal and open payloads between the server and one node, in one run (`SecureChannel`). */
export class SecureChannel {
  /** The counters to persist after each message. */
  readonly state: ChannelState;
  /** The direction this side sends in, and the one it receives in. */
  readonly sends: Direction;
  readonly receives: Direction;

  private constructor(
    private readonly crypto: CryptoProvider,
    private readonly sendKey: Uint8Array,
    private readonly receiveKey: Uint8Array,
    role: "node" | "server",
    private readonly runId: bigint | number,
    private readonly nodeId: bigint | number,
    private readonly version: number,
    private readonly maxEnvelopeBytes: number,
    state: ChannelState | undefined,
  ) {
    this.sends = role === "server" ? SERVER_TO_NODE : NODE_TO_SERVER;
    this.receives = role === "server" ? NODE_TO_SERVER : SERVER_TO_NODE;
    this.state = state ?? new ChannelState();
  }

  /** Agree keys with the peer and derive the session's two keys, making Python's checks in
   * Python's order: role ({@link ConfigError}), peer key ({@link MalformedPayloadError}),
   * the exchange (a low-order point: {@link MalformedPayloadError}), transcript hash and ids
   * ({@link ConfigError}). */
  static async create(options: SecureChannelOptions): Promise<SecureChannel> {
    const crypto = options.crypto ?? defaultCryptoProvider();
    if (options.role !== "server" && options.role !== "node") {
      throw new ConfigError(`role must be 'server' or 'node', got ${pyRepr(options.role)}`);
    }
    if (!(options.peerPublic instanceof Uint8Array) || options.peerPublic.length !== 32) {
      throw new MalformedPayloadError("a peer public key must be 32 raw bytes");
    }
    if (!(options.privateKey instanceof Uint8Array) || options.privateKey.length !== 32) {
      throw new ConfigError("an X25519 private key must be 32 raw bytes");
    }
    let shared: Uint8Array;
    try {
      shared = await crypto.x25519SharedSecret(options.privateKey, options.peerPublic);
    } catch (err) {
      throw new MalformedPayloadError(`unusable peer public key: ${(err as Error).message}`);
    }
    const version = options.version ?? PROTOCOL_VERSION;
    const keys = await deriveKeys(crypto, shared, { runId: options.runId, nodeId: options.nodeId, transcript: options.transcript, version });
    const sends = options.role === "server" ? SERVER_TO_NODE : NODE_TO_SERVER;
    const receives = options.role === "server" ? NODE_TO_SERVER : SERVER_TO_NODE;
    return new SecureChannel(crypto, keys[sends], keys[receives], options.role, options.runId, options.nodeId, version,
      options.maxEnvelopeBytes ?? DEFAULT_MAX_ENVELOPE_BYTES, options.state);
  }

  /** Encrypt and authenticate `plaintext` for the peer, bound to message `kind`: the envelope
   * `"CFS2" || counter (u64 BE) || ciphertext || tag`. The counter is taken before the first
   * await, so concurrent seals never share a nonce. */
  async seal(plaintext: Uint8Array, kind: string): Promise<Uint8Array> {
    const counter = this.state.sent + 1;
    this.state.sent = counter;
    const aad = associatedData({ version: this.version, runId: this.runId, nodeId: this.nodeId, counter, direction: this.sends, kind });
    const sealed = await this.crypto.aesGcmSeal(this.sendKey, nonce(BigInt(counter)), plaintext, aad);
    const header = new Uint8Array(HEADER_BYTES);
    header.set(MAGIC);
    new DataView(header.buffer).setBigUint64(4, BigInt(counter));
    return concatBytes(header, sealed);
  }

  /** Authenticate and decrypt a payload from the peer; the state advances only on success.
   * {@link MalformedPayloadError} (oversize, too short, bad magic), then
   * {@link AuthenticationError} (tampered, for another node, direction, kind, key or hello),
   * then {@link ReplayError} (a counter not above the last accepted). */
  async open(envelope: Uint8Array, kind: string): Promise<Uint8Array> {
    if (!(envelope instanceof Uint8Array)) throw new MalformedPayloadError(`a sealed payload must be bytes, got ${typeof envelope}`);
    if (envelope.length > this.maxEnvelopeBytes) {
      throw new MalformedPayloadError(`a sealed payload of ${envelope.length} bytes exceeds this node's cap of ${this.maxEnvelopeBytes} bytes`);
    }
    if (envelope.length < HEADER_BYTES + TAG_BYTES) throw new MalformedPayloadError(`a sealed payload of ${envelope.length} bytes is too short`);
    if (!MAGIC.every((b, i) => envelope[i] === b)) throw new MalformedPayloadError("not a cola-fed v2 sealed payload (bad magic bytes)");
    const counter = new DataView(envelope.buffer, envelope.byteOffset, HEADER_BYTES).getBigUint64(4);
    const aad = associatedData({ version: this.version, runId: this.runId, nodeId: this.nodeId, counter, direction: this.receives, kind });
    const plaintext = await this.crypto.aesGcmOpen(this.receiveKey, nonce(counter), envelope.subarray(HEADER_BYTES), aad);
    if (plaintext === null) {
      throw new AuthenticationError(`sealed '${kind}' payload failed authentication: tampered, meant for another `
        + "node or kind, or sealed under another key or hello");
    }
    if (counter <= BigInt(this.state.received)) {
      throw new ReplayError(`sealed '${kind}' payload #${counter} was already received or is out of order `
        + `(last accepted #${this.state.received})`);
    }
    this.state.received = Number(counter);
    return plaintext;
  }
}
