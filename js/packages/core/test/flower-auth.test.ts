/**
 * Flower's node-auth headers: keys in every format a node may be given, the public key PEM
 * as `cryptography` writes it, timestamps as `datetime.isoformat()` writes them, and ECDSA
 * signatures `cryptography` made that the DER conversion must read back (js/conformance/flower.json).
 * That Python accepts JavaScript's signatures is checked against a real SuperLink in flower-fleet.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  derToRawSignature,
  formatFlowerTimestamp,
  generateNodeAuthKey,
  importNodeAuthKey,
  nodeAuthHeaders,
  rawToDerSignature,
  verifyNodeSignature,
} from "../src/flower/auth.js";
import { base64Decode, fromHex, toHex } from "../src/util/bytes.js";
import { loadVectors } from "./flower-vectors.js";

const V = loadVectors();
const SIZES: Record<string, number> = { p384: 48, p256: 32 };

test("timestamps are written as Python's datetime.now(UTC).isoformat()", () => {
  for (const s of V.auth.timestamps) assert.equal(formatFlowerTimestamp(new Date(s.ms)), s.iso);
});

for (const [name, key] of Object.entries(V.auth.keys)) {
  test(`${name}: OpenSSH, PKCS#8 and SEC1 keys import to the same public key PEM`, async () => {
    for (const pem of [key.openssh, key.pkcs8, key.sec1]) {
      const imported = await importNodeAuthKey(pem);
      assert.equal(imported.publicKeyPem, key.public_pem);
      const data = new TextEncoder().encode("2025-03-01T02:04:06.789000+00:00");
      assert.ok(await verifyNodeSignature(key.public_pem, data, await imported.sign(data)));
    }
  });

  test(`${name}: cryptography's DER signatures read back, verify, and re-encode identically`, async () => {
    for (const s of key.signatures) {
      const der = fromHex(s.der);
      const raw = derToRawSignature(der, SIZES[name]!);
      assert.equal(toHex(rawToDerSignature(raw, SIZES[name]!)), s.der);
      assert.ok(await verifyNodeSignature(key.public_pem, fromHex(s.message), der));
      const other = fromHex(s.message);
      other[0]! ^= 1;
      assert.equal(await verifyNodeSignature(key.public_pem, other, der), false);
    }
  });
}

test("malformed DER signatures and keys are refused", async () => {
  const s = fromHex(V.auth.keys["p384"]!.signatures[0]!.der);
  assert.throws(() => derToRawSignature(s.subarray(0, s.length - 1), 48), { name: "AuthenticationError" });
  assert.throws(() => derToRawSignature(Uint8Array.of(...s, 0), 48), { name: "AuthenticationError" });
  assert.throws(() => derToRawSignature(Uint8Array.of(0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x01), 48), { name: "AuthenticationError" });
  await assert.rejects(importNodeAuthKey("not a key"), { name: "ConfigError" });
  await assert.rejects(importNodeAuthKey(V.auth.keys["p384"]!.public_pem), { name: "ConfigError" });
});

test("headers: base64 PEM public key, ISO timestamp, base64 DER signature over it", async () => {
  const key = await generateNodeAuthKey();
  const when = new Date(Date.UTC(2025, 2, 1, 2, 4, 6, 789));
  const headers = await nodeAuthHeaders(key, when);
  assert.equal(headers["flwr-timestamp"], "2025-03-01T02:04:06.789000+00:00");
  const pem = new TextDecoder().decode(base64Decode(headers["flwr-public-key"]!));
  assert.equal(pem, key.publicKeyPem);
  assert.match(pem, /^-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/]{64}\n[A-Za-z0-9+/=]{64}\n[A-Za-z0-9+/=]{32}\n-----END PUBLIC KEY-----\n$/);
  assert.ok(await verifyNodeSignature(pem, new TextEncoder().encode(headers["flwr-timestamp"]!), base64Decode(headers["flwr-signature"]!)));
});
