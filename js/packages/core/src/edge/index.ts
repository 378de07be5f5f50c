/** Train-step graphs on the node: their checks, names and verified cache. */
export * from "./graph-check.js";
export * from "./graphs.js";
export * from "./cache.js";
