/**
 * A node's store of verified train-step graphs and task files, by content hash (the logic of
 * `cola_fed/edge/cache.py` without its file I/O: the runtime supplies a {@link ContentStore},
 * e.g. files on disk written atomically, or IndexedDB in a browser).
 *
 * What goes in is checked against the SHA-256 the signed plan lists and for what it contains
 * (graphs: `checkGraph`); what comes out is checked again, so that what a node uses is what was
 * checked, even if the storage was altered since.
 */

import { PayloadError } from "../errors.js";
import { checkGraph } from "./graph-check.js";
import { contentHash } from "./graphs.js";

/** Where verified content lives, by its SHA-256 hex (64 lower-case digits). */
export interface ContentStore {
  /** The stored bytes, or null if there are none. */
  read(hash: string): Promise<Uint8Array | null>;
  /** Store whole or not at all (concurrent nodes may share the store). */
  write(hash: string, data: Uint8Array): Promise<void>;
  /** Forget the bytes (an altered copy); no error if there are none. */
  remove(hash: string): Promise<void>;
}

const SHA256 = /^[0-9a-f]{64}$/;

/**
 * Verified content in a {@link ContentStore} (Python's `ContentCache`): checked on the way in against
 * its listed hash and by {@link VerifiedCache.check}, and again on the way out.
 */
export class VerifiedCache {
  /** What the content is, for messages. */
  readonly what: string = "file";

  constructor(readonly store: ContentStore) {}

  /** Refuse content that is not what `name` must be (throw); the default accepts. */
  async check(_name: string, _data: Uint8Array): Promise<void> {}

  /** Store `data` if its hash is `expectedHash` and it passes {@link check}; else throw
   * (PayloadError, or what `check` throws) and store nothing. */
  async put(name: string, data: Uint8Array, expectedHash: string): Promise<void> {
    this.checkedHash(name, expectedHash);
    const got = await contentHash(data);
    if (got !== expectedHash) {
      throw new PayloadError(`${this.what} '${name}': sha256 ${got.slice(0, 16)}... does not match the listed `
        + `${expectedHash.slice(0, 16)}...; refused`);
    }
    await this.check(name, data);
    if (await this.has(name, expectedHash)) return;
    await this.store.write(expectedHash, data);
  }

  /** The stored bytes of `name`, checked again against `expectedHash` and by {@link check}. */
  async get(name: string, expectedHash: string): Promise<Uint8Array> {
    this.checkedHash(name, expectedHash);
    const data = await this.store.read(expectedHash);
    if (data === null) {
      throw new PayloadError(`${this.what} '${name}' (${expectedHash.slice(0, 16)}...) is not in the cache; the node `
        + "must rejoin the run to receive it again");
    }
    if (await contentHash(data) !== expectedHash) {
      throw new PayloadError(`${this.what} '${name}' in the cache was altered; delete it and rejoin the run`);
    }
    await this.check(name, data);
    return data;
  }

  /** Whether the content is stored intact; an altered copy is removed (so `put` stores it
   * again). */
  async has(name: string, expectedHash: string): Promise<boolean> {
    this.checkedHash(name, expectedHash);
    const data = await this.store.read(expectedHash);
    if (data === null) return false;
    if (await contentHash(data) !== expectedHash) {
      await this.store.remove(expectedHash);
      return false;
    }
    return true;
  }

  /** Anything but 64 lower-case hex digits (a path, say) is refused as a hash. */
  private checkedHash(name: string, expectedHash: unknown): string {
    if (typeof expectedHash !== "string" || !SHA256.test(expectedHash)) {
      throw new PayloadError(`${this.what} '${name}': the listed hash ${String(expectedHash)} is not a SHA-256 hex `
        + "digest; refused");
    }
    return expectedHash;
  }
}

/** Verified train-step graphs, checked by `checkGraph` (`GraphCache`). */
export class GraphCache extends VerifiedCache {
  override readonly what: string = "train-step graph";

  override async check(name: string, data: Uint8Array): Promise<void> {
    checkGraph(data, { name });
  }
}

/** Checks that a task file is what its name says (a tokenizer that loads). */
export type TaskFileCheck = (name: string, data: Uint8Array) => void | Promise<void>;

/**
 * A task's node files (`TaskFileCache`): only `tokenizer.json`, checked by `checkTokenizer`
 * (the tokenizer library of the runtime, if it has one; the default asks for a strict JSON
 * object with a `model`, the least a `tokenizers` file is). Anything else is refused.
 */
export class TaskFileCache extends VerifiedCache {
  override readonly what: string = "task file";

  constructor(store: ContentStore, readonly checkTokenizer: TaskFileCheck = defaultTokenizerCheck) {
    super(store);
  }

  override async check(name: string, data: Uint8Array): Promise<void> {
    if (name !== "tokenizer.json") throw new PayloadError(`task file '${name}' is not one a node knows how to check`);
    try {
      await this.checkTokenizer(name, data);
    } catch (err) {
      if (err instanceof PayloadError) throw err;
      throw new PayloadError(`task file '${name}' is not a tokenizer: ${String(err)}`.slice(0, 300));
    }
  }
}

/** The default tokenizer check: UTF-8 JSON whose top level is an object with a `model` object. */
function defaultTokenizerCheck(name: string, data: Uint8Array): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(data));
  } catch (err) {
    throw new PayloadError(`task file '${name}' is not a tokenizer: ${String(err)}`.slice(0, 300));
  }
  const model = typeof parsed === "object" && parsed !== null ? (parsed as Record<string, unknown>).model : undefined;
  if (typeof model !== "object" || model === null || Array.isArray(model)) {
    throw new PayloadError(`task file '${name}' is not a tokenizer: it has no model`);
  }
}

/** A {@link ContentStore} in memory (tests, and browsers that keep nothing between runs). */
export class MemoryContentStore implements ContentStore {
  readonly entries = new Map<string, Uint8Array>();

  async read(hash: string): Promise<Uint8Array | null> {
    return this.entries.get(hash) ?? null;
  }

  async write(hash: string, data: Uint8Array): Promise<void> {
    this.entries.set(hash, data.slice());
  }

  async remove(hash: string): Promise<void> {
    this.entries.delete(hash);
  }
}
