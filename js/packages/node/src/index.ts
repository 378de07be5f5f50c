/** cola-fed-node: the cola-fed node for Node.js (Fleet transport, SuperNode loop, CLI pieces). */
export * from "./transport.js";
export * from "./retry.js";
export * from "./heartbeat.js";
export * from "./node-config.js";
export * from "./supernode.js";
export * from "./cli-args.js";
export * from "./main.js";
export { createColaApp, type ColaAppOptions } from "./app.js";
