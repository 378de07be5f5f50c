/** @cola-fed/core: the node without I/O of its own. Runtimes (Node.js, browser) add the I/O. */
export * from "./util/bytes.js";
export * from "./flower/proto.js";
export * from "./errors.js";
export * from "./tensor.js";
export * from "./flower/records.js";
