/**
 * The pure-JavaScript crypto provider (src/crypto/noble.ts), for runtimes without WebCrypto.
 *
 * 1. Here, with WebCrypto present: the noble provider gives WebCrypto's (OpenSSL's, so
 *    Python's) bytes for every primitive on random inputs, refuses the same X25519 peers,
 *    rejects the same damaged Ed25519 signatures, and each provider's ECDSA signatures verify
 *    under the other.
 * 2. In child processes where WebCrypto is really hidden (noble-hide-webcrypto.ts preloaded:
 *    `globalThis.crypto` has only `getRandomValues`; `webCryptoProvider()` gives the noble
 *    provider; the noble provider is the default): the real conformance tests rerun unchanged,
 *    the seal vectors, the node session against the Python node (every reply byte-equal), the
 *    node-auth keys and cryptography's signatures, and every other core test that needs no
 *    outside process.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { nobleCryptoProvider } from "../src/crypto/noble.js";
import { webCryptoProvider, type CryptoProvider, type EcdsaCurve } from "../src/crypto/provider.js";
import { generateNodeAuthKey, importNodeAuthKey, nodeAuthHeaders, verifyNodeSignature } from "../src/flower/auth.js";
import { base64Decode, fromHex, toHex } from "../src/util/bytes.js";
import { loadVectors } from "./flower-vectors.js";

const noble = nobleCryptoProvider();
const web = webCryptoProvider();
const random = (n: number) => web.randomBytes(n);

/** `action`'s result as comparable text: hex, a boolean, null, or the error's message. */
async function outcome(action: () => Promise<Uint8Array | boolean | null>): Promise<string> {
  try {
    const value = await action();
    return value instanceof Uint8Array ? toHex(value) : String(value);
  } catch (err) {
    return `error: ${(err as Error).message}`;
  }
}

async function same(label: string, action: (crypto: CryptoProvider) => Promise<Uint8Array | boolean | null>): Promise<string> {
  const [a, b] = [await outcome(() => action(noble)), await outcome(() => action(web))];
  assert.equal(a, b, label);
  return a;
}

test("hashes, HMAC, HKDF and AES-256-GCM: WebCrypto's bytes on random inputs", async () => {
  for (const size of [0, 1, 31, 32, 33, 64, 1000, 70_000]) {
    const data = random(size);
    await same(`sha256 ${size}`, (c) => c.sha256(data));
    const key = random(1 + (size % 97)); // WebCrypto refuses an empty HMAC key (Python's hmac takes one)
    await same(`hmac ${size}`, (c) => c.hmacSha256(key, data));
    for (const length of [16, 32, 100]) {
      const salt = random(size % 40);
      const info = random(size % 13);
      await same(`hkdf ${size}/${length}`, (c) => c.hkdfSha256(data, salt, info, length));
    }
    const aesKey = random(32);
    const nonce = random(12);
    const aad = random(size % 29);
    const sealed = await same(`seal ${size}`, (c) => c.aesGcmSeal(aesKey, nonce, data, aad));
    assert.equal(sealed.length, 2 * (size + 16), "ciphertext then the 16-byte tag");
    assert.equal(toHex((await noble.aesGcmOpen(aesKey, nonce, fromHex(sealed), aad))!), toHex(data));
    const tampered = fromHex(sealed);
    tampered[tampered.length - 1 - (size % 16)]! ^= 0x40;
    assert.equal(await same(`open tampered ${size}`, (c) => c.aesGcmOpen(aesKey, nonce, tampered, aad)), "null");
    assert.equal(await same(`open other aad ${size}`, (c) => c.aesGcmOpen(aesKey, nonce, fromHex(sealed), Uint8Array.of(...aad, 0))), "null");
  }
  assert.equal(await noble.aesGcmOpen(random(32), random(12), random(15), new Uint8Array()), null, "shorter than a tag");
});

