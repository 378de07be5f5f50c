/**
 * The browser side of a cola-fed node: its keys, state files, caches and known servers in
 * IndexedDB, and ONNX Runtime on WebAssembly (onnxruntime-web), for the core's `ColaNode`.
 *
 * Every private key is a WebCrypto `CryptoKey` made non-extractable when it is generated and
 * kept in IndexedDB as such: the node's Ed25519 identity, the HMAC key that tags its state
 * files, and the ECDSA P-384 key that signs its Fleet calls. A script in the page can use them
 * but never read them, and they survive a reload (the node comes back as itself).
 */
import {
  ConfigError, ed25519IdentityFromKeyPair, rawToDerSignature, toPem, type ContentStore, type Ed25519Identity,
  type KnownServersStorage, type NodeAuthKey, type NodeStore, type SessionFactory,
} from "@cola-fed/core";
import * as ort from "onnxruntime-web/wasm";
import type { NodeDatabase } from "./idb.js";

const IDENTITY_KEY = "identity-ed25519";
const STATE_MAC_KEY = "state-hmac-sha256";
const FLEET_KEY = "fleet-ecdsa-p384";
const KNOWN_SERVERS = "known-servers.json";
const STATE_NAME = /^run-[0-9a-f]{16}-[0-9]{1,20}\.state$/;

/** The node's long-term Ed25519 identity: a non-extractable key pair in IndexedDB, made on first use. */
export async function loadIdentity(db: NodeDatabase, log: (line: string) => void): Promise<Ed25519Identity> {
  let pair = await db.get<CryptoKeyPair>("keys", IDENTITY_KEY);
  if (pair === undefined) {
    pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"])) as CryptoKeyPair;
    await db.put("keys", IDENTITY_KEY, pair);
    log("created this node's identity (a non-extractable Ed25519 key in IndexedDB)");
  }
  return ed25519IdentityFromKeyPair(pair);
}

/**
 * The key that signs the node's Fleet calls (Flower's SuperNode authentication headers): a
 * non-extractable ECDSA P-384 key pair in IndexedDB, kept across reloads so the SuperLink knows
 * the page as the same node (same Flower node id). `fresh` replaces it (a node that left).
 */
export async function loadFleetKey(db: NodeDatabase, fresh = false): Promise<NodeAuthKey> {
  let pair = fresh ? undefined : await db.get<CryptoKeyPair>("keys", FLEET_KEY);
  if (pair === undefined) {
    pair = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-384" }, false, ["sign", "verify"])) as CryptoKeyPair;
    await db.put("keys", FLEET_KEY, pair);
  }
  const privateKey = pair.privateKey;
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  return {
    publicKeyPem: toPem("PUBLIC KEY", spki),
    async sign(data: Uint8Array): Promise<Uint8Array> {
      const raw = new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, privateKey, new Uint8Array(data)));
      return rawToDerSignature(raw, 48); // WebCrypto gives r || s; Flower verifies DER
    },
  };
}

/** A node's state files in IndexedDB, each tagged with HMAC-SHA256 under a non-extractable key
 * (made on first use) that only this browser profile holds; a file that fails its checks is set
 * aside under `<name>.<time>.refused`, as the Node.js node renames it. */
export class IndexedDbNodeStore implements NodeStore {
  private constructor(private readonly db: NodeDatabase, private readonly key: CryptoKey) {}

  /** The store, with its HMAC key (generated, non-extractable, on first use). */
  static async open(db: NodeDatabase): Promise<IndexedDbNodeStore> {
    let key = await db.get<CryptoKey>("keys", STATE_MAC_KEY);
    if (key === undefined) {
      key = await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256", length: 256 }, false, ["sign"]);
      await db.put("keys", STATE_MAC_KEY, key);
    }
    return new IndexedDbNodeStore(db, key);
  }

  async save(name: string, data: Uint8Array): Promise<void> {
    await this.db.put("state", checkedName(name), { data: data.slice(), time: Date.now() });
  }

  async load(name: string): Promise<Uint8Array | null> {
    const entry = await this.db.get<{ data: Uint8Array }>("state", checkedName(name));
    return entry === undefined ? null : entry.data;
  }

  async list(): Promise<string[]> {
    const names = (await this.db.keys("state")).filter((n) => STATE_NAME.test(n));
    const times = await Promise.all(names.map(async (n) => (await this.db.get<{ time: number }>("state", n))?.time ?? 0));
    return names.map((n, i) => [n, times[i]!] as const).sort((a, b) => b[1] - a[1]).map(([n]) => n);
  }

  async setAside(name: string): Promise<void> {
    const entry = await this.db.get("state", checkedName(name));
    if (entry === undefined) return;
    await this.db.put("state", `${name}.${Date.now()}.refused`, entry);
    await this.db.delete("state", name);
  }

  async mac(data: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await crypto.subtle.sign("HMAC", this.key, new Uint8Array(data)));
  }
}

function checkedName(name: string): string {
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(name) || name.startsWith(".")) throw new ConfigError(`not a state file name: ${name}`);
  return name;
}

/** Content by SHA-256 in an IndexedDB object store (the core's GraphCache and TaskFileCache
 * check it on the way in and again on the way out). */
export class IndexedDbContentStore implements ContentStore {
  constructor(private readonly db: NodeDatabase, private readonly store: "graphs" | "files") {}

  async read(hash: string): Promise<Uint8Array | null> {
    return (await this.db.get<Uint8Array>(this.store, checkedDigest(hash))) ?? null;
  }

  async write(hash: string, data: Uint8Array): Promise<void> {
    await this.db.put(this.store, checkedDigest(hash), data.slice());
  }

  async remove(hash: string): Promise<void> {
    await this.db.delete(this.store, checkedDigest(hash));
  }
}

function checkedDigest(digest: string): string {
  if (!/^[0-9a-f]{64}$/.test(digest)) throw new ConfigError(`not a SHA-256 digest: ${digest.slice(0, 80)}`);
  return digest;
}

/** The known-servers document (the Python node's `known-servers.json`, byte for byte) in IndexedDB. */
export function knownServersStorage(db: NodeDatabase): KnownServersStorage {
  return {
    location: "this browser's IndexedDB (cola-fed-node/settings/known-servers.json)",
    read: async () => (await db.get<Uint8Array>("settings", KNOWN_SERVERS)) ?? null,
    write: async (data) => db.put("settings", KNOWN_SERVERS, data.slice()),
  };
}

/**
 * ONNX Runtime sessions on WebAssembly, one thread (no SharedArrayBuffer, so no cross-origin
 * isolation needed), with the runtime's `.wasm` files served from `wasmBase` on the page's own
 * origin: nothing is fetched from a CDN.
 */
export function wasmSessionFactory(wasmBase: string): SessionFactory {
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = wasmBase;
  return async (model) => ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
}
