/**
 * The {@link CryptoProvider} for runtimes without WebCrypto's `crypto.subtle` (React Native on
 * Hermes, embedded engines): the audited pure-JavaScript `@noble` libraries (Paul Miller;
 * `@noble/curves` x25519 / ed25519 / P-256 / P-384 / P-521, `@noble/ciphers` AES-GCM,
 * `@noble/hashes` SHA-256 / HMAC / HKDF), pinned in package.json.
 *
 * Byte-compatible with {@link webCryptoProvider} and Python's `cryptography` (OpenSSL), as
 * test/noble.test.ts checks against the Python vectors with WebCrypto hidden:
 * - X25519 clamps the private key as RFC 7748 says, and refuses a low-order peer point (an
 *   all-zero shared secret) as `cryptography` does, with the same message.
 * - AES-256-GCM: ciphertext then the 16-byte tag; a tag that does not verify opens to null.
 * - Ed25519 signs deterministically (RFC 8032) from the 32-byte seed; verification is strict
 *   RFC 8032 (`zip215: false`: canonical S and points only, as OpenSSL), never ZIP-215.
 * - ECDSA (Flower's node auth) hashes with SHA-256 on every curve (noble's P-384 default would
 *   be SHA-384), signs with RFC 6979 nonces and accepts high-S signatures as OpenSSL does.
 *
 * What it cannot do: keep a private key non-extractable. The Ed25519 seed and the ECDSA scalar
 * live in a closure of this provider; an app keeps them at rest in the platform's secure
 * storage (Keychain, Android Keystore-wrapped) and hands them in at start.
 * It is slower than WebCrypto; a node's crypto is small (a few signatures and hashes per round,
 * the seal of each message) next to its training.
 */
import { gcm } from "@noble/ciphers/aes.js";
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { p256, p384, p521 } from "@noble/curves/nist.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { ECDSA_CURVES, type CryptoProvider, type EcdsaCurve, type EcdsaSigningKey, type Ed25519Identity } from "./provider.js";

/** Options of {@link nobleCryptoProvider}. */
export interface NobleProviderOptions {
  /**
   * The platform's source of cryptographically secure random bytes. Default:
   * `globalThis.crypto.getRandomValues` (React Native gets it from the
   * `react-native-get-random-values` polyfill or Expo's `expo-crypto`). Never `Math.random`.
   */
  randomBytes?: (length: number) => Uint8Array;
}

const ECDSA = { "P-256": p256, "P-384": p384, "P-521": p521 } as const;

/** `globalThis.crypto.getRandomValues` in 64 KiB pieces (its limit per call), or a clear error. */
function platformRandomBytes(length: number): Uint8Array {
  const source = (globalThis as unknown as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  const getRandomValues = source?.getRandomValues;
  if (typeof getRandomValues !== "function") {
    throw new Error("no secure random source: globalThis.crypto.getRandomValues is missing; install a polyfill "
      + "(React Native: import \"react-native-get-random-values\" first) or pass nobleCryptoProvider({ randomBytes })");
  }
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) getRandomValues.call(source, out.subarray(at, Math.min(length, at + 65536)));
  return out;
}

function ed25519Identity(seed: Uint8Array): Ed25519Identity {
  if (seed.length !== 32) throw new RangeError(`an Ed25519 seed is 32 bytes, got ${seed.length}`);
  const secret = seed.slice();
  return {
    publicKey: ed25519.getPublicKey(secret),
    async sign(message: Uint8Array): Promise<Uint8Array> {
      return ed25519.sign(message, secret);
    },
  };
}

function ecdsaKey(curve: EcdsaCurve, scalar: Uint8Array): EcdsaSigningKey {
  const size = ECDSA_CURVES[curve].size;
  if (scalar.length !== size) throw new RangeError(`a ${curve} private scalar is ${size} bytes, got ${scalar.length}`);
  const implementation = ECDSA[curve];
  if (!implementation.utils.isValidSecretKey(scalar)) throw new RangeError(`the ${curve} private scalar is 0 or not below the curve's order`);
  const secret = scalar.slice();
  return {
    publicPoint: implementation.getPublicKey(secret, false),
    async sign(message: Uint8Array): Promise<Uint8Array> {
      // prehash: false with our own SHA-256: Flower signs ECDSA-SHA256 on every curve
      return implementation.sign(sha256(message), secret, { prehash: false, format: "compact" });
    },
  };
}

