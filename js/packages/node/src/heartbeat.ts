/** The heartbeat sender now lives in the core (core/src/supernode/heartbeat.ts), shared with the
 * browser runtime; re-exported here for this package's users and tests. */
export { HEARTBEAT_CALL_TIMEOUT, HeartbeatSender } from "@cola-fed/core";
export type { HeartbeatOptions } from "@cola-fed/core";