test("X25519: same public keys and secrets, clamping included; the same low-order peers refused", async () => {
  for (let i = 0; i < 20; i++) {
    const mine = random(32);
    if (i === 0) mine.fill(0xff); // every bit that clamping clears or sets
    if (i === 1) mine.fill(0);
    const peerSecret = random(32);
    await same(`public ${i}`, (c) => c.x25519PublicKey(mine));
    const peer = await web.x25519PublicKey(peerSecret);
    assert.equal(await same(`shared ${i}`, (c) => c.x25519SharedSecret(mine, peer)),
      toHex(await web.x25519SharedSecret(peerSecret, await web.x25519PublicKey(mine))));
    const highBit = peer.slice();
    highBit[31]! |= 0x80; // RFC 7748: the top bit of u is ignored
    await same(`top bit ${i}`, (c) => c.x25519SharedSecret(mine, highBit));
  }
  const p = 2n ** 255n - 19n;
  const le = (n: bigint) => Uint8Array.from({ length: 32 }, (_, i) => Number((n >> BigInt(8 * i)) & 0xffn));
  // every point of small order (and non-canonical spellings of them): an all-zero secret,
  // refused by both (WebCrypto with its own message; the seal maps either to MalformedPayloadError)
  const lowOrder = [0n, 1n, p - 1n, p, p + 1n,
    325606250916557431795983626356110631294008115727848805560023387167927233504n,
    39382357235489614581723060781553021112529911719440698176882885853963445705823n];
  const mine = random(32);
  for (const u of lowOrder) {
    await assert.rejects(web.x25519SharedSecret(mine, le(u)), `WebCrypto refuses u=${u}`);
    await assert.rejects(noble.x25519SharedSecret(mine, le(u)), { message: "Error computing shared key." }, `noble refuses u=${u}`);
  }
  for (const u of [2n, 9n, 18n, p - 2n, p + 2n, 2n ** 255n - 1n]) {
    await same(`twist or non-canonical u=${u}`, (c) => c.x25519SharedSecret(mine, le(u)));
  }
});

test("Ed25519: same public keys and deterministic signatures; the same damaged signatures rejected", async () => {
  const L = 2n ** 252n + 27742317777372353535851937790883648493n;
  for (let i = 0; i < 10; i++) {
    const seed = random(32);
    const message = random(i * 37);
    const [a, b] = [await noble.ed25519FromSeed(seed), await web.ed25519FromSeed(seed)];
    assert.equal(toHex(a.publicKey), toHex(b.publicKey));
    const signature = await a.sign(message);
    assert.equal(toHex(signature), toHex(await b.sign(message)));
    assert.equal(await same(`verify ${i}`, (c) => c.ed25519Verify(a.publicKey, signature, message)), "true");
    const bad = signature.slice();
    bad[i]! ^= 1;
    assert.equal(await same(`flipped ${i}`, (c) => c.ed25519Verify(a.publicKey, bad, message)), "false");
    // S + L: the same signature with a non-canonical S, which RFC 8032 (and OpenSSL) rejects
    let s = 0n;
    for (let k = 31; k >= 0; k--) s = (s << 8n) | BigInt(signature[32 + k]!);
    const malleable = signature.slice();
    const sPlusL = s + L;
    for (let k = 0; k < 32; k++) malleable[32 + k] = Number((sPlusL >> BigInt(8 * k)) & 0xffn);
    assert.equal(await same(`S + L ${i}`, (c) => c.ed25519Verify(a.publicKey, malleable, message)), "false");
    await same(`short ${i}`, (c) => c.ed25519Verify(a.publicKey, signature.subarray(1), message));
    await same(`bad key ${i}`, (c) => c.ed25519Verify(a.publicKey.subarray(1), signature, message));
  }
  const generated = await noble.ed25519Generate();
  const message = random(50);
  assert.ok(await web.ed25519Verify(generated.publicKey, await generated.sign(message), message));
});

const CURVES: EcdsaCurve[] = ["P-256", "P-384", "P-521"];

test("ECDSA-SHA256 on P-256/384/521: same public points; each provider's signatures verify under the other", async () => {
  for (const curve of CURVES) {
    const size = { "P-256": 32, "P-384": 48, "P-521": 66 }[curve];
    for (let i = 0; i < 4; i++) {
      const scalar = random(size);
      if (curve === "P-521") scalar[0]! &= 0x01; // below the order
      const [a, b] = [await noble.ecdsaFromPrivateScalar(curve, scalar), await web.ecdsaFromPrivateScalar(curve, scalar)];
      assert.equal(toHex(a.publicPoint), toHex(b.publicPoint), `${curve} point`);
      const message = random(30 + i);
      for (const signer of [a, b]) {
        const signature = await signer.sign(message);
        assert.equal(signature.length, 2 * size);
        assert.equal(await same(`${curve} verify`, (c) => c.ecdsaVerify(curve, a.publicPoint, signature, message)), "true");
        const other = Uint8Array.of(...message, 1);
        assert.equal(await same(`${curve} other message`, (c) => c.ecdsaVerify(curve, a.publicPoint, signature, other)), "false");
      }
    }
    const offCurve = (await noble.ecdsaGenerate(curve)).publicPoint.slice();
    offCurve[offCurve.length - 1]! ^= 1;
    await assert.rejects(noble.ecdsaVerify(curve, offCurve, new Uint8Array(2 * size), random(4)));
    await assert.rejects(web.ecdsaVerify(curve, offCurve, new Uint8Array(2 * size), random(4)));
    await assert.rejects(noble.ecdsaFromPrivateScalar(curve, new Uint8Array(size)), RangeError, "a zero scalar");
  }
});

