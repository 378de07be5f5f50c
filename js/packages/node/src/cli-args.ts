/**
 * The command line of `cola-fed-node`, modelled on `flower-supernode`'s (Flower 1.42): the same
 * names and meanings for `--superlink`, `--insecure`, `--root-certificates`,
 * `--auth-supernode-private-key`, `--node-config`, `--max-retries` and `--max-wait-time`, plus
 * `--heartbeat-interval` (Flower's SuperNode always asks for 30 s). Usage errors are
 * {@link UsageError}s (the CLI exits 2 on them).
 */
import { parseArgs } from "node:util";
import { HEARTBEAT_MAX_INTERVAL, HEARTBEAT_MIN_INTERVAL, HEARTBEAT_DEFAULT_INTERVAL } from "@cola-fed/core";
import { parseSuperlinkAddress } from "./transport.js";

/** `SUPERLINK_DEFAULT_CLIENT_ADDRESS` of Flower 1.42. */
export const DEFAULT_SUPERLINK = "127.0.0.1:8000";

/** The command line was wrong: what was expected, what came. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** What the command line asks for. */
export interface NodeArgs {
  help: boolean;
  version: boolean;
  superlink: string;
  insecure: boolean;
  rootCertificates: string | undefined;
  authPrivateKey: string | undefined;
  nodeConfig: string | undefined;
  heartbeatInterval: number;
  maxRetries: number | null;
  maxWaitTime: number | null;
}

/** The text `--help` prints. */
export function usage(program: string): string {
  return `Usage: ${program} [options]

Start a cola-fed node that joins a Flower 1.42 federation through the SuperLink's Fleet API.

Options:
  --superlink HOST:PORT          SuperLink Fleet API address (default ${DEFAULT_SUPERLINK}); HTTPS unless --insecure
  --insecure                     plain HTTP (no TLS); not allowed with --auth-supernode-private-key
  --root-certificates CA.pem     PEM CA certificate(s) that verify the SuperLink (default: the system's)
  --auth-supernode-private-key KEY
                                 the node's EC private key (OpenSSH, as 'ssh-keygen -t ecdsa -b 384'
                                 writes; or PEM), registered with 'flwr supernode register'
  --node-config "K=V ..."        node settings as flower-supernode reads them, e.g.
                                 "partition-id=0 num-partitions=2 data-path='/data/train.csv'",
                                 or the path of a .toml file
  --heartbeat-interval SECONDS   seconds between heartbeats the SuperLink expects (${HEARTBEAT_MIN_INTERVAL}-${HEARTBEAT_MAX_INTERVAL}, default ${HEARTBEAT_DEFAULT_INTERVAL})
  --max-retries N                retries of a failed connection before giving up (default: no limit)
  --max-wait-time SECONDS        time spent retrying a failed connection before giving up (default: no limit)
  -V, --version                  print the version
  -h, --help                     print this help

Exit codes: 0 stopped (SIGINT/SIGTERM), 1 failed (connection, authentication), 2 usage error.
A first SIGINT/SIGTERM finishes the message in hand, deactivates and unregisters; a second one
abandons the message.
`;
}

/** Parse the command line; throws UsageError. */
export function parseNodeArgs(argv: string[]): NodeArgs {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
        superlink: { type: "string" },
        insecure: { type: "boolean" },
        "root-certificates": { type: "string" },
        "auth-supernode-private-key": { type: "string" },
        "node-config": { type: "string" },
        "heartbeat-interval": { type: "string" },
        "max-retries": { type: "string" },
        "max-wait-time": { type: "string" },
      },
    }));
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message.split("\n")[0]! : String(err));
  }
  const text = (name: string) => values[name] as string | undefined;
  const superlink = text("superlink") ?? DEFAULT_SUPERLINK;
  if (parseSuperlinkAddress(superlink) === undefined) {
    throw new UsageError(`SuperLink address (${superlink}) cannot be parsed: expected HOST:PORT (e.g. 127.0.0.1:8000 or [::1]:8000), without a URL prefix`);
  }
  const insecure = values["insecure"] === true;
  const rootCertificates = text("root-certificates");
  if (insecure && rootCertificates !== undefined) {
    throw new UsageError(
      "Conflicting options: The '--insecure' flag disables HTTPS, but '--root-certificates' was also specified. " +
        "Please remove the '--root-certificates' option when running in insecure mode, or omit '--insecure' to use HTTPS.",
    );
  }
  const authPrivateKey = text("auth-supernode-private-key");
  if (insecure && authPrivateKey !== undefined) {
    throw new UsageError(
      "Insecure connection is enabled, but the SuperNode's private key is provided for authentication. " +
        "SuperNode authentication requires a secure TLS connection with the SuperLink. Please enable TLS by " +
        "providing the certificate via `--root-certificates`.",
    );
  }
  const heartbeatInterval = number(text("heartbeat-interval"), "--heartbeat-interval", { min: HEARTBEAT_MIN_INTERVAL, max: HEARTBEAT_MAX_INTERVAL }) ?? HEARTBEAT_DEFAULT_INTERVAL;
  const maxRetries = number(text("max-retries"), "--max-retries", { min: 0, integer: true });
  const maxWaitTime = number(text("max-wait-time"), "--max-wait-time", { min: 0 });
  return {
    help: values["help"] === true,
    version: values["version"] === true,
    superlink,
    insecure,
    rootCertificates,
    authPrivateKey,
    nodeConfig: text("node-config"),
    heartbeatInterval,
    maxRetries,
    maxWaitTime,
  };
}

function number(raw: string | undefined, flag: string, bounds: { min: number; max?: number; integer?: boolean }): number | null {
  if (raw === undefined) return null;
  const pattern = bounds.integer ? /^[+-]?[0-9]+$/ : /^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$/;
  const value = Number(raw.trim());
  if (!pattern.test(raw.trim()) || !Number.isFinite(value)) {
    throw new UsageError(`${flag} expects ${bounds.integer ? "an integer" : "a number"}, got ${JSON.stringify(raw)}`);
  }
  if (value < bounds.min || (bounds.max !== undefined && value > bounds.max)) {
    const range = bounds.max !== undefined ? `between ${bounds.min} and ${bounds.max}` : `at least ${bounds.min}`;
    throw new UsageError(`${flag} must be ${range}, got ${raw}`);
  }
  return value;
}
