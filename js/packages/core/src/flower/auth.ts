/**
 * Flower 1.42's SuperNode authentication on the Fleet HTTP API, over a {@link CryptoProvider}
 * (WebCrypto, or the pure-JavaScript one where there is no `crypto.subtle`).
 *
 * Every Fleet call carries three headers (`flwr/supernode/node_auth_http_interceptor.py`):
 * `flwr-public-key` (base64 of the node's PEM SubjectPublicKeyInfo), `flwr-timestamp` (Python's
 * `datetime.now(UTC).isoformat()`) and `flwr-signature` (base64 of a DER-encoded ECDSA-SHA256
 * signature over the timestamp's ASCII). The SuperLink (`flwr/superlink/routers/fleet/node_auth.py`)
 * accepts a timestamp from 5 s ahead to 305 s behind its clock. Flower generates P-384 keys;
 * `flwr supernode register` accepts any NIST curve, so P-256 and P-521 work here too.
 *
 * A node started with `--auth-supernode-private-key` reads an OpenSSH private key
 * (`load_ssh_private_key` in `flwr/supernode/cli/flower_supernode.py`, e.g. from
 * `ssh-keygen -t ecdsa -b 384 -N ""`). {@link importNodeAuthKey} reads the private scalar out
 * of OpenSSH, SEC1 ("EC PRIVATE KEY") and PKCS#8 keys by hand, and the provider computes the
 * public key from it, as `cryptography` does.
 */
import { defaultCryptoProvider, type CryptoProvider, type EcdsaSigningKey } from "../crypto/provider.js";
import { AuthenticationError, ConfigError } from "../errors.js";
import { base64Decode, base64Encode, concatBytes } from "../util/bytes.js";

/** Header names (`flwr.supercore.constant`, `flwr.common.constant.TIMESTAMP_HEADER`). */
export const PUBLIC_KEY_HEADER = "flwr-public-key";
export const SIGNATURE_HEADER = "flwr-signature";
export const TIMESTAMP_HEADER = "flwr-timestamp";

/** A NIST curve WebCrypto signs with. */
export type NodeAuthCurve = "P-256" | "P-384" | "P-521";

/** A node's signing key: its public key as Flower sends it, and a signer. */
export interface NodeAuthKey {
  /** PEM SubjectPublicKeyInfo text, byte-identical to `cryptography`'s `public_bytes(PEM, SPKI)`. */
  readonly publicKeyPem: string;
  /** ECDSA-SHA256 signature of `data`, DER-encoded as `cryptography` makes and verifies them. */
  sign(data: Uint8Array): Promise<Uint8Array>;
}

const CURVES: Record<NodeAuthCurve, { oid: Uint8Array; size: number; ssh: string }> = {
  "P-256": { oid: Uint8Array.of(0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07), size: 32, ssh: "nistp256" },
  "P-384": { oid: Uint8Array.of(0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22), size: 48, ssh: "nistp384" },
  "P-521": { oid: Uint8Array.of(0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23), size: 66, ssh: "nistp521" },
};
const EC_PUBLIC_KEY_OID = Uint8Array.of(0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01);

/**
 * Python's `datetime.now(tz=UTC).isoformat()` for a JavaScript date: microseconds (from the
 * millisecond clock) are written only when not zero, and the offset is `+00:00`.
 */
export function formatFlowerTimestamp(date: Date): string {
  const pad = (n: number, width = 2) => String(n).padStart(width, "0");
  const ms = date.getUTCMilliseconds();
  const base =
    `${pad(date.getUTCFullYear(), 4)}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}` +
    `T${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())}`;
  return `${base}${ms === 0 ? "" : `.${pad(ms * 1000, 6)}`}+00:00`;
}

/** The three authentication headers of one Fleet call, signed now (or at `now`). */
export async function nodeAuthHeaders(key: NodeAuthKey, now: Date = new Date()): Promise<Record<string, string>> {
  const timestamp = formatFlowerTimestamp(now);
  const signature = await key.sign(new TextEncoder().encode(timestamp));
  return {
    [PUBLIC_KEY_HEADER]: base64Encode(new TextEncoder().encode(key.publicKeyPem)),
    [TIMESTAMP_HEADER]: timestamp,
    [SIGNATURE_HEADER]: base64Encode(signature),
  };
}

