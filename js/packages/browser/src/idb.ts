/**
 * The browser node's IndexedDB: one database, `cola-fed-node`, with an object store per kind of
 * thing it keeps (keys, state files, verified graphs and task files, settings). Values are what
 * the structured clone algorithm stores: bytes, strings, and WebCrypto `CryptoKey`s, which keep
 * their non-extractable flag (no script, this page's included, can read such a private key).
 */

/** The database's name and version (a new version adds object stores in `upgrade`). */
export const DATABASE_NAME = "cola-fed-node";
const DATABASE_VERSION = 1;

/** The object stores: CryptoKeys and key pairs; HMAC-tagged state files; content by SHA-256;
 * small settings (the known-servers document, the node config, the picked CSV, the node id). */
export type StoreName = "keys" | "state" | "graphs" | "files" | "settings";
const STORES: readonly StoreName[] = ["keys", "state", "graphs", "files", "settings"];

/** A key-value view of one IndexedDB database; every call is its own transaction, so a write
 * is whole or not there at all (IndexedDB commits a transaction atomically). */
export class NodeDatabase {
  private constructor(private readonly db: IDBDatabase) {}

  /** Open (creating on first use) the node's database. */
  static async open(name: string = DATABASE_NAME, factory: IDBFactory = indexedDB): Promise<NodeDatabase> {
    const request = factory.open(name, DATABASE_VERSION);
    request.onupgradeneeded = () => {
      for (const store of STORES) {
        if (!request.result.objectStoreNames.contains(store)) request.result.createObjectStore(store);
      }
    };
    return new NodeDatabase(await done(request));
  }

  /** The value under `key`, or undefined. */
  async get<T>(store: StoreName, key: string): Promise<T | undefined> {
    return (await done(this.db.transaction(store, "readonly").objectStore(store).get(key))) as T | undefined;
  }

  /** Store `value` under `key` (replacing what was there). */
  async put(store: StoreName, key: string, value: unknown): Promise<void> {
    const tx = this.db.transaction(store, "readwrite");
    tx.objectStore(store).put(value, key);
    await committed(tx);
  }

  /** Remove `key` (no error if absent). */
  async delete(store: StoreName, key: string): Promise<void> {
    const tx = this.db.transaction(store, "readwrite");
    tx.objectStore(store).delete(key);
    await committed(tx);
  }

  /** Every key of a store. */
  async keys(store: StoreName): Promise<string[]> {
    return (await done(this.db.transaction(store, "readonly").objectStore(store).getAllKeys())).map(String);
  }

  /** Close the connection (a page that deletes the database closes it first). */
  close(): void {
    this.db.close();
  }
}

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error ?? new Error("IndexedDB request failed"));
  });
}

function committed(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
    tx.onerror = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
  });
}
