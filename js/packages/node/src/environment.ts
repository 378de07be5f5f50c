/**
 * The Node.js side of a cola-fed node: its state directory, identity, known servers, caches of
 * verified graphs and task files, its data file and ONNX Runtime (onnxruntime-node, CPU), in
 * the same places and with the same modes as the Python node uses
 * (`cola_fed/federation/node_store.py`, `cola_fed/wire/identity.py`, `cola_fed/edge/cache.py`).
 */
import { createHmac, hkdfSync, randomBytes } from "node:crypto";
import { readFile, readdir, rename, rm, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import {
  ConfigError, MemoryNodeStore, webCryptoProvider, type ContentStore, type CryptoProvider, type Ed25519Identity,
  type KnownServersStorage, type NodeConfig, type NodeStore, type SessionFactory,
} from "@cola-fed/core";
import * as ort from "onnxruntime-node";
import { ensurePrivateDir, readPrivateFile, writePrivateFile } from "./files.js";

const IDENTITY_FILE = "node-identity.key";
const MAX_STATE_BYTES = 2 ** 31;

/** `$COLA_FED_HOME`, else `$XDG_CONFIG_HOME/cola-fed`, else `~/.config/cola-fed` (as Python). */
export function colaFedHome(): string {
  if (process.env.COLA_FED_HOME) return expandUser(process.env.COLA_FED_HOME);
  const xdg = process.env.XDG_CONFIG_HOME;
  return xdg && isAbsolute(xdg) ? join(xdg, "cola-fed") : join(homedir(), ".config", "cola-fed");
}

/** `$COLA_FED_CACHE/<kind>`, else `$XDG_CACHE_HOME/cola-fed/<kind>`, else `~/.cache/cola-fed/<kind>`. */
export function defaultCacheDir(kind: string): string {
  if (process.env.COLA_FED_CACHE) return join(expandUser(process.env.COLA_FED_CACHE), kind);
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), ".cache"), "cola-fed", kind);
}

export function expandUser(path: string): string {
  return path === "~" || path.startsWith("~/") ? join(homedir(), path.slice(1)) : path;
}

/** The node's long-term Ed25519 identity: `<state-dir>/node-identity.key` (raw 32 bytes,
 * 0600, the Python node's format), created on first use; without a state dir, one per process. */
export async function loadIdentity(crypto: CryptoProvider, stateDir: string | undefined,
  log: (line: string) => void): Promise<{ identity: Ed25519Identity; seed: Uint8Array }> {
  if (stateDir === undefined) {
    const seed = new Uint8Array(randomBytes(32));
    return { identity: await crypto.ed25519FromSeed(seed), seed };
  }
  const path = join(stateDir, IDENTITY_FILE);
  let seed = readPrivateFile(path, "node identity", 64);
  if (seed === null) {
    seed = new Uint8Array(randomBytes(32));
    writePrivateFile(path, seed);
    log(`created a node identity in ${stateDir}`);
  } else if (seed.length !== 32) {
    throw new ConfigError(`node identity ${path} is not a 32-byte Ed25519 key; remove it only if this node may lose `
      + "the partitions it holds");
  }
  return { identity: await crypto.ed25519FromSeed(seed), seed };
}

/** The fingerprint a server operator puts in `strategy.partition-owners` (and that the node's
 * claims are signed with): SHA-256 of the raw public key, as the Python node prints it. */
export async function identityPublicKey(stateDir: string): Promise<Uint8Array> {
  const crypto = webCryptoProvider();
  return (await loadIdentity(crypto, stateDir, () => undefined)).identity.publicKey;
}

/** A node's state files in its state directory: `run-*.state`, 0600, each behind an HMAC tag
 * keyed from the node's identity; a file that fails is renamed `*.refused` and kept. */
export class FolderNodeStore implements NodeStore {
  readonly #folder: string;
  readonly #key: Buffer;

  constructor(folder: string, identitySeed: Uint8Array) {
    this.#folder = folder;
    this.#key = Buffer.from(hkdfSync("sha256", identitySeed, new Uint8Array(0), "cola-fed node state v1", 32));
  }