test("node auth on noble: Python's keys import to cryptography's public PEM; its signatures verify; headers verify under WebCrypto", async () => {
  const V = loadVectors();
  const data = new TextEncoder().encode("2025-03-01T02:04:06.789000+00:00");
  let checked = 0;
  for (const key of Object.values(V.auth.keys)) {
    for (const pem of [key.openssh, key.pkcs8, key.sec1]) {
      const imported = await importNodeAuthKey(pem, noble);
      assert.equal(imported.publicKeyPem, key.public_pem);
      assert.ok(await verifyNodeSignature(key.public_pem, data, await imported.sign(data), web));
    }
    for (const s of key.signatures) {
      assert.ok(await verifyNodeSignature(key.public_pem, fromHex(s.message), fromHex(s.der), noble));
      checked++;
    }
  }
  assert.ok(checked > 0);
  const key = await generateNodeAuthKey("P-384", noble);
  const headers = await nodeAuthHeaders(key);
  const pem = new TextDecoder().decode(base64Decode(headers["flwr-public-key"]!));
  assert.ok(await verifyNodeSignature(pem, new TextEncoder().encode(headers["flwr-timestamp"]!), base64Decode(headers["flwr-signature"]!), web));
});

test("a key file whose public point is not its scalar's: SEC1 refused (as cryptography), OpenSSH's point ignored", async () => {
  const V = loadVectors();
  const [p384, p256] = [V.auth.keys["p384"]!, V.auth.keys["p256"]!];
  const pointOf = (pem: string) => {
    const spki = base64Decode(pem.split("\n").slice(1, -2).join(""));
    return spki.subarray(spki.length - 97);
  };
  const other = (await noble.ecdsaGenerate("P-384")).publicPoint;
  const swap = (pem: string) => {
    const label = /-----BEGIN ([A-Z ]+)-----/.exec(pem)![1]!;
    const der = base64Decode(pem.split("\n").filter((l) => l !== "" && !l.startsWith("-----")).join(""));
    const text = toHex(der).replaceAll(toHex(pointOf(p384.public_pem)), toHex(other));
    assert.notEqual(text, toHex(der), "the key file holds its public point");
    return `-----BEGIN ${label}-----\n${Buffer.from(fromHex(text)).toString("base64")}\n-----END ${label}-----\n`;
  };
  for (const crypto of [noble, web]) {
    await assert.rejects(importNodeAuthKey(swap(p384.sec1), crypto), { name: "ConfigError" });
    await assert.rejects(importNodeAuthKey(swap(p384.pkcs8), crypto), { name: "ConfigError" });
    assert.equal((await importNodeAuthKey(swap(p384.openssh), crypto)).publicKeyPem, p384.public_pem);
  }
  assert.ok(p256 !== undefined);
});

// ---------------------------------------------------------------------------------------------
// the real conformance tests, in processes without WebCrypto

const HERE = fileURLToPath(new URL(".", import.meta.url));
const PRELOAD = new URL("./noble-hide-webcrypto.js", import.meta.url).href;
/** Test files that start outside processes (a real SuperLink): not rerun here. */
const OUTSIDE = new Set(["flower-fleet.test.js"]);

function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT; // the child reports to us, not to the runner above
  return env;
}

test("the preload really hides WebCrypto, and the core runs on the noble provider", () => {
  const script = `
    const core = await import(${JSON.stringify(new URL("../src/index.js", import.meta.url).href)});
    if (globalThis.crypto.subtle !== undefined) throw new Error("subtle visible");
    if (typeof globalThis.crypto.getRandomValues !== "function") throw new Error("no random source");
    const p = core.defaultCryptoProvider();
    const h = await core.contentHash(new TextEncoder().encode("abc"));
    console.log(JSON.stringify({ subtle: typeof globalThis.crypto.subtle, hash: h, same: p === core.defaultCryptoProvider() }));`;
  const out = execFileSync(process.execPath, ["--import", PRELOAD, "--input-type=module", "-e", script], { env: childEnv(), encoding: "utf8" });
  assert.deepEqual(JSON.parse(out.trim()), {
    subtle: "undefined", hash: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", same: true,
  });
});