/**
 * A {@link CryptoProvider} in pure JavaScript, for a runtime without `crypto.subtle`. Install it
 * before the core does anything: `setDefaultCryptoProvider(nobleCryptoProvider())`, and pass
 * it as `crypto` wherever an environment asks for one.
 */
export function nobleCryptoProvider(options: NobleProviderOptions = {}): CryptoProvider {
  const randomBytes = options.randomBytes ?? platformRandomBytes;
  const random = (length: number): Uint8Array => {
    const out = randomBytes(length);
    if (!(out instanceof Uint8Array) || out.length !== length) throw new Error(`the random source gave no ${length} bytes`);
    return out;
  };
  return {
    async sha256(data) {
      return sha256(data);
    },
    async hkdfSha256(ikm, salt, info, length) {
      return hkdf(sha256, ikm, salt, info, length);
    },
    async aesGcmSeal(key, nonce, plaintext, aad) {
      return gcm(key, nonce, aad).encrypt(plaintext);
    },
    async aesGcmOpen(key, nonce, sealed, aad) {
      try {
        return gcm(key, nonce, aad).decrypt(sealed);
      } catch {
        return null; // the tag does not verify (or the input is shorter than a tag)
      }
    },
    async x25519PublicKey(privateKey) {
      if (privateKey.length !== 32) throw new RangeError(`a raw private key is 32 bytes, got ${privateKey.length}`);
      return x25519.getPublicKey(privateKey);
    },
    async x25519SharedSecret(privateKey, peerPublic) {
      if (privateKey.length !== 32) throw new RangeError(`a raw private key is 32 bytes, got ${privateKey.length}`);
      let secret: Uint8Array;
      try {
        secret = x25519.getSharedSecret(privateKey, peerPublic);
      } catch {
        // noble refuses the low-order points before the ladder; they are exactly the peers
        // whose shared secret is all zeros, which `cryptography` refuses with this message
        throw new Error("Error computing shared key.");
      }
      if (secret.every((b) => b === 0)) throw new Error("Error computing shared key.");
      return secret;
    },
    async ed25519FromSeed(seed) {
      return ed25519Identity(seed); // `extractable` has no meaning here: the seed is in a closure either way
    },
    async ed25519Generate() {
      return ed25519Identity(random(32));
    },
    async ed25519Verify(publicKey, signature, message) {
      try {
        return ed25519.verify(signature, message, publicKey, { zip215: false });
      } catch {
        return false; // not a point on the curve, or a malformed signature
      }
    },
    randomBytes: random,
    async hmacSha256(key, data) {
      return hmac(sha256, key, data);
    },
    async ecdsaFromPrivateScalar(curve, scalar) {
      return ecdsaKey(curve, scalar);
    },
    async ecdsaGenerate(curve) {
      const implementation = ECDSA[curve];
      return ecdsaKey(curve, implementation.utils.randomSecretKey(random(implementation.lengths.seed!)));
    },
    async ecdsaVerify(curve, publicPoint, signature, message) {
      const size = ECDSA_CURVES[curve].size;
      if (publicPoint.length !== 2 * size + 1 || publicPoint[0] !== 0x04) {
        throw new RangeError(`expected an uncompressed ${curve} point (${2 * size + 1} bytes), got ${publicPoint.length} bytes`);
      }
      const implementation = ECDSA[curve];
      implementation.Point.fromBytes(publicPoint).assertValidity(); // throws when not on the curve
      if (signature.length !== 2 * size) return false;
      try {
        return implementation.verify(signature, sha256(message), publicPoint, { prehash: false, lowS: false, format: "compact" });
      } catch {
        return false; // r or s out of range
      }
    },
  };
}
