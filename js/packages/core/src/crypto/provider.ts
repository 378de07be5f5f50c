/**
 * The cryptographic primitives the seal and the hello need, behind one interface, so that the
 * platform decides where they come from: WebCrypto (`crypto.subtle`: Node.js, browsers) here,
 * the audited pure-JavaScript `@noble` libraries in `noble.ts` where there is no `crypto.subtle`
 * (React Native, Hermes). Nothing here is a primitive of its own: the core reaches every hash,
 * MAC, cipher and signature through a provider, the one passed or {@link defaultCryptoProvider}.
 *
 * Keys cross the interface as raw bytes, except a node's long-term Ed25519 identity, which is
 * an {@link Ed25519Identity}: only its public key and a `sign` function, so a browser can keep
 * the private key a non-extractable `CryptoKey` (e.g. in IndexedDB) that no script can read.
 * The same holds for Flower's node-auth ECDSA key ({@link EcdsaSigningKey}).
 */

/** A NIST curve Flower's node authentication signs with (Flower makes P-384 keys). */
export type EcdsaCurve = "P-256" | "P-384" | "P-521";

/** An ECDSA signing key (Flower's SuperNode authentication): its public point and a signer.
 * The private scalar never has to leave the platform's key store. */
export interface EcdsaSigningKey {
  /** The uncompressed public point, `0x04 || x || y` (SEC 1). */
  readonly publicPoint: Uint8Array;
  /** The ECDSA-SHA256 signature of `message` as raw `r || s`, each left-padded to the curve's size. */
  sign(message: Uint8Array): Promise<Uint8Array>;
}

/** A long-term Ed25519 signing key: its raw 32-byte public key and a signer. The private key
 * never has to leave the platform's key store. */
export interface Ed25519Identity {
  /** The raw 32-byte public key. */
  readonly publicKey: Uint8Array;
  /** The 64-byte Ed25519 signature of `message` (deterministic, RFC 8032). */
  sign(message: Uint8Array): Promise<Uint8Array>;
}

/** Every primitive cola-fed's wire uses. Implementations must be byte-compatible with
 * Python's `cryptography` (OpenSSL): same HKDF, same AES-GCM layout (ciphertext then 16-byte
 * tag), same X25519 clamping, same Ed25519. */