/** A fresh signing key (Flower's SuperNode makes a P-384 one when not given a key file); its
 * private key cannot be exported where the provider can keep it so (WebCrypto). */
export async function generateNodeAuthKey(curve: NodeAuthCurve = "P-384", crypto: CryptoProvider = defaultCryptoProvider()): Promise<NodeAuthKey> {
  return makeKey(await crypto.ecdsaGenerate(curve), curve);
}

/**
 * A signing key from a PEM private key: OpenSSH ("OPENSSH PRIVATE KEY", unencrypted; what
 * Flower 1.42's `--auth-supernode-private-key` reads), PKCS#8 ("PRIVATE KEY") or SEC1
 * ("EC PRIVATE KEY"). The public key is computed from the private scalar, as `cryptography`
 * does: an OpenSSH file's public point is not read (as `load_ssh_private_key`), a SEC1 or
 * PKCS#8 key whose public point is another is refused (as `load_pem_private_key`). Throws
 * ConfigError on anything else (encrypted keys, other curves or algorithms, damaged files).
 */
export async function importNodeAuthKey(pem: string, crypto: CryptoProvider = defaultCryptoProvider()): Promise<NodeAuthKey> {
  const { label, der } = fromPem(pem);
  let parsed: EcPrivateKey;
  if (label === "OPENSSH PRIVATE KEY") parsed = openSshPrivateKey(der);
  else if (label === "EC PRIVATE KEY") parsed = sec1PrivateKey(der);
  else if (label === "PRIVATE KEY") parsed = pkcs8PrivateKey(der);
  else throw new ConfigError(`expected an EC private key in PEM (OPENSSH, EC or PKCS#8 PRIVATE KEY), got "${label.slice(0, 40)}"`);
  const { curve, scalar, point } = parsed;
  let key: EcdsaSigningKey;
  try {
    key = await crypto.ecdsaFromPrivateScalar(curve, scalar);
  } catch (err) {
    throw new ConfigError(`the ${curve} private key could not be imported: ${String(err)}`);
  }
  if (point !== undefined && !bytesEq(point, key.publicPoint)) {
    throw new ConfigError(`the ${curve} private key's public point is not its scalar's: the key file is damaged`);
  }
  return makeKey(key, curve);
}

function makeKey(key: EcdsaSigningKey, curve: NodeAuthCurve): NodeAuthKey {
  const size = CURVES[curve].size;
  return {
    publicKeyPem: toPem("PUBLIC KEY", ecSpki(curve, key.publicPoint)),
    async sign(data: Uint8Array): Promise<Uint8Array> {
      return rawToDerSignature(await key.sign(data), size);
    },
  };
}

/**
 * Verifies a DER-encoded ECDSA-SHA256 signature with a PEM SPKI public key (as the SuperLink
 * does); used by tests and by tools that check a header. Returns false on a bad signature,
 * throws AuthenticationError when the key or the DER is malformed.
 */
export async function verifyNodeSignature(publicKeyPem: string, data: Uint8Array, derSignature: Uint8Array,
  crypto: CryptoProvider = defaultCryptoProvider()): Promise<boolean> {
  const { label, der } = fromPem(publicKeyPem);
  if (label !== "PUBLIC KEY") throw new AuthenticationError(`expected a PEM PUBLIC KEY, got "${label.slice(0, 40)}"`);
  const { curve, point } = spkiPoint(der);
  const raw = derToRawSignature(derSignature, CURVES[curve].size);
  try {
    return await crypto.ecdsaVerify(curve, point, raw, data);
  } catch (err) {
    throw new AuthenticationError(`the public key is not a point on ${curve}: ${String(err)}`);
  }
}

// ---------------------------------------------------------------- signatures: raw r||s <-> DER

