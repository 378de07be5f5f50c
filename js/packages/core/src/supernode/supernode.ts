/**
 * The node's main loop (shared by the Node.js and browser runtimes; moved here from
 * js/packages/node/src/supernode.ts), mirroring Flower 1.42's `flower-supernode`
 * (`flwr/supernode/start_client_internal.py` and `fleet_http_connection.py`):
 *
 *   RegisterNode (unless the key is pre-registered for SuperNode authentication) -> ActivateNode
 *   -> heartbeats in the background -> loop { PullMessages (+ objects, confirm); none: wait 3 s;
 *   else run the app and PushMessages (+ objects) } -> on stop: DeactivateNode, UnregisterNode.
 *
 * The app is a function of the message: its RecordDict becomes the reply's content; an exception
 * becomes an error reply with Flower's `ErrorCode.CLIENT_APP_RAISED_EXCEPTION` (2) and a reason
 * written as Flower writes it (`<class 'Name'>:<'message'>`), so the ServerApp sees what a Python
 * ClientApp's exception gives it. Connection errors are retried by the transport
 * ({@link retryingTransport}); HTTP 403 (the run is no longer running) drops the message, as Flower
 * does; HTTP 401 and a lost connection (retries given up) stop the node with exit code 1.
 *
 * Stopping ({@link SuperNode.stop}, the CLI's first SIGINT/SIGTERM): no new message is pulled, a
 * message already pulled is finished (handled and replied) within `stopGraceSeconds`, then the
 * node deactivates and, if it registered itself, unregisters. {@link SuperNode.abandon} (a second
 * signal) drops the current message at once.
 */
import { FleetError } from "../errors.js";
import { FleetHttpError, FleetTransportError, HEARTBEAT_DEFAULT_INTERVAL, type FleetClient } from "../flower/fleet.js";
import { makeReply, type FlowerMessage, type MessageError, type ReplyBody } from "../flower/message.js";
import type { RecordDict } from "../flower/records.js";
import type { NodeConfig } from "../node/config.js";
import { abortableSleep, RetryAborted } from "./backoff.js";
import { HeartbeatSender } from "./heartbeat.js";

/** Flower's `ErrorCode.CLIENT_APP_RAISED_EXCEPTION`. */
export const CLIENT_APP_RAISED_EXCEPTION = 2n;
/** Seconds between pulls when no message is waiting (Flower's `time.sleep(3)`). */
export const PULL_INTERVAL = 3;

/** What the app knows of where a message came from (Flower's `Context`, the parts a node has). */
export interface AppContext {
  nodeId: bigint;
  runId: bigint;
  nodeConfig: NodeConfig;
}

/** A node's app: the reply content for one instruction; throwing makes an error reply. */
export type AppHandler = (message: FlowerMessage, context: AppContext) => Promise<RecordDict>;

/** Settings of a {@link SuperNode}. */
export interface SuperNodeOptions {
  /** A Fleet client over a retrying transport (see retry.ts). */
  client: FleetClient;
  handler: AppHandler;
  nodeConfig: NodeConfig;
  /** Register the key first (false with a key pre-registered by `flwr supernode register`). */
  selfRegister: boolean;
  /** Seconds between heartbeats the SuperLink expects (10..1800; default 30). */
  heartbeatInterval?: number;
  /** Seconds a stop waits for the current message before abandoning it (default 60). */
  stopGraceSeconds?: number;
  /** Seconds between pulls when nothing is waiting (default 3). */
  pullInterval?: number;
  /** Progress lines. */
  log?: (line: string) => void;
  /** Aborted when the node stops: hand it to the retrying transport so retries end at once. */
  stopController?: AbortController;
}

/** How a run of the node ended: exit code 0 (stopped on request) or 1 (a failure), and why. */
export interface SuperNodeExit {
  code: 0 | 1;
  reason: string;
}

/** Flower's reason string for a ClientApp exception: `<class 'Name'>:<'message'>`. */
export function exceptionReason(error: unknown): string {
  const name = error instanceof Error ? error.name || error.constructor.name : typeof error;
  const message = error instanceof Error ? error.message : String(error);
  return `<class '${name}'>:<'${message}'>`;
}

