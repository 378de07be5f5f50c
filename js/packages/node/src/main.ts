/**
 * `cola-fed-node`'s program, with the app factory injected: reads the command line, the CA file,
 * the node key and the node config, builds transport -> retries -> Fleet client -> SuperNode,
 * installs the SIGINT/SIGTERM handlers and runs until the node stops. The shipped CLI (cli.ts)
 * passes the cola-fed app; tests pass their own handler through the same path.
 */
import { readFileSync } from "node:fs";
import { ConfigError, FleetClient, DEFAULT_OBJECT_LIMITS, generateNodeAuthKey, importNodeAuthKey, type NodeAuthKey } from "@cola-fed/core";
import { parseNodeArgs, usage, UsageError } from "./cli-args.js";
import { parseNodeConfig, type NodeConfig } from "./node-config.js";
import { retryingTransport } from "./retry.js";
import { SuperNode, type AppHandler } from "./supernode.js";
import { createHttpTransport, readRootCertificates } from "./transport.js";

/** Exit codes of `cola-fed-node`. */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

// C0 and C1 controls (ESC, CR, LF, BEL, ...) and the bidirectional overrides and isolates
// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/**
 * One log line as it may reach a terminal: the lines quote what the SuperLink and the server sent
 * (message types and ids, error details), so a control character (an escape sequence that
 * retitles or rewrites the terminal, a CR or LF that forges another line, a bidi override that
 * reorders it) is shown as `\xNN` / `\uNNNN` instead of acting.
 */
export function printableLogLine(line: string): string {
  return line.replace(UNPRINTABLE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

/** Builds the app handler once the node's settings are known. */
export type AppFactory = (options: { nodeConfig: NodeConfig; log: (line: string) => void }) => Promise<AppHandler>;

/** Where the program writes: progress lines and errors (stderr), help and version (stdout). */
export interface ProgramIo {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Signal source (default: the process). */
  signals?: Pick<NodeJS.Process, "on" | "off">;
}

const VERSION = "0.1.0";

const defaultIo: ProgramIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

/** Run the node program with `argv` (without node and script); resolves with the exit code. */
export async function runNodeProgram(argv: string[], createApp: AppFactory, program = "cola-fed-node", io: ProgramIo = defaultIo): Promise<number> {
  const log = (line: string) => io.err(`${new Date().toISOString()} ${printableLogLine(line)}\n`);
  const usageError = (message: string) => {
    io.err(`${program}: error: ${message}\nRun '${program} --help' for the options.\n`);
    return EXIT_USAGE;
  };

  let args;
  try {
    args = parseNodeArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) return usageError(err.message);
    throw err;
  }
  if (args.help) {
    io.out(usage(program));
    return EXIT_OK;
  }
  if (args.version) {
    io.out(`${program} ${VERSION} (Flower Fleet API 1.42)\n`);
    return EXIT_OK;
  }

  let nodeConfig: NodeConfig;
  let rootCertificates: string | undefined;
  let key: NodeAuthKey;
  try {
    nodeConfig = parseNodeConfig(args.nodeConfig, (path) => new TextDecoder("utf-8", { fatal: true }).decode(readFileSync(path)));
    if (args.rootCertificates !== undefined) {
      try {
        rootCertificates = readRootCertificates(args.rootCertificates);
      } catch (err) {
        return usageError(`--root-certificates: cannot use ${args.rootCertificates}: ${describe(err)}`);
      }
    }
    if (args.authPrivateKey !== undefined) {
      let pem: string;
      try {
        pem = readFileSync(args.authPrivateKey, "utf-8");
      } catch (err) {
        return usageError(`--auth-supernode-private-key: cannot read ${args.authPrivateKey}: ${describe(err)}`);
      }
      try {
        key = await importNodeAuthKey(pem);
      } catch (err) {
        return usageError(`--auth-supernode-private-key: unable to parse the private key file ${args.authPrivateKey}: ${describe(err)}`);
      }
    } else {
      key = await generateNodeAuthKey();
    }
  } catch (err) {
    if (err instanceof ConfigError) return usageError(`--node-config: ${err.message}`);
    throw err;
  }

  if (args.insecure) log(`Option \`--insecure\` was set. Starting insecure HTTP connection to ${args.superlink}.`);
  else if (rootCertificates === undefined) log("Using system certificates for TLS connection");

  let handler: AppHandler;
  try {
    handler = await createApp({ nodeConfig, log });
  } catch (err) {
    // a misspelt or missing node-config key is the user's to fix: a usage error, as the flags'
    if (err instanceof ConfigError) return usageError(`--node-config: ${err.message}`);
    io.err(`${program}: the app could not start: ${describe(err)}\n`);
    return EXIT_FAILURE;
  }

  const maxResponseBytes = DEFAULT_OBJECT_LIMITS.maxObjectBytes + 2 ** 20;
  const transport = createHttpTransport({
    address: args.superlink,
    insecure: args.insecure,
    maxResponseBytes,
    ...(rootCertificates !== undefined ? { rootCertificates } : {}),
  });
  const stopController = new AbortController();
  const client = new FleetClient({
    transport: retryingTransport(transport, { maxRetries: args.maxRetries, maxWaitTime: args.maxWaitTime, key, log, signal: stopController.signal }),
    key,
    maxResponseBytes,
  });
  const node = new SuperNode({
    client,
    handler,
    nodeConfig,
    selfRegister: args.authPrivateKey === undefined,
    heartbeatInterval: args.heartbeatInterval,
    log,
    stopController,
  });

  const signals = io.signals ?? process;
  let received = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    received += 1;
    if (received === 1) node.stop(`received ${signal}`);
    else node.abandon(`received ${signal} again`);
  };
  signals.on("SIGINT", onSignal);
  signals.on("SIGTERM", onSignal);
  log(`Starting cola-fed-node: SuperLink ${transport.baseUrl}, ${args.authPrivateKey !== undefined ? "pre-registered key" : "self-registered key"}`);
  try {
    const exit = await node.run();
    log(exit.code === EXIT_OK ? `SuperNode stopped (${exit.reason}).` : `SuperNode failed: ${exit.reason}`);
    return exit.code;
  } finally {
    signals.off("SIGINT", onSignal);
    signals.off("SIGTERM", onSignal);
    transport.close();
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