/** WebCrypto's raw `r || s` signature as DER `SEQUENCE { INTEGER r, INTEGER s }`. */
export function rawToDerSignature(raw: Uint8Array, size: number): Uint8Array {
  if (raw.length !== 2 * size) throw new AuthenticationError(`expected a ${2 * size}-byte raw signature, got ${raw.length}`);
  const integer = (value: Uint8Array) => {
    let start = 0;
    while (start < value.length - 1 && value[start] === 0) start++;
    const trimmed = value.subarray(start);
    const body = (trimmed[0] ?? 0) & 0x80 ? concatBytes(Uint8Array.of(0), trimmed) : trimmed;
    return derNode(0x02, body);
  };
  return derNode(0x30, concatBytes(integer(raw.subarray(0, size)), integer(raw.subarray(size))));
}

/**
 * A DER `SEQUENCE { INTEGER r, INTEGER s }` signature as WebCrypto's raw `r || s` (each
 * left-padded to the curve's size). Throws AuthenticationError on anything but strict DER with
 * positive integers that fit the curve.
 */
export function derToRawSignature(der: Uint8Array, size: number): Uint8Array {
  const reader = new DerReader(der, AuthenticationError);
  const seq = reader.read(0x30);
  reader.end();
  const inner = new DerReader(seq, AuthenticationError);
  const out = new Uint8Array(2 * size);
  for (let i = 0; i < 2; i++) {
    const value = inner.read(0x02);
    if (value.length === 0 || value[0]! & 0x80) throw new AuthenticationError("a signature integer is empty or negative");
    if (value.length > 1 && value[0] === 0 && !(value[1]! & 0x80)) throw new AuthenticationError("a signature integer is not minimally encoded");
    const stripped = value[0] === 0 ? value.subarray(1) : value;
    if (stripped.length > size) throw new AuthenticationError(`a signature integer is longer than ${size} bytes`);
    out.set(stripped, (i + 1) * size - stripped.length);
  }
  inner.end();
  return out;
}

// ---------------------------------------------------------------- key formats