/** The SuperNode loop. `run()` once; `stop()` / `abandon()` from signal handlers. */
export class SuperNode {
  private readonly log: (line: string) => void;
  private readonly stopController: AbortController;
  private readonly abandonController = new AbortController();
  private stopReason: string | undefined;
  private failure: string | undefined;
  private graceTimer: ReturnType<typeof setTimeout> | undefined;
  private nodeId: bigint | undefined;

  constructor(private readonly options: SuperNodeOptions) {
    this.log = options.log ?? (() => {});
    this.stopController = options.stopController ?? new AbortController();
  }

  /** Ask the node to stop: finish the current message (within the grace period), then leave. */
  stop(reason = "stop requested"): void {
    if (this.stopReason !== undefined) return;
    this.stopReason = reason;
    this.log(`Stopping (${reason}): finishing the current message, if any`);
    this.stopController.abort();
    const grace = this.options.stopGraceSeconds ?? 60;
    this.graceTimer = setTimeout(() => this.abandon(`the current message took more than ${grace} s after the stop`), grace * 1000);
    (this.graceTimer as { unref?: () => void }).unref?.(); // Node.js: a grace timer alone keeps no process alive
  }

  /** Stop at once: the message in hand (if any) is dropped without a reply. */
  abandon(reason = "abandon requested"): void {
    if (this.abandonController.signal.aborted) return;
    if (this.stopReason === undefined) this.stop(reason);
    this.log(`Abandoning the current message (${reason})`);
    this.abandonController.abort();
  }

  private fail(reason: string): void {
    if (this.failure === undefined) this.failure = reason;
    this.stop(`error: ${reason}`);
  }

  private get stopping(): boolean {
    return this.stopReason !== undefined;
  }

  /** Connect, serve messages until stopped or failed, leave; resolves with the exit code. */
  async run(): Promise<SuperNodeExit> {
    const { client } = this.options;
    const interval = this.options.heartbeatInterval ?? HEARTBEAT_DEFAULT_INTERVAL;
    let registered = false;
    try {
      if (this.options.selfRegister) {
        await this.untilAbandoned(client.registerNode());
        registered = true;
      }
      this.nodeId = await this.untilAbandoned(client.activateNode(interval));
    } catch (err) {
      if (registered) this.log("The node registered but could not be activated; the SuperLink forgets it when unused.");
      if (this.stopping && this.failure === undefined) return { code: 0, reason: this.stopReason! };
      const reason = `Failed to initialize the connection to the SuperLink: ${describe(err)}`;
      this.log(reason);
      return { code: 1, reason };
    }
    this.log(`SuperNode ID: ${this.nodeId}`);

    const heartbeat = new HeartbeatSender({ client, interval, onFatal: (reason) => this.fail(reason), log: this.log });
    heartbeat.start();
    try {
      while (!this.stopping) {
        try {
          await this.untilAbandoned(this.serveOne());
        } catch (err) {
          if (err instanceof Abandoned) break;
          this.fail(describe(err));
        }
      }
    } finally {
      clearTimeout(this.graceTimer);
      await heartbeat.stop();
      await this.leave();
    }
    if (this.failure !== undefined) return { code: 1, reason: this.failure };
    return { code: 0, reason: this.stopReason ?? "stopped" };
  }