export interface CryptoProvider {
  /** SHA-256 of `data`. */
  sha256(data: Uint8Array): Promise<Uint8Array>;
  /** HKDF-SHA256 (RFC 5869) of `ikm` with `salt` and `info`, `length` bytes. */
  hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Promise<Uint8Array>;
  /** AES-256-GCM encryption with a 12-byte nonce: ciphertext followed by the 16-byte tag. */
  aesGcmSeal(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array>;
  /** AES-256-GCM decryption of ciphertext-and-tag; null when the tag does not verify. */
  aesGcmOpen(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Promise<Uint8Array | null>;
  /** The raw X25519 public key of a raw 32-byte private key (any 32 bytes; clamped). */
  x25519PublicKey(privateKey: Uint8Array): Promise<Uint8Array>;
  /** The X25519 shared secret; throws when it is all zeros (a low-order peer point), as
   * Python's `cryptography` refuses it. */
  x25519SharedSecret(privateKey: Uint8Array, peerPublic: Uint8Array): Promise<Uint8Array>;
  /** An Ed25519 identity from its 32-byte seed (the raw private key). `extractable: false`
   * (the default) keeps the private key unreadable once imported. */
  ed25519FromSeed(seed: Uint8Array, options?: { extractable?: boolean }): Promise<Ed25519Identity>;
  /** A fresh Ed25519 identity whose private key cannot be exported. */
  ed25519Generate(): Promise<Ed25519Identity>;
  /** Whether `signature` is `publicKey`'s Ed25519 signature of `message` (false, never an
   * error, for a malformed key or signature). */
  ed25519Verify(publicKey: Uint8Array, signature: Uint8Array, message: Uint8Array): Promise<boolean>;
  /** `length` cryptographically random bytes. */
  randomBytes(length: number): Uint8Array;
  /** HMAC-SHA256 (RFC 2104) of `data` under `key` (a NodeStore's state-file tag). */
  hmacSha256(key: Uint8Array, data: Uint8Array): Promise<Uint8Array>;
  /** The ECDSA key of a private scalar (big-endian, the curve's size); its public point is
   * computed from the scalar. Throws when the scalar is 0 or not below the curve's order. */
  ecdsaFromPrivateScalar(curve: EcdsaCurve, scalar: Uint8Array): Promise<EcdsaSigningKey>;
  /** A fresh ECDSA key whose private scalar cannot be exported. */
  ecdsaGenerate(curve: EcdsaCurve): Promise<EcdsaSigningKey>;
  /** Whether raw `r || s` `signature` is `publicPoint`'s ECDSA-SHA256 signature of `message`
   * (high-S signatures accepted, as OpenSSL accepts them). Throws when `publicPoint` is not an
   * uncompressed point on `curve`; false for a signature of the wrong size. */
  ecdsaVerify(curve: EcdsaCurve, publicPoint: Uint8Array, signature: Uint8Array, message: Uint8Array): Promise<boolean>;
}

/** Each ECDSA curve's byte size and its named-curve OID (DER, tag included). */
export const ECDSA_CURVES: Readonly<Record<EcdsaCurve, { size: number; oid: Uint8Array }>> = {
  "P-256": { size: 32, oid: Uint8Array.of(0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07) },
  "P-384": { size: 48, oid: Uint8Array.of(0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22) },
  "P-521": { size: 66, oid: Uint8Array.of(0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23) },
};

// ---------------------------------------------------------------------------------------------
// the slice of WebCrypto used here, typed structurally: the core compiles without the DOM
// library (Node's typings name these types differently), and any WebCrypto fits

/** An opaque WebCrypto key (`CryptoKey`). */
export interface WebCryptoKey {
  readonly type: string;
}

/** A WebCrypto key pair (`CryptoKeyPair`). */
export interface WebCryptoKeyPair {
  readonly publicKey: WebCryptoKey;
  readonly privateKey: WebCryptoKey;
}

/** The methods of `crypto.subtle` this provider calls. */
export interface WebSubtle {
  digest(algorithm: string, data: Uint8Array<ArrayBuffer>): Promise<ArrayBuffer>;
  importKey(format: "raw" | "pkcs8", keyData: Uint8Array<ArrayBuffer>, algorithm: string | { name: string },
    extractable: boolean, usages: string[]): Promise<WebCryptoKey>;
  importKey(format: "jwk", keyData: WebJwk, algorithm: { name: string }, extractable: boolean, usages: string[]): Promise<WebCryptoKey>;
  exportKey(format: "raw", key: WebCryptoKey): Promise<ArrayBuffer>;
  exportKey(format: "jwk", key: WebCryptoKey): Promise<WebJwk>;
  deriveBits(algorithm: object, key: WebCryptoKey, length: number): Promise<ArrayBuffer>;
  encrypt(algorithm: object, key: WebCryptoKey, data: Uint8Array<ArrayBuffer>): Promise<ArrayBuffer>;
  decrypt(algorithm: object, key: WebCryptoKey, data: Uint8Array<ArrayBuffer>): Promise<ArrayBuffer>;
  sign(algorithm: object, key: WebCryptoKey, data: Uint8Array<ArrayBuffer>): Promise<ArrayBuffer>;
  verify(algorithm: object, key: WebCryptoKey, signature: Uint8Array<ArrayBuffer>, data: Uint8Array<ArrayBuffer>): Promise<boolean>;
  generateKey(algorithm: object, extractable: boolean, usages: string[]): Promise<unknown>;
}

/** A WebCrypto JSON Web Key, as far as this provider reads or writes one. */
export interface WebJwk {
  kty?: string;
  crv?: string;
  x?: string;
  y?: string;
  d?: string;
  ext?: boolean;
}

/** `globalThis.crypto` as far as this provider needs it. */
export interface WebCrypto {
  readonly subtle: WebSubtle;
  getRandomValues(array: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer>;
}

/** The platform's WebCrypto, if it has one. */
function platformCrypto(): WebCrypto | undefined {
  return (globalThis as unknown as { crypto?: WebCrypto }).crypto;
}

// PKCS#8 wrappers of a raw 32-byte private key (RFC 8410): WebCrypto imports no raw private keys
const X25519_PKCS8 = Uint8Array.of(0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20);
const ED25519_PKCS8 = Uint8Array.of(0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20);

function pkcs8(prefix: Uint8Array, raw: Uint8Array): Uint8Array {
  if (raw.length !== 32) throw new RangeError(`a raw private key is 32 bytes, got ${raw.length}`);
  const out = new Uint8Array(prefix.length + 32);
  out.set(prefix);
  out.set(raw, prefix.length);
  return out;
}

/** DER `tag || length || body` (definite, minimal length). */
function derNode(tag: number, body: Uint8Array): Uint8Array {
  const length: number[] = [];
  for (let n = body.length; n > 0; n = Math.floor(n / 256)) length.unshift(n & 0xff);
  const head = body.length < 0x80 ? [body.length] : [0x80 | length.length, ...length];
  const out = new Uint8Array(1 + head.length + body.length);
  out.set([tag, ...head]);
  out.set(body, 1 + head.length);
  return out;
}

const EC_PUBLIC_KEY_OID = Uint8Array.of(0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01);

/** PKCS#8 `PrivateKeyInfo` of an EC private scalar, without the public point: WebCrypto
 * imports no raw EC private keys, and computes the point itself (RFC 5915, RFC 5208). */
function ecPkcs8(curve: EcdsaCurve, scalar: Uint8Array): Uint8Array {
  const { size, oid } = ECDSA_CURVES[curve];
  if (scalar.length !== size) throw new RangeError(`a ${curve} private scalar is ${size} bytes, got ${scalar.length}`);
  const cat = (...parts: Uint8Array[]) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
    return out;
  };
  const ecPrivateKey = derNode(0x30, cat(derNode(0x02, Uint8Array.of(1)), derNode(0x04, scalar)));
  const algorithm = derNode(0x30, cat(EC_PUBLIC_KEY_OID, oid));
  return derNode(0x30, cat(derNode(0x02, Uint8Array.of(0)), algorithm, derNode(0x04, ecPrivateKey)));
}

function base64UrlDecode(text: string): Uint8Array {
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function base64UrlEncode(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A copy of `bytes` in a buffer of its own (WebCrypto wants a plain ArrayBuffer-backed view). */
function own(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(bytes);
}

/** An {@link Ed25519Identity} over a WebCrypto key pair, e.g. a non-extractable one a browser
 * keeps in IndexedDB. */
export async function ed25519IdentityFromKeyPair(pair: WebCryptoKeyPair, subtle: WebSubtle | undefined = platformCrypto()?.subtle): Promise<Ed25519Identity> {
  if (subtle === undefined) throw new Error("WebCrypto (crypto.subtle) is not available here");
  const publicKey = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
  const privateKey = pair.privateKey;
  return {
    publicKey,
    async sign(message: Uint8Array): Promise<Uint8Array> {
      return new Uint8Array(await subtle.sign({ name: "Ed25519" }, privateKey, own(message)));
    },
  };
}

/**
 * The {@link CryptoProvider} over WebCrypto (`globalThis.crypto`, or the one given): Node.js
 * 20+, and browsers with X25519/Ed25519 in `crypto.subtle` (Chromium 137+, Firefox 130+,
 * Safari 17+), in a secure context.
 */
export function webCryptoProvider(crypto: WebCrypto | undefined = platformCrypto()): CryptoProvider {
  if (crypto?.subtle === undefined) {
    throw new Error("WebCrypto (crypto.subtle) is not available here: use a secure context (https or localhost), "
      + "or pass a pure-JavaScript CryptoProvider");
  }
  const subtle = crypto.subtle;
  const aesKeys = new WeakMap<Uint8Array, Promise<WebCryptoKey>>();
  const aesKey = (key: Uint8Array): Promise<WebCryptoKey> => {
    const cached = aesKeys.get(key);
    if (cached !== undefined) return cached;
    const imported = subtle.importKey("raw", own(key), { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
    aesKeys.set(key, imported);
    return imported;
  };
  return {
    async sha256(data) {
      return new Uint8Array(await subtle.digest("SHA-256", own(data)));
    },
    async hkdfSha256(ikm, salt, info, length) {
      const key = await subtle.importKey("raw", own(ikm), "HKDF", false, ["deriveBits"]);
      const bits = await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: own(salt), info: own(info) }, key, 8 * length);
      return new Uint8Array(bits);
    },
    async aesGcmSeal(key, nonce, plaintext, aad) {
      const sealed = await subtle.encrypt({ name: "AES-GCM", iv: own(nonce), additionalData: own(aad), tagLength: 128 },
        await aesKey(key), own(plaintext));
      return new Uint8Array(sealed);
    },
    async aesGcmOpen(key, nonce, sealed, aad) {
      const cryptoKey = await aesKey(key);
      try {
        const plain = await subtle.decrypt({ name: "AES-GCM", iv: own(nonce), additionalData: own(aad), tagLength: 128 },
          cryptoKey, own(sealed));
        return new Uint8Array(plain);
      } catch {
        return null; // OperationError: the tag does not verify
      }
    },
    async x25519PublicKey(privateKey) {
      const key = await subtle.importKey("pkcs8", own(pkcs8(X25519_PKCS8, privateKey)), { name: "X25519" }, true, ["deriveBits"]);
      const jwk = await subtle.exportKey("jwk", key);
      if (typeof jwk.x !== "string") throw new Error("WebCrypto exported no X25519 public key");
      return base64UrlDecode(jwk.x);
    },
    async x25519SharedSecret(privateKey, peerPublic) {
      const own32 = await subtle.importKey("pkcs8", own(pkcs8(X25519_PKCS8, privateKey)), { name: "X25519" }, false, ["deriveBits"]);
      const peer = await subtle.importKey("raw", own(peerPublic), { name: "X25519" }, true, []);
      const secret = new Uint8Array(await subtle.deriveBits({ name: "X25519", public: peer }, own32, 256));
      if (secret.every((b) => b === 0)) throw new Error("Error computing shared key.");
      return secret;
    },
    async ed25519FromSeed(seed, options = {}) {
      const der = own(pkcs8(ED25519_PKCS8, seed));
      const readable = await subtle.importKey("pkcs8", der, { name: "Ed25519" }, true, ["sign"]);
      const jwk = await subtle.exportKey("jwk", readable);
      if (typeof jwk.x !== "string") throw new Error("WebCrypto exported no Ed25519 public key");
      const privateKey = options.extractable ? readable
        : await subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
      const publicKey = base64UrlDecode(jwk.x);
      return {
        publicKey,
        async sign(message) {
          return new Uint8Array(await subtle.sign({ name: "Ed25519" }, privateKey, own(message)));
        },
      };
    },
    async ed25519Generate() {
      const pair = await subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]) as WebCryptoKeyPair;
      return ed25519IdentityFromKeyPair(pair, subtle);
    },
    async ed25519Verify(publicKey, signature, message) {
      try {
        const key = await subtle.importKey("raw", own(publicKey), { name: "Ed25519" }, true, ["verify"]);
        return await subtle.verify({ name: "Ed25519" }, key, own(signature), own(message));
      } catch {
        return false; // not a point on the curve, or a malformed signature
      }
    },
    randomBytes(length) {
      const out = new Uint8Array(length);
      for (let at = 0; at < length; at += 65536) crypto.getRandomValues(out.subarray(at, Math.min(length, at + 65536)));
      return out;
    },
    async hmacSha256(key, data) {
      const imported = await subtle.importKey("raw", own(key), { name: "HMAC", hash: "SHA-256" } as { name: string }, false, ["sign"]);
      return new Uint8Array(await subtle.sign({ name: "HMAC" }, imported, own(data)));
    },
    async ecdsaFromPrivateScalar(curve, scalar) {
      const algorithm = { name: "ECDSA", namedCurve: curve };
      const readable = await subtle.importKey("pkcs8", own(ecPkcs8(curve, scalar)), algorithm, true, ["sign"]);
      // the JWK export carries the point WebCrypto computed from the scalar
      const jwk = await subtle.exportKey("jwk", readable);
      const privateKey = await subtle.importKey("jwk", jwk, algorithm, false, ["sign"]);
      return webEcdsaKey(subtle, privateKey, ecPoint(curve, jwk));
    },
    async ecdsaGenerate(curve) {
      const pair = await subtle.generateKey({ name: "ECDSA", namedCurve: curve }, false, ["sign", "verify"]) as WebCryptoKeyPair;
      return webEcdsaKey(subtle, pair.privateKey, new Uint8Array(await subtle.exportKey("raw", pair.publicKey)));
    },
    async ecdsaVerify(curve, publicPoint, signature, message) {
      const size = ECDSA_CURVES[curve].size;
      if (publicPoint.length !== 2 * size + 1 || publicPoint[0] !== 0x04) {
        throw new RangeError(`expected an uncompressed ${curve} point (${2 * size + 1} bytes), got ${publicPoint.length} bytes`);
      }
      const jwk: WebJwk = { kty: "EC", crv: curve, x: base64UrlEncode(publicPoint.subarray(1, 1 + size)),
        y: base64UrlEncode(publicPoint.subarray(1 + size)), ext: true };
      const key = await subtle.importKey("jwk", jwk, { name: "ECDSA", namedCurve: curve } as { name: string }, true, ["verify"]);
      if (signature.length !== 2 * size) return false;
      return subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, own(signature), own(message));
    },
  };
}

/** The uncompressed point of an EC JWK. */
function ecPoint(curve: EcdsaCurve, jwk: WebJwk): Uint8Array {
  if (typeof jwk.x !== "string" || typeof jwk.y !== "string") throw new Error(`WebCrypto exported no ${curve} public key`);
  const x = base64UrlDecode(jwk.x);
  const y = base64UrlDecode(jwk.y);
  const point = new Uint8Array(1 + x.length + y.length);
  point[0] = 0x04;
  point.set(x, 1);
  point.set(y, 1 + x.length);
  return point;
}

function webEcdsaKey(subtle: WebSubtle, privateKey: WebCryptoKey, publicPoint: Uint8Array): EcdsaSigningKey {
  return {
    publicPoint,
    async sign(message) {
      return new Uint8Array(await subtle.sign({ name: "ECDSA", hash: "SHA-256" }, privateKey, own(message)));
    },
  };
}

let defaultProvider: CryptoProvider | undefined;

/** The provider the wire uses when none is passed: WebCrypto unless
 * {@link setDefaultCryptoProvider} installed another (e.g. a pure-JS one on React Native). */
export function defaultCryptoProvider(): CryptoProvider {
  defaultProvider ??= webCryptoProvider();
  return defaultProvider;
}

/** Install the provider the wire uses when none is passed. */
export function setDefaultCryptoProvider(provider: CryptoProvider): void {
  defaultProvider = provider;
}
