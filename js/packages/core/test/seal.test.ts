import assert from "node:assert/strict";
import { test } from "node:test";
import { webCryptoProvider } from "../src/crypto/provider.js";
import {
  ChannelState, SecureChannel, associatedData, deriveKeys, exchangeKeyForRun, fingerprint, normaliseFingerprint,
  signNodeClaim, signTranscript, transcriptHash, verifyNodeClaim, verifyTranscript, type Direction,
} from "../src/wire/seal.js";
import { WIRE, assertRefused, hex, toHexString } from "./wire-vectors.js";

const S = WIRE.seal;
const crypto = webCryptoProvider();
const runId = BigInt(S.run_id);
const nodeId = BigInt(S.node_id);

interface Envelope { kind: string; plaintext: string; envelope: string }

function nodeChannel(options: { nodeId?: bigint; transcript?: Uint8Array; state?: ChannelState } = {}): Promise<SecureChannel> {
  return SecureChannel.create({
    crypto, privateKey: hex(S.node_key), peerPublic: hex(S.server_exchange_public), role: "node", runId,
    nodeId: options.nodeId ?? nodeId, transcript: options.transcript ?? hex(S.transcript_hash), state: options.state,
  });
}

test("keys: the server's run exchange key, public keys, shared secret, transcript hash, session keys", async () => {
  const exchange = await exchangeKeyForRun(hex(S.server_seed), runId, crypto);
  assert.equal(toHexString(exchange), S.server_exchange_key);
  assert.equal(toHexString(await crypto.x25519PublicKey(exchange)), S.server_exchange_public);
  assert.equal(toHexString(await crypto.x25519PublicKey(hex(S.node_key))), S.node_public);
  const shared = await crypto.x25519SharedSecret(hex(S.node_key), hex(S.server_exchange_public));
  assert.equal(toHexString(shared), S.shared_secret);
  assert.equal(toHexString(await transcriptHash(hex(S.transcript), crypto)), S.transcript_hash);
  const keys = await deriveKeys(crypto, shared, { runId, nodeId, transcript: hex(S.transcript_hash) });
  for (const direction of Object.keys(S.keys) as Direction[]) assert.equal(toHexString(keys[direction]), S.keys[direction]);
});

test("associated data, byte for byte", () => {
  for (const v of S.aad as { version: number; run_id: string; node_id: string; counter: string; direction: Direction; kind: string; aad: string }[]) {
    const aad = associatedData({ version: v.version, runId: BigInt(v.run_id), nodeId: BigInt(v.node_id), counter: BigInt(v.counter), direction: v.direction, kind: v.kind });
    assert.equal(toHexString(aad), v.aad);
  }
});

test("a node opens the server's envelopes and seals Python's exact bytes; a JS server does too", async () => {
  const node = await nodeChannel();
  for (const e of S.server_envelopes as Envelope[]) assert.equal(toHexString(await node.open(hex(e.envelope), e.kind)), e.plaintext);
  assert.equal(node.state.received, S.server_envelopes.length);
  const sealer = await nodeChannel();
  for (const e of S.node_envelopes as Envelope[]) assert.equal(toHexString(await sealer.seal(hex(e.plaintext), e.kind)), e.envelope);
  assert.equal(sealer.state.sent, S.node_envelopes.length);
  const server = await SecureChannel.create({ crypto, privateKey: hex(S.server_exchange_key), peerPublic: hex(S.node_public),
    role: "server", runId, nodeId, transcript: hex(S.transcript_hash) });
  for (const e of S.server_envelopes as Envelope[]) assert.equal(toHexString(await server.seal(hex(e.plaintext), e.kind)), e.envelope);
  for (const e of S.node_envelopes as Envelope[]) assert.equal(toHexString(await server.open(hex(e.envelope), e.kind)), e.plaintext);
});

const hostileOpens = Object.entries(S.hostile_opens as Record<string, { envelope: string; kind: string; plaintext?: string; error?: string }[]>);

test(`${hostileOpens.length} hostile opening sequences: each step as Python (plaintext or error class)`, async () => {
  for (const [label, steps] of hostileOpens) {
    const channel = await nodeChannel({
      nodeId: label === "wrong_node" ? nodeId - 1n : nodeId,
      transcript: label === "wrong_transcript" ? new Uint8Array(32) : hex(S.transcript_hash),
    });
    for (const step of steps) {
      if (step.error !== undefined) await assertRefused(() => channel.open(hex(step.envelope), step.kind), step.error, label);
      else assert.equal(toHexString(await channel.open(hex(step.envelope), step.kind)), step.plaintext, label);
    }
  }
});

