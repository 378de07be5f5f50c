/**
 * The SuperNode's heartbeat, as Flower 1.42's `HeartbeatSender` (`flwr/supercore/heartbeat.py`)
 * with the heartbeat function of `fleet_http_connection.py`: one heartbeat at start, then one
 * every `(interval - 5 s) * uniform(0.7, 0.9)`; a heartbeat that fails on the connection or with
 * HTTP 502/503/504 is retried with exponential backoff (full jitter, at most 20 s) until it goes
 * through or the sender stops. HTTP 401 (the SuperLink no longer accepts the node's key) and a
 * SuperLink that does not recognise the node are fatal: `onFatal` is told and the sender stops.
 * (Flower's thread dies on the latter and sends SIGINT on the former; here both stop the node.)
 */
import { FleetError } from "../errors.js";
import { FleetHttpError, FleetTransportError, type FleetClient } from "../flower/fleet.js";
import { abortableSleep, exponential, fullJitter, MAX_RETRY_DELAY, RetryAborted } from "./backoff.js";

/** `HEARTBEAT_CALL_TIMEOUT` (seconds): the heartbeat call's own timeout, taken off the period. */
export const HEARTBEAT_CALL_TIMEOUT = 5;
const HEARTBEAT_BASE_MULTIPLIER = 0.8;
const HEARTBEAT_RANDOM_RANGE = 0.1;

/** Settings of a {@link HeartbeatSender}. */
export interface HeartbeatOptions {
  client: Pick<FleetClient, "sendHeartbeat">;
  /** Seconds the SuperLink waits for the next heartbeat (sent with each one). */
  interval: number;
  /** Called once when heartbeats cannot go on (401, node unknown, an unexpected error). */
  onFatal: (reason: string) => void;
  log?: (line: string) => void;
  sleep?: (seconds: number, signal?: AbortSignal) => Promise<void>;
}

/** Sends heartbeats in the background until stopped. */
export class HeartbeatSender {
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(private readonly options: HeartbeatOptions) {}

  /** Start sending (the first heartbeat goes at once). */
  start(): void {
    if (this.loop !== undefined) throw new Error("the heartbeat sender is already running");
    this.loop = this.run().catch((err: unknown) => {
      if (!(err instanceof RetryAborted)) this.options.onFatal(`heartbeat failed: ${describe(err)}`);
    });
  }

  /** Stop sending and wait for the loop to end (a heartbeat in flight is not awaited past its timeout). */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }

  /** Whether the sender runs. */
  get running(): boolean {
    return this.loop !== undefined && !this.abort.signal.aborted;
  }

  private async run(): Promise<void> {
    const sleep = this.options.sleep ?? abortableSleep;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      const waits = exponential(1, 2, MAX_RETRY_DELAY);
      for (;;) {
        if (signal.aborted) return;
        try {
          await this.options.client.sendHeartbeat(this.options.interval);
          break;
        } catch (err) {
          if (signal.aborted) return;
          if (err instanceof FleetHttpError && err.status === 401) {
            this.options.onFatal("the SuperLink refused the node's heartbeat with HTTP 401: its key is not (or no longer) accepted");
            return;
          }
          const transient = err instanceof FleetTransportError || (err instanceof FleetHttpError && [502, 503, 504].includes(err.status));
          if (!transient) {
            this.options.onFatal(err instanceof FleetError ? err.message : `heartbeat failed: ${describe(err)}`);
            return;
          }
          const wait = fullJitter(waits.next().value);
          this.options.log?.(`Heartbeat failed (${describe(err)}), retrying in ${wait.toFixed(2)} seconds`);
          await sleep(wait, signal);
        }
      }
      const jitter = (Math.random() * 2 - 1) * HEARTBEAT_RANDOM_RANGE;
      const next = (this.options.interval - HEARTBEAT_CALL_TIMEOUT) * (HEARTBEAT_BASE_MULTIPLIER + jitter);
      await sleep(next, signal);
    }
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
