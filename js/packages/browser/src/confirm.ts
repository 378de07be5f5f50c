/**
 * Trust on first use, with the user asked first: the page shows a new server's key fingerprint
 * and the node trusts (and remembers) it only once the user has confirmed it, e.g. against the
 * fingerprint the federation's operator published. A pinned fingerprint (node config
 * `server-key-fingerprint`) and a server already remembered are checked as the core checks them.
 */
import { fingerprint, KnownServers, UntrustedKeyError, webCryptoProvider, type CheckOptions, type KnownServersOptions,
  type KnownServersStorage } from "@cola-fed/core";

/** Asks the user whether to trust server `name` with key fingerprint `fingerprint`. */
export type ConfirmServer = (name: string, fingerprint: string) => Promise<boolean>;

/** {@link KnownServers} that asks {@link ConfirmServer} before remembering a new server. */
export class ConfirmingKnownServers extends KnownServers {
  constructor(storage: KnownServersStorage, private readonly confirm: ConfirmServer, options: KnownServersOptions = {}) {
    super(storage, options);
  }

  override async check(name: string, publicKey: Uint8Array, options: CheckOptions = {}): Promise<string> {
    const firstUse = (options.pinned ?? null) === null && options.remember !== false
      && publicKey instanceof Uint8Array && publicKey.length === 32 && !(await this.entries()).has(name);
    if (firstUse) {
      const seen = await fingerprint(publicKey, webCryptoProvider());
      if (!(await this.confirm(name, seen))) {
        throw new UntrustedKeyError(`server '${name}' presented a key with fingerprint ${seen}, and the user did not `
          + "confirm it; the node does not trust it. Compare it with the fingerprint the federation's operator "
          + "publishes, then join again");
      }
    }
    return super.check(name, publicKey, options);
  }
}
