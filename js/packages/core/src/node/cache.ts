/**
 * A node's store of verified train-step graphs and task files, by content hash (the port of
 * `cola_fed/edge/cache.py`): content is checked against the SHA-256 the signed plan lists and
 * for what it must be (a graph passes the graph check) on the way in, and hashed again on the
 * way out, so what a node runs is what was checked, whoever could write the folder since.
 */
import { GraphError, PayloadError } from "../errors.js";
import type { CryptoProvider } from "../crypto/provider.js";
import { toHex } from "../util/bytes.js";

/** Where the bytes live (a folder, IndexedDB, memory), by SHA-256 hex. */
export interface BlobStore {
  read(digest: string): Promise<Uint8Array | null>;
  write(digest: string, data: Uint8Array): Promise<void>;
}

/** Verified content by name and SHA-256. */
export class ContentCache {
  readonly #blobs: BlobStore;
  readonly #crypto: CryptoProvider;
  readonly #what: string;
  readonly #check: (name: string, data: Uint8Array) => void;

  /** `check` refuses content that is not what `name` must be (throws); `what` names it. */
  constructor(blobs: BlobStore, crypto: CryptoProvider, what: string,
    check: (name: string, data: Uint8Array) => void = () => undefined) {
    this.#blobs = blobs;
    this.#crypto = crypto;
    this.#what = what;
    this.#check = check;
  }

  /** Whether content with this hash is held and still hashes to it. */
  async has(name: string, digest: string): Promise<boolean> {
    const data = await this.#blobs.read(digest);
    return data !== null && toHex(await this.#crypto.sha256(data)) === digest;
  }

  /** Store `data` if it hashes to `digest` and passes the check; else throw and store nothing. */
  async put(name: string, data: Uint8Array, digest: string): Promise<void> {
    const got = toHex(await this.#crypto.sha256(data));
    if (got !== digest) {
      throw new PayloadError(`${this.#what} '${name}': sha256 ${got.slice(0, 16)}... does not match the listed `
        + `${digest.slice(0, 16)}...; refused`);
    }
    this.#check(name, data);
    await this.#blobs.write(digest, data);
  }

  /** The held content with this hash, hashed and checked again. */
  async get(name: string, digest: string): Promise<Uint8Array> {
    const data = await this.#blobs.read(digest);
    if (data === null) throw new PayloadError(`${this.#what} '${name}' is not in this node's cache`);
    if (toHex(await this.#crypto.sha256(data)) !== digest) {
      throw new GraphError(`${this.#what} '${name}' in this node's cache no longer matches its hash; refused`);
    }
    this.#check(name, data);
    return data;
  }
}

/** A blob store in memory. */
export class MemoryBlobs implements BlobStore {
  readonly #items = new Map<string, Uint8Array>();

  async read(digest: string): Promise<Uint8Array | null> {
    return this.#items.get(digest) ?? null;
  }

  async write(digest: string, data: Uint8Array): Promise<void> {
    this.#items.set(digest, data.slice());
  }
}