/** PEM text (64-character lines, trailing newline) as `cryptography` writes it. */
export function toPem(label: string, der: Uint8Array): string {
  const b64 = base64Encode(der);
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** The label and DER bytes of the first PEM block in `text`. Throws ConfigError otherwise. */
export function fromPem(text: string): { label: string; der: Uint8Array } {
  const match = /-----BEGIN ([A-Z0-9 ]{1,40})-----\s*([A-Za-z0-9+/=\s]*?)\s*-----END \1-----/.exec(text);
  if (match === null) throw new ConfigError("expected a PEM block (-----BEGIN ...----- ... -----END ...-----)");
  try {
    return { label: match[1]!, der: base64Decode(match[2]!.replace(/\s+/g, "")) };
  } catch {
    throw new ConfigError(`the PEM block ${match[1]} is not valid base64`);
  }
}

function curveFromOid(oid: Uint8Array): NodeAuthCurve {
  for (const [name, info] of Object.entries(CURVES) as [NodeAuthCurve, (typeof CURVES)[NodeAuthCurve]][]) {
    if (bytesEq(concatBytes(Uint8Array.of(0x06, oid.length), oid), info.oid)) return name;
  }
  throw new ConfigError("the key's curve is not P-256, P-384 or P-521");
}

function algorithmCurve(reader: DerReader): NodeAuthCurve {
  const alg = new DerReader(reader.read(0x30), ConfigError);
  const algOid = alg.read(0x06);
  if (!bytesEq(concatBytes(Uint8Array.of(0x06, algOid.length), algOid), EC_PUBLIC_KEY_OID)) throw new ConfigError("the key is not an EC key");
  return curveFromOid(alg.read(0x06));
}

/** The curve and the uncompressed public point of a DER SubjectPublicKeyInfo. */
function spkiPoint(der: Uint8Array): { curve: NodeAuthCurve; point: Uint8Array } {
  const outer = new DerReader(der, AuthenticationError);
  const body = new DerReader(outer.read(0x30), AuthenticationError);
  outer.end();
  let curve: NodeAuthCurve;
  try {
    curve = algorithmCurve(body);
  } catch (err) {
    throw new AuthenticationError(err instanceof Error ? err.message : String(err));
  }
  const bits = body.read(0x03);
  body.end();
  const size = CURVES[curve].size;
  if (bits[0] !== 0 || bits.length !== 2 * size + 2 || bits[1] !== 0x04) {
    throw new AuthenticationError(`the public key is not an uncompressed ${curve} point`);
  }
  return { curve, point: bits.subarray(1) };
}

/** DER SubjectPublicKeyInfo of an uncompressed EC point, as `cryptography` and WebCrypto write it. */
function ecSpki(curve: NodeAuthCurve, point: Uint8Array): Uint8Array {
  const algorithm = derNode(0x30, concatBytes(EC_PUBLIC_KEY_OID, CURVES[curve].oid));
  return derNode(0x30, concatBytes(algorithm, derNode(0x03, concatBytes(Uint8Array.of(0), point))));
}

/** An EC private key as read from a key file: the scalar (left-padded to the curve's size)
 * and the public point the file states, if it does (and if it is to be checked). */
interface EcPrivateKey {
  curve: NodeAuthCurve;
  scalar: Uint8Array;
  point?: Uint8Array;
}

/** A big-endian integer's bytes (leading zeros allowed) as the curve's fixed-size scalar. */
function fixedScalar(curve: NodeAuthCurve, d: Uint8Array): Uint8Array {
  const size = CURVES[curve].size;
  let start = 0;
  while (start < d.length && d[start] === 0) start++;
  const scalar = d.subarray(start);
  if (scalar.length === 0 || scalar.length > size) throw new ConfigError(`the private scalar does not fit ${curve}`);
  const padded = new Uint8Array(size);
  padded.set(scalar, size - scalar.length);
  return padded;
}

/** The body of a SEC1 `ECPrivateKey` (RFC 5915); `known` is the curve PKCS#8 named around it. */
function ecPrivateKeyBody(der: Uint8Array, label: string, known?: NodeAuthCurve): EcPrivateKey {
  const outer = new DerReader(der, ConfigError);
  const body = new DerReader(outer.read(0x30), ConfigError);
  outer.end();
  const version = body.read(0x02);
  if (version.length !== 1 || version[0] !== 1) throw new ConfigError(`an ${label} must have version 1`);
  const d = body.read(0x04);
  let curve = known;
  let point: Uint8Array | undefined;
  while (!body.done()) {
    const tag = body.peekTag();
    const value = body.read(tag);
    if (tag === 0xa0) {
      const named = curveFromOid(new DerReader(value, ConfigError).read(0x06));
      if (curve !== undefined && named !== curve) throw new ConfigError(`the ${label} names two curves, ${curve} and ${named}`);
      curve = named;
    } else if (tag === 0xa1) {
      const bits = new DerReader(value, ConfigError).read(0x03);
      if (bits[0] !== 0) throw new ConfigError("the public key bit string has unused bits");
      point = bits.subarray(1);
    }
  }
  if (curve === undefined) throw new ConfigError(`the ${label} does not name its curve`);
  const size = CURVES[curve].size;
  if (point !== undefined && (point.length !== 2 * size + 1 || point[0] !== 0x04)) {
    throw new ConfigError(`the public point is not an uncompressed ${curve} point`);
  }
  return { curve, scalar: fixedScalar(curve, d), point };
}

/** SEC1 `ECPrivateKey` ("EC PRIVATE KEY", with its curve parameters). */
function sec1PrivateKey(der: Uint8Array): EcPrivateKey {
  return ecPrivateKeyBody(der, "EC PRIVATE KEY");
}

/** PKCS#8 `PrivateKeyInfo` ("PRIVATE KEY") of an EC key. */
function pkcs8PrivateKey(der: Uint8Array): EcPrivateKey {
  const outer = new DerReader(der, ConfigError);
  const body = new DerReader(outer.read(0x30), ConfigError);
  outer.end();
  const version = body.read(0x02);
  if (version.length !== 1 || version[0] !== 0) throw new ConfigError("a PKCS#8 PRIVATE KEY must have version 0");
  const curve = algorithmCurve(body);
  return ecPrivateKeyBody(body.read(0x04), "EC key in PKCS#8", curve); // attributes after it are ignored
}

/** An unencrypted OpenSSH `openssh-key-v1` ECDSA private key (its public point is not read:
 * `load_ssh_private_key` derives the public key from the scalar). */
function openSshPrivateKey(data: Uint8Array): EcPrivateKey {
  const magic = new TextEncoder().encode("openssh-key-v1\0");
  if (data.length < magic.length || !bytesEq(data.subarray(0, magic.length), magic)) throw new ConfigError("not an openssh-key-v1 private key");
  const reader = new SshReader(data.subarray(magic.length));
  const cipher = reader.text();
  const kdf = reader.text();
  reader.bytes(); // kdf options
  if (cipher !== "none" || kdf !== "none") throw new ConfigError("the OpenSSH private key is encrypted; Flower reads it without a passphrase");
  if (reader.uint32() !== 1) throw new ConfigError("the OpenSSH file must hold exactly one key");
  reader.bytes(); // public key blob (repeated in the private section)
  const section = new SshReader(reader.bytes());
  if (section.uint32() !== section.uint32()) throw new ConfigError("the OpenSSH private section's check integers differ");
  const keyType = section.text();
  const curveName = section.text();
  const curve = (Object.keys(CURVES) as NodeAuthCurve[]).find((c) => CURVES[c].ssh === curveName);
  if (curve === undefined || keyType !== `ecdsa-sha2-${curveName}`) {
    throw new ConfigError(`expected an ECDSA key on a NIST curve, got ${keyType.slice(0, 40)}`);
  }
  section.bytes(); // the public point
  const d = section.bytes();
  return { curve, scalar: fixedScalar(curve, d) };
}

class SshReader {
  private at = 0;
  constructor(private readonly data: Uint8Array) {}
  uint32(): number {
    if (this.at + 4 > this.data.length) throw new ConfigError("the OpenSSH key is truncated");
    const v = new DataView(this.data.buffer, this.data.byteOffset + this.at, 4).getUint32(0);
    this.at += 4;
    return v;
  }
  bytes(): Uint8Array {
    const n = this.uint32();
    if (this.at + n > this.data.length) throw new ConfigError("the OpenSSH key is truncated");
    const out = this.data.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
  text(): string {
    return new TextDecoder().decode(this.bytes());
  }
}

// ---------------------------------------------------------------- minimal DER

function derLength(n: number): Uint8Array {
  if (n < 0x80) return Uint8Array.of(n);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Uint8Array.of(0x80 | bytes.length, ...bytes);
}

function derNode(tag: number, body: Uint8Array): Uint8Array {
  return concatBytes(Uint8Array.of(tag), derLength(body.length), body);
}

type ErrorClass = new (message: string) => Error;

/** Reads definite-length, minimally encoded DER nodes; refuses anything else with `fail`. */
class DerReader {
  private at = 0;
  constructor(private readonly data: Uint8Array, private readonly fail: ErrorClass) {}
  done(): boolean {
    return this.at >= this.data.length;
  }
  peekTag(): number {
    if (this.done()) throw new this.fail("DER: unexpected end of data");
    return this.data[this.at]!;
  }
  read(tag: number): Uint8Array {
    const d = this.data;
    if (this.at + 2 > d.length) throw new this.fail("DER: unexpected end of data");
    if (d[this.at] !== tag) throw new this.fail(`DER: expected tag 0x${tag.toString(16)}, got 0x${d[this.at]!.toString(16)}`);
    let length = d[this.at + 1]!;
    let at = this.at + 2;
    if (length & 0x80) {
      const count = length & 0x7f;
      if (count === 0 || count > 3 || at + count > d.length) throw new this.fail("DER: unsupported length");
      length = 0;
      for (let i = 0; i < count; i++) length = length * 256 + d[at + i]!;
      if (length < 0x80 || d[at] === 0) throw new this.fail("DER: length not minimally encoded");
      at += count;
    }
    if (at + length > d.length) throw new this.fail("DER: a node runs past its container");
    this.at = at + length;
    return d.subarray(at, at + length);
  }
  end(): void {
    if (!this.done()) throw new this.fail("DER: trailing bytes");
  }
}

function bytesEq(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