  /** One pull; if a message came, handle it and push the reply. */
  private async serveOne(): Promise<void> {
    const { client } = this.options;
    let pulled: Awaited<ReturnType<FleetClient["pullMessage"]>>;
    try {
      pulled = await client.pullMessage();
    } catch (err) {
      if (this.stopping && isStopInterruption(err)) return;
      if (err instanceof FleetHttpError && err.status === 403) {
        this.log("Run transitioned to a non-`RUNNING` status while receiving a message. Ignoring the message.");
        await this.pause();
        return;
      }
      if (err instanceof FleetHttpError && err.status === 401) throw new FleetError(`the SuperLink refused the node (HTTP 401): ${err.message}`);
      if (err instanceof FleetTransportError) throw err; // retries given up: the connection is lost
      this.log(`Failed to receive a message: ${describe(err)}`);
      await this.pause();
      return;
    }
    if (pulled === null) {
      await this.pause();
      return;
    }
    const { message } = pulled;
    const meta = message.metadata;
    this.log(meta.groupId ? `[RUN ${meta.runId}, ROUND ${meta.groupId}]` : `[RUN ${meta.runId}]`);
    this.log(`Receiving: ${meta.messageType} message (ID: ${meta.messageId})`);
    this.log("Received successfully");

    const started = performance.now();
    let body: ReplyBody;
    try {
      const content = await this.options.handler(message, { nodeId: this.nodeId!, runId: meta.runId, nodeConfig: this.options.nodeConfig });
      body = { content };
    } catch (err) {
      this.log(`ClientApp raised an exception: ${describe(err)}`);
      body = { error: { code: CLIENT_APP_RAISED_EXCEPTION, reason: exceptionReason(err) } };
    }
    const runtime = (performance.now() - started) / 1000;
    const reply = await this.buildReply(message, body);
    if (reply === undefined) return;

    this.log(meta.groupId ? `[RUN ${meta.runId}, ROUND ${meta.groupId}]` : `[RUN ${meta.runId}]`);
    this.log(`Sending: ${reply.metadata.messageType} message (ID: ${reply.metadata.messageId})`);
    try {
      await client.pushReply(reply, { clientappRuntime: runtime });
      this.log("Sent successfully");
    } catch (err) {
      if (err instanceof FleetHttpError && err.status === 403) {
        this.log(`Run ID ${meta.runId} is not in \`RUNNING\` status. Ignoring reply message ${reply.metadata.messageId}.`);
      } else if (err instanceof FleetHttpError && err.status === 401) {
        throw new FleetError(`the SuperLink refused the node (HTTP 401): ${err.message}`);
      } else {
        this.log(`Failed to send message ${reply.metadata.messageId}: ${describe(err)}`);
      }
    }
  }

  /** The reply; if the content cannot be sent (e.g. it does not encode), an error reply instead. */
  private async buildReply(message: FlowerMessage, body: ReplyBody): Promise<FlowerMessage | undefined> {
    try {
      return await makeReply(message, body);
    } catch (err) {
      if (body.content === undefined) {
        this.log(`Cannot reply to message ${message.metadata.messageId}: ${describe(err)}`);
        return undefined;
      }
      this.log(`The app's reply cannot be sent (${describe(err)}); replying with an error instead`);
      const error: MessageError = { code: CLIENT_APP_RAISED_EXCEPTION, reason: exceptionReason(err) };
      return this.buildReply(message, { error });
    }
  }

  /** Wait between pulls; a stop ends the wait at once. */
  private async pause(): Promise<void> {
    try {
      await abortableSleep(this.options.pullInterval ?? PULL_INTERVAL, this.stopController.signal);
    } catch (err) {
      if (!(err instanceof RetryAborted)) throw err;
    }
  }

  /** Deactivate (and unregister a self-registered node); failures are logged, as Flower ignores them. */
  private async leave(): Promise<void> {
    const { client } = this.options;
    try {
      await client.deactivate();
      this.log(`Deactivated node ${this.nodeId}`);
    } catch (err) {
      this.log(`Could not deactivate node ${this.nodeId}: ${describe(err)}`);
    }
    if (this.options.selfRegister) {
      try {
        await client.unregister();
        this.log(`Unregistered node ${this.nodeId}`);
      } catch (err) {
        this.log(`Could not unregister node ${this.nodeId}: ${describe(err)}`);
      }
    }
  }

  /** `work`, unless the node is told to abandon first (then Abandoned; `work` goes on unobserved). */
  private untilAbandoned<T>(work: Promise<T>): Promise<T> {
    const signal = this.abandonController.signal;
    work.catch(() => {}); // an abandoned step may still fail later: nobody listens then
    if (signal.aborted) return Promise.reject(new Abandoned());
    return new Promise<T>((resolve, reject) => {
      const onAbandon = () => reject(new Abandoned());
      signal.addEventListener("abort", onAbandon, { once: true });
      work.then(
        (value) => {
          signal.removeEventListener("abort", onAbandon);
          resolve(value);
        },
        (err: unknown) => {
          signal.removeEventListener("abort", onAbandon);
          reject(err);
        },
      );
    });
  }
}

class Abandoned extends Error {}

/** An error that only says the node is stopping (a retry wait cut short, a closed transport). */
function isStopInterruption(err: unknown): boolean {
  if (err instanceof RetryAborted) return true;
  return err instanceof FleetTransportError && /retrying stopped|transport (is|was) closed/.test(err.message);
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
