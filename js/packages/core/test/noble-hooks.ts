/**
 * Module resolve hook (node:module `register`) for noble-hide-webcrypto.ts: an import that
 * resolves to the core's crypto/provider.js resolves to noble-webcrypto-shim.js instead, except
 * from the shim itself and from crypto/noble.js (which need the real module).
 */
const SHIM = new URL("./noble-webcrypto-shim.js", import.meta.url).href;
const NOBLE = new URL("../src/crypto/noble.js", import.meta.url).href;
const PROVIDER = new URL("../src/crypto/provider.js", import.meta.url).href;

interface ResolveContext { parentURL?: string }
interface Resolved { url: string; shortCircuit?: boolean; format?: string | null }
type NextResolve = (specifier: string, context: ResolveContext) => Promise<Resolved>;

/** Route provider.js to the shim. */
export async function resolve(specifier: string, context: ResolveContext, next: NextResolve): Promise<Resolved> {
  const resolved = await next(specifier, context);
  if (resolved.url === PROVIDER && context.parentURL !== SHIM && context.parentURL !== NOBLE) {
    return { ...resolved, url: SHIM, shortCircuit: true };
  }
  return resolved;
}
