/**
 * Which adapter spec each adapted layer gets (`cola_fed.gl.layout.assign_specs`): a plan names
 * specs by layer selector (exact name, module-name suffix, or glob); the most specific wins.
 */

import { ConfigError } from "../errors.js";
import type { LayerInfo } from "../wire/layout.js";
import type { AdapterSpecLike } from "./types.js";

/** Python's `fnmatch.fnmatchcase(name, pattern)`: `*`, `?`, `[seq]`, `[!seq]`, case-sensitive. */
export function fnmatchCase(name: string, pattern: string): boolean {
  return new RegExp(`^${translate(pattern)}$`, "su").test(name);
}

/** `fnmatch.translate`'s regular expression body (without anchors). */
function translate(pattern: string): string {
  const chars = [...pattern];
  let out = "";
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === "*") {
      out += ".*";
      while (chars[i + 1] === "*") i++;
    } else if (c === "?") {
      out += ".";
    } else if (c === "[") {
      let j = i + 1;
      if (chars[j] === "!") j++;
      if (chars[j] === "]") j++;
      while (j < chars.length && chars[j] !== "]") j++;
      if (j >= chars.length) {
        out += "\\[";
      } else {
        let body = chars.slice(i + 1, j);
        let negate = false;
        if (body[0] === "!") {
          negate = true;
          body = body.slice(1);
        }
        const parts = body.map((ch) => (ch === "\\" || ch === "]" || ch === "^" ? `\\${ch}` : ch));
        // a range a-z keeps its hyphen; an empty class matches nothing, as in Python
        const cls = parts.join("");
        out += cls.length === 0 ? (negate ? "." : "(?!)") : `[${negate ? "^" : ""}${cls}]`;
        i = j;
      }
    } else {
      out += c.replace(/[.*+?^${}()|[\]\\/]/gu, "\\$&");
    }
  }
  return out;
}

/**
 * The spec of every adapted layer: `spec` for all layers, or a map of selectors to specs where
 * an exact name beats the longest matching suffix (`"classifier"` matches `"bert.classifier"`),
 * which beats the longest matching glob. Layers no selector picks are not adapted; a map that
 * picks none is a ConfigError.
 */
export function assignSpecs<S extends AdapterSpecLike>(
  layout: readonly LayerInfo[],
  spec: S | ReadonlyMap<string, S>,
): Map<string, S> {
  const names = layout.map((layer) => layer.name);
  if (!(spec instanceof Map)) {
    return new Map(names.map((name) => [name, spec as S]));
  }
  const selectors = spec as ReadonlyMap<string, S>;
  const longest = (keys: string[]): string | undefined =>
    keys.reduce<string | undefined>((best, key) => (best === undefined || key.length > best.length ? key : best), undefined);
  const assigned = new Map<string, S>();
  for (const name of names) {
    if (selectors.has(name)) {
      assigned.set(name, selectors.get(name)!);
      continue;
    }
    const keys = [...selectors.keys()];
    const suffixes = keys.filter((key) => name.endsWith(`.${key}`));
    const globs = keys.filter((key) => fnmatchCase(name, key));
    const best = suffixes.length > 0 ? longest(suffixes) : longest(globs);
    if (best !== undefined) assigned.set(name, selectors.get(best)!);
  }
  if (assigned.size === 0) {
    throw new ConfigError(
      `adapter spec: no key of ${JSON.stringify([...selectors.keys()].sort())} selects any ` +
        `adapted layer ${JSON.stringify(names)}`,
    );
  }
  return assigned;
}
