/**
 * Test-only stand-in for src/crypto/provider.ts in a process where WebCrypto is hidden
 * (noble-hide-webcrypto.ts routes every import of provider.js here): everything the real
 * module exports, except that `webCryptoProvider()` gives the pure-JavaScript provider. So the
 * conformance tests, which ask for `webCryptoProvider()` by name, run unchanged on
 * `nobleCryptoProvider()`, and anything in the core that still reached for `crypto.subtle`
 * would fail.
 */
import { nobleCryptoProvider } from "../src/crypto/noble.js";
import type { CryptoProvider } from "../src/crypto/provider.js";

export * from "../src/crypto/provider.js";

/** The noble provider, in the place of WebCrypto's. */
export function webCryptoProvider(): CryptoProvider {
  return nobleCryptoProvider();
}