  async save(name: string, data: Uint8Array): Promise<void> {
    writePrivateFile(join(this.#folder, checkedName(name)), data);
  }

  async load(name: string): Promise<Uint8Array | null> {
    return readPrivateFile(join(this.#folder, checkedName(name)), "node state", MAX_STATE_BYTES);
  }

  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = (await readdir(this.#folder)).filter((n) => /^run-[0-9a-f]{16}-[0-9]{1,20}\.state$/.test(n));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    const times = await Promise.all(names.map(async (n) => (await stat(join(this.#folder, n))).mtimeMs));
    return names.map((n, i) => [n, times[i]!] as const).sort((a, b) => b[1] - a[1]).map(([n]) => n);
  }

  async setAside(name: string): Promise<void> {
    const path = join(this.#folder, checkedName(name));
    await rename(path, `${path}.${Date.now()}.refused`).catch(() => undefined);
  }

  async mac(data: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(createHmac("sha256", this.#key).update(data).digest());
  }
}

function checkedName(name: string): string {
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(name) || name.startsWith(".")) throw new ConfigError(`not a state file name: ${name}`);
  return name;
}

/** The node's state store: its folder (node config `state-dir`) or, without one, memory. */
export function nodeStore(stateDir: string | undefined, identitySeed: Uint8Array): NodeStore {
  if (stateDir === undefined) {
    return new MemoryNodeStore(async (key, data) => new Uint8Array(createHmac("sha256", key).update(data).digest()),
      new Uint8Array(randomBytes(32)));
  }
  ensurePrivateDir(stateDir);
  return new FolderNodeStore(stateDir, identitySeed);
}

/** The known-servers file (node config `known-servers`, default `$COLA_FED_HOME/known-servers.json`). */
export function knownServersFile(path: string): KnownServersStorage {
  return {
    location: path,
    read: async () => readPrivateFile(path, "known-servers file", 16 * 2 ** 20),
    write: async (data) => writePrivateFile(path, data),
  };
}

/** Content by SHA-256 in a private folder, one `<sha256><suffix>` file each (the core's
 * `GraphCache` / `TaskFileCache` check it on the way in and out). */
export class FolderBlobs implements ContentStore {
  readonly folder: string;
  readonly #suffix: string;

  constructor(folder: string, suffix: string) {
    this.folder = folder;
    this.#suffix = suffix;
  }

  async read(digest: string): Promise<Uint8Array | null> {
    return readPrivateFile(join(this.folder, this.#file(digest)), "cached file", 2 ** 30);
  }

  async write(digest: string, data: Uint8Array): Promise<void> {
    writePrivateFile(join(this.folder, this.#file(digest)), data);
  }

  async remove(digest: string): Promise<void> {
    await rm(join(this.folder, this.#file(digest)), { force: true });
  }

  #file(digest: string): string {
    if (!/^[0-9a-f]{64}$/.test(digest)) throw new ConfigError(`not a SHA-256 digest: ${digest.slice(0, 80)}`);
    return `${digest}${this.#suffix}`;
  }
}

/** ONNX Runtime sessions on the CPU with the Python node's options (intra-op threads from node
 * config `onnx-threads`, default 1), so steps are bit-equal to a Python ONNX node's. */
export function cpuSessionFactory(threads: number): SessionFactory {
  return async (model) => ort.InferenceSession.create(model, {
    executionProviders: ["cpu"], intraOpNumThreads: threads, interOpNumThreads: 1,
    // as the Python learner: no arena or memory patterns, whose buffers a small device would
    // hold between steps
    enableCpuMemArena: false, enableMemPattern: false,
  });
}

/** Node config `onnx-threads`: 1 to 256, default 1. */
export function onnxThreads(config: NodeConfig): number {
  const value = config["onnx-threads"] ?? 1n;
  if (typeof value !== "bigint" || value < 1n || value > 256n) {
    throw new ConfigError(`node config onnx-threads: expected 1 to 256, got ${String(value)}`);
  }
  return Number(value);
}

/** The node's data file, read as UTF-8 text (node config `data-path`). */
export async function readDataFile(path: string): Promise<string> {
  try {
    return await readFile(expandUser(path), "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(`node config data-path ${path}: ${code === "ENOENT" ? "no such file" : String(err)}`);
  }
}
