/**
 * The servers a node trusts: a port of the check logic of `cola_fed/wire/identity.py`'s
 * `KnownServers` over a storage interface (the runtime provides the file, with its own
 * permission and link checks; a browser, IndexedDB or localStorage).
 *
 * A node either pins the server's fingerprint (node config `server-key-fingerprint`) or trusts
 * it on first use and remembers it; a later key that does not match is refused, as `ssh` does,
 * with a message on how to rotate. The stored document is the Python node's
 * `known-servers.json`, byte for byte: `{"version": 1, "servers": {name: fingerprint}}`,
 * written by `json.dumps(document, indent=2) + "\n"` with names sorted, and read as leniently
 * and as strictly as Python reads it (plain `json.loads`, then every entry checked).
 */

import type { CryptoProvider } from "../crypto/provider.js";
import { defaultCryptoProvider } from "../crypto/provider.js";
import { ConfigError, MalformedPayloadError, UntrustedKeyError } from "../errors.js";
import { JsonSyntaxError, type OrderedJson, parseJson } from "../json/parser.js";
import { pythonJsonString } from "../json/python-json.js";
import { fingerprint, normaliseFingerprint } from "./seal.js";

/** The known-servers document version. */
export const KNOWN_SERVERS_VERSION = 1;
/** Largest known-servers document read (as Python's `_MAX_KNOWN_BYTES`). */
export const MAX_KNOWN_BYTES = 16 * 1024 * 1024;
const NAME = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Where the known-servers document lives. */
export interface KnownServersStorage {
  /** The stored document, or null when there is none yet (an empty list). */
  read(): Promise<Uint8Array | null>;
  /** Replace the stored document (atomically, readable by this user only, for a file). */
  write(data: Uint8Array): Promise<void>;
  /** Run `action` holding an exclusive lock, where several nodes share the document. */
  withLock?<T>(action: () => Promise<T>): Promise<T>;
  /** Where it lives, in words (a path), for messages. */
  readonly location?: string;
}

/** How a {@link KnownServers} talks to its user. */
export interface KnownServersOptions {
  /** Where the primitives come from (default: {@link defaultCryptoProvider}). */
  crypto?: CryptoProvider;
  /** How to forget a server on this platform, with `{name}` standing for its name (default:
   * remove its entry from the storage's location by hand). */
  forgetHint?: string;
  /** Told when a server is trusted on first use (Python logs it at WARNING). */
  onFirstUse?: (name: string, fingerprint: string, location: string) => void;
}

/** What {@link KnownServers.check} is told. */
export interface CheckOptions {
  /** The fingerprint this node pins (node config); the storage is then not touched. */
  pinned?: string | null;
  /** Remember a server seen for the first time (false: a first look, before the rest of the
   * hello has been checked). Default true. */
  remember?: boolean;
}

function pyRepr(value: unknown): string {
  return typeof value === "string" ? `'${value}'` : String(value);
}

/** A server name is 1-128 characters of `A-Z a-z 0-9 _ . : -` ({@link ConfigError}). */
export function checkServerName(name: unknown): string {
  if (typeof name !== "string" || !NAME.test(name)) {
    throw new ConfigError(`a server name must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', ':' or '-', got ${pyRepr(name)}`);
  }
  return name;
}

/** Whether a value from `json.loads` equals Python's `1` (`1`, `1.0` and `true` all do). */
function equalsOne(value: OrderedJson | undefined): boolean {
  return value === 1n || value === 1 || value === true;
}

/**
 * The remembered servers of a known-servers document, every entry checked
 * (`KnownServers._parse`): {@link ConfigError} naming `location` for anything else. Read with
 * Python's `json.loads` rules (duplicate keys: the last wins; NaN accepted where ignored).
 */
export function parseKnownServers(data: Uint8Array, location = "the known-servers file"): Map<string, string> {
  const corrupt = (why: string): ConfigError => new ConfigError(
    `known-servers file ${location} is unreadable: ${why}. cola-fed will not overwrite it, since it holds the server keys `
    + "this machine trusts; fix it by hand, or remove it to trust every server on first use again");
  if (data.length > MAX_KNOWN_BYTES) {
    throw new ConfigError(`known-servers file ${location} is larger than ${MAX_KNOWN_BYTES} bytes; it is not a file cola-fed wrote`);
  }
  let document: OrderedJson;
  try {
    document = parseJson(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(data), "python");
  } catch (err) {
    if (err instanceof JsonSyntaxError || err instanceof TypeError) throw corrupt(`it is not valid JSON (${(err as Error).message})`);
    throw err;
  }
  if (!(document instanceof Map) || !equalsOne(document.get("version"))) {
    throw corrupt(`expected an object with "version": ${KNOWN_SERVERS_VERSION}`);
  }
  const servers = document.get("servers");
  if (!(servers instanceof Map)) throw corrupt("expected \"servers\" to be an object of name: fingerprint");
  const checked = new Map<string, string>();
  for (const [name, value] of servers) {
    if (typeof value !== "string" || !NAME.test(name)) throw corrupt(`bad entry ${pyRepr(name)}: ${pyRepr(value)}`);
    try {
      checked.set(name, normaliseFingerprint(value));
    } catch (err) {
      if (err instanceof ConfigError) throw corrupt(`bad fingerprint for ${pyRepr(name)}: ${pyRepr(value)}`);
      throw err;
    }
  }
  return checked;
}