test("the conformance tests rerun with WebCrypto hidden: seal vectors, node session, node auth and the rest", () => {
  const files = readdirSync(HERE).filter((f) => f.endsWith(".test.js") && !f.startsWith("noble") && !OUTSIDE.has(f)).sort();
  for (const needed of ["seal.test.js", "node-conformance.test.js", "flower-auth.test.js", "identity.test.js"]) {
    assert.ok(files.includes(needed), `${needed} is rerun`);
  }
  const counts: string[] = [];
  let total = 0;
  for (const file of files) {
    const run = spawnSync(process.execPath, ["--import", PRELOAD, "--test-reporter=tap", `${HERE}${file}`], {
      env: childEnv(), encoding: "utf8", maxBuffer: 64 * 2 ** 20,
    });
    const count = (name: string) => Number(new RegExp(`^# ${name} (\\d+)$`, "m").exec(run.stdout)?.[1] ?? NaN);
    const [tests, pass, fail] = [count("tests"), count("pass"), count("fail")];
    assert.equal(run.status, 0, `${file} failed without WebCrypto:\n${run.stdout.slice(-4000)}\n${run.stderr.slice(-2000)}`);
    assert.ok(tests > 0 && pass === tests && fail === 0, `${file}: ${tests} tests, ${pass} passed`);
    counts.push(`${file} ${pass}/${tests}`);
    total += pass;
  }
  console.log(`# without WebCrypto, on the noble provider: ${total} tests passed in ${files.length} files (${counts.join(", ")})`);
});

test("the React Native sketch (docs/edge.md) runs without WebCrypto: state store, identity kept, Fleet calls signed", async () => {
  const script = `
    import * as ort from "onnxruntime-node";
    const sketch = await import(${JSON.stringify(new URL("./noble-react-native.js", import.meta.url).href)});
    const memory = () => { const m = new Map(); return { m, getItem: async (k) => m.get(k) ?? null,
      setItem: async (k, v) => { m.set(k, v); }, removeItem: async (k) => { m.delete(k); } }; };
    const [secure, files] = [memory(), memory()];
    const calls = [];
    const fetch = async (url, init) => { calls.push({ url, headers: init.headers }); return new Response(null, { status: 401 }); };
    const options = { superlink: "https://superlink.example:9095", csv: "x,y\\n1,2\\n", secure, files, fetch,
      nodeConfig: { "partition-id": 0n, "num-partitions": 1n, "data-path": "data.csv" },
      createSession: (model, o) => ort.InferenceSession.create(model, o) };
    const first = await sketch.createReactNativeNode(options);
    const seed = secure.m.get("cola-fed.identity-seed");
    await sketch.createReactNativeNode(options);
    const store = await sketch.AppNodeStore.open(files, secure, (await import(${JSON.stringify(new URL("../src/index.js", import.meta.url).href)})).defaultCryptoProvider());
    await store.save("a.state", Uint8Array.of(1, 2)); await store.save("b.state", Uint8Array.of(3));
    await store.setAside("a.state");
    const exit = await first.supernode.run();
    console.log(JSON.stringify({ subtle: typeof globalThis.crypto.subtle, sameSeed: seed === secure.m.get("cola-fed.identity-seed"),
      macKey: secure.m.get("cola-fed.state-mac-key"), mac: Buffer.from(await store.mac(Uint8Array.of(9))).toString("hex"),
      list: await store.list(), loaded: [...(await store.load("b.state"))], exit: exit.code, call: calls[0] }));`;
  const out = execFileSync(process.execPath, ["--import", PRELOAD, "--input-type=module", "-e", script],
    { env: childEnv(), encoding: "utf8", cwd: HERE });
  const got = JSON.parse(out.trim().split("\n").at(-1)!) as {
    subtle: string; sameSeed: boolean; macKey: string; mac: string; list: string[]; loaded: number[]; exit: number;
    call: { url: string; headers: Record<string, string> };
  };
  assert.equal(got.subtle, "undefined");
  assert.ok(got.sameSeed, "the identity seed is made once and kept");
  assert.equal(got.mac, toHex(await web.hmacSha256(base64Decode(got.macKey), Uint8Array.of(9))));
  assert.deepEqual(got.list, ["b.state"]);
  assert.deepEqual(got.loaded, [3]);
  assert.equal(got.exit, 1, "a 401 stops the node");
  assert.equal(got.call.url, "https://superlink.example:9095/v1/fleet/register-node");
  const pem = new TextDecoder().decode(base64Decode(got.call.headers["flwr-public-key"]!));
  assert.ok(await verifyNodeSignature(pem, new TextEncoder().encode(got.call.headers["flwr-timestamp"]!),
    base64Decode(got.call.headers["flwr-signature"]!), web), "WebCrypto accepts the noble node's Fleet signature");
});