test("hostile channel parameters are refused with Python's error class", async () => {
  for (const c of S.hostile_channels as { label: string; peer: string; role: string; transcript: string; error: string }[]) {
    await assertRefused(() => SecureChannel.create({ crypto, privateKey: hex(S.node_key), peerPublic: hex(c.peer),
      role: c.role as "node", runId, nodeId, transcript: hex(c.transcript) }), c.error, c.label);
  }
});

test("oversized envelopes are refused before decrypting", async () => {
  const channel = await SecureChannel.create({ crypto, privateKey: hex(S.node_key), peerPublic: hex(S.server_exchange_public),
    role: "node", runId, nodeId, transcript: hex(S.transcript_hash), maxEnvelopeBytes: 40 });
  const big = (S.server_envelopes as Envelope[]).find((e) => e.envelope.length / 2 > 40) as Envelope;
  await assertRefused(() => channel.open(hex(big.envelope), big.kind), "MalformedPayloadError");
  assert.equal(channel.state.received, 0);
});

test("a resumed channel continues from its persisted counters", async () => {
  const envelopes = S.server_envelopes as Envelope[];
  const resumed = await nodeChannel({ state: new ChannelState(0, 2) });
  await assertRefused(() => resumed.open(hex((envelopes[1] as Envelope).envelope), "train"), "ReplayError");
  assert.equal(toHexString(await resumed.open(hex((envelopes[2] as Envelope).envelope), "train")), (envelopes[2] as Envelope).plaintext);
  const sealer = await nodeChannel({ state: new ChannelState(1, 0) });
  const second = (S.node_envelopes as Envelope[])[1] as Envelope;
  assert.equal(toHexString(await sealer.seal(hex(second.plaintext), second.kind)), second.envelope);
});

test("the hello transcript signature verifies, and hostile variants are refused", async () => {
  const identity = await crypto.ed25519FromSeed(hex(S.server_seed));
  assert.equal(toHexString(identity.publicKey), S.server_identity_public);
  assert.equal(toHexString(await signTranscript(identity, hex(S.transcript))), S.transcript_signature);
  await verifyTranscript(hex(S.server_identity_public), hex(S.transcript), hex(S.transcript_signature), crypto);
  for (const v of S.transcript_hostile as { public: string; transcript: string; signature: string; error: string }[]) {
    await assertRefused(() => verifyTranscript(hex(v.public), hex(v.transcript), hex(v.signature), crypto), v.error);
  }
});

test("the node claim is Python's signature (Ed25519 is deterministic), from a non-extractable key", async () => {
  const identity = await crypto.ed25519FromSeed(hex(S.node_identity_seed));
  assert.equal(toHexString(identity.publicKey), S.node_identity_public);
  const claim = await signNodeClaim(identity, hex(S.transcript_hash), hex(S.node_public));
  assert.equal(toHexString(claim), S.node_claim);
  await verifyNodeClaim(hex(S.node_identity_public), hex(S.transcript_hash), hex(S.node_public), claim, crypto);
  await assertRefused(() => verifyNodeClaim(hex(S.node_identity_public), hex(S.transcript_hash), hex(S.server_exchange_public), claim, crypto),
    "AuthenticationError");
  const generated = await crypto.ed25519Generate();
  assert.equal(generated.publicKey.length, 32);
  await verifyNodeClaim(generated.publicKey, hex(S.transcript_hash), hex(S.node_public),
    await signNodeClaim(generated, hex(S.transcript_hash), hex(S.node_public)), crypto);
});

test("fingerprints and their normal form", async () => {
  assert.equal(await fingerprint(hex(S.server_identity_public), crypto), S.fingerprints.server_identity);
  assert.equal(await fingerprint(hex(S.node_public), crypto), S.fingerprints.node_key);
  for (const v of S.normalise_ok as { input: string; output: string }[]) assert.equal(normaliseFingerprint(v.input), v.output);
  for (const v of S.normalise_bad as { input: string; error: string }[]) await assertRefused(() => normaliseFingerprint(v.input), v.error, v.input);
  await assertRefused(() => normaliseFingerprint(42), "ConfigError");
});