/** A known-servers document as the Python node writes it (`KnownServers._write`): names
 * sorted, `json.dumps(document, indent=2) + "\n"`. */
export function formatKnownServers(servers: ReadonlyMap<string, string>): Uint8Array {
  const names = [...servers.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const entries = names.map((name) => `    ${pythonJsonString(name, true)}: ${pythonJsonString(servers.get(name) as string, true)}`);
  const body = entries.length ? `{\n${entries.join(",\n")}\n  }` : "{}";
  return new TextEncoder().encode(`{\n  "version": ${KNOWN_SERVERS_VERSION},\n  "servers": ${body}\n}\n`);
}

/** The servers this node trusted on first use, and their key fingerprints (`KnownServers`). */
export class KnownServers {
  private readonly crypto: CryptoProvider;
  private readonly location: string;

  constructor(private readonly storage: KnownServersStorage, private readonly options: KnownServersOptions = {}) {
    this.crypto = options.crypto ?? defaultCryptoProvider();
    this.location = storage.location ?? "the known-servers file";
  }

  /**
   * Verify server `name`'s raw public key; resolves to its fingerprint. With `pinned`, the
   * key must match that fingerprint and the storage is not touched. Otherwise a remembered
   * server must present the key it presented before, and a new one is remembered (trust on
   * first use) unless `remember` is false. Errors, in Python's order: {@link ConfigError}
   * (name, pinned fingerprint, storage), {@link MalformedPayloadError} (a key not 32 bytes),
   * {@link UntrustedKeyError} (a mismatch).
   */
  async check(name: string, publicKey: Uint8Array, options: CheckOptions = {}): Promise<string> {
    checkServerName(name);
    if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) {
      throw new MalformedPayloadError("a server public key must be 32 raw bytes");
    }
    const seen = await fingerprint(publicKey, this.crypto);
    if (options.pinned !== undefined && options.pinned !== null) {
      const pinned = normaliseFingerprint(options.pinned);
      if (seen !== pinned) {
        throw new UntrustedKeyError(
          `server '${name}' presented a key with fingerprint ${seen}, but this node pins ${pinned} (server-key-fingerprint); `
          + "refusing to talk to it. If the server's identity was replaced on purpose, verify its new fingerprint with its "
          + "operator, out of band, and update server-key-fingerprint in the node config");
      }
      return seen;
    }
    if (options.remember === false) {
      const known = (await this.read()).get(name);
      if (known !== undefined && known !== seen) throw new UntrustedKeyError(this.mismatch(name, seen, known));
      return seen;
    }
    const known = await this.locked(async () => {
      const servers = await this.read();
      const before = servers.get(name);
      if (before === undefined) {
        servers.set(name, seen);
        await this.storage.write(formatKnownServers(servers));
      }
      return before;
    });
    if (known === undefined) this.options.onFirstUse?.(name, seen, this.location);
    else if (known !== seen) throw new UntrustedKeyError(this.mismatch(name, seen, known));
    return seen;
  }

  /** Forget server `name`, so its next key is trusted on first use; false if unknown. */
  async forget(name: string): Promise<boolean> {
    checkServerName(name);
    return this.locked(async () => {
      const servers = await this.read();
      if (!servers.delete(name)) return false;
      await this.storage.write(formatKnownServers(servers));
      return true;
    });
  }

  /** Every remembered server and its fingerprint (empty when nothing is stored). */
  async entries(): Promise<Map<string, string>> {
    return this.read();
  }

  private async read(): Promise<Map<string, string>> {
    const data = await this.storage.read();
    return data === null ? new Map() : parseKnownServers(data, this.location);
  }

  private locked<T>(action: () => Promise<T>): Promise<T> {
    return this.storage.withLock ? this.storage.withLock(action) : action();
  }

  private mismatch(name: string, seen: string, known: string): string {
    const forget = (this.options.forgetHint ?? `remove the entry for ${name} from ${this.location}`).replaceAll("{name}", name);
    return `server '${name}' presented a key with fingerprint ${seen}, but ${this.location} remembers ${known} for it; `
      + "refusing to talk to it. Either someone is impersonating the server, or its identity was replaced. If it was "
      + "replaced on purpose, verify the new fingerprint with the server's operator, out of band, then "
      + `${forget}; or pin the verified fingerprint with --node-config "server-key-fingerprint='<fingerprint>'"`;
  }
}
