/** The SuperNode loop now lives in the core (core/src/supernode/supernode.ts), shared with the
 * browser runtime; re-exported here for this package's users and tests. */
export { CLIENT_APP_RAISED_EXCEPTION, exceptionReason, PULL_INTERVAL, SuperNode } from "@cola-fed/core";
export type { AppContext, AppHandler, SuperNodeExit, SuperNodeOptions } from "@cola-fed/core";
