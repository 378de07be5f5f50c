/**
 * Preload (`node --import`) that makes this process a runtime without WebCrypto, as React
 * Native on Hermes is: `globalThis.crypto` becomes an object with `getRandomValues` only (what
 * `react-native-get-random-values` gives an app), so `crypto.subtle` is undefined for the whole
 * process. Then every import of the core's provider.js gets the shim (noble-hooks.ts), and the
 * noble provider is installed as the default: the test files run unchanged on it.
 */
import { register } from "node:module";

const original = globalThis.crypto;
Object.defineProperty(globalThis, "crypto", {
  value: { getRandomValues: original.getRandomValues.bind(original) },
  configurable: true, enumerable: true, writable: false,
});
if ((globalThis.crypto as { subtle?: unknown }).subtle !== undefined) throw new Error("crypto.subtle is still reachable");

register("./noble-hooks.js", import.meta.url);
const { setDefaultCryptoProvider } = await import("./noble-webcrypto-shim.js");
const { nobleCryptoProvider } = await import("../src/crypto/noble.js");
setDefaultCryptoProvider(nobleCryptoProvider());
