/**
 * Flower 1.42's retry behaviour on connection errors, for the Node.js SuperNode.
 *
 * `RetryInvoker` ports `flwr/supercore/retry/retry_invoker.py` (exponential backoff with full
 * jitter, `max_tries`, `max_time`, give-up rules) and {@link retryingTransport} ports the policy
 * of `make_simple_http_retry_invoker` (`flwr/supercore/retry/http_retry.py`) around each Fleet
 * call: connection, read, write and protocol errors and timeouts are retried, and so are HTTP 502,
 * 503 and 504; TLS failures and every other HTTP status are not. As in Flower, heartbeats,
 * DeactivateNode and UnregisterNode are never retried here (the heartbeat has its own loop).
 *
 * Each retry is signed afresh: Flower's interceptor signs every attempt, and a signature older
 * than 305 s is refused by the SuperLink.
 */
import { FLEET_ROUTES, nodeAuthHeaders, type NodeAuthKey } from "@cola-fed/core";
import { TransportError, type Transport } from "./transport.js";
import { abortableSleep, exponential, fullJitter, MAX_RETRY_DELAY, RetryAborted } from "@cola-fed/core";

// moved to the core (core/src/supernode/backoff.ts), re-exported for this package's users
export { abortableSleep, exponential, fullJitter, MAX_RETRY_DELAY, RetryAborted };

/** The state a retry callback sees (`RetryState`). */
export interface RetryState {
  tries: number;
  /** Seconds since the first try. */
  elapsed: number;
  error?: unknown;
  /** Seconds the invoker is about to wait (set before `onBackoff`). */
  wait?: number;
}

/** Settings of a {@link RetryInvoker}. */
export interface RetryInvokerOptions {
  /** Which errors trigger a retry at all (`recoverable_exceptions`). */
  recoverable: (error: unknown) => boolean;
  /** Give up early on a recoverable error (`should_giveup`). */
  shouldGiveUp?: (error: unknown) => boolean;
  /** Most tries in all, `null` for no limit (`--max-retries N` gives N + 1). */
  maxTries?: number | null;
  /** Most seconds of retrying, `null` for no limit (`--max-wait-time`). */
  maxTime?: number | null;
  /** Wait times (default: exponential up to {@link MAX_RETRY_DELAY}). */
  waitGenerator?: () => Iterator<number>;
  /** Jitter applied to each wait (default: full jitter). */
  jitter?: ((wait: number) => number) | null;
  onSuccess?: (state: RetryState) => void;
  onBackoff?: (state: RetryState) => void;
  onGiveUp?: (state: RetryState) => void;
  /** Sleep for `seconds`, rejecting with RetryAborted when `signal` aborts. */
  sleep?: (seconds: number, signal?: AbortSignal) => Promise<void>;
  /** Monotonic clock in seconds. */
  now?: () => number;
  /** Aborting it ends every wait at once (the call then fails with RetryAborted). */
  signal?: AbortSignal;
}

/** Port of Flower's `RetryInvoker.invoke` for async calls. */
export class RetryInvoker {
  constructor(private readonly options: RetryInvokerOptions) {}

  /** Call `target` until it succeeds, a non-recoverable error comes, or a limit is reached. */
  async invoke<T>(target: () => Promise<T>): Promise<T> {
    const o = this.options;
    const now = o.now ?? (() => performance.now() / 1000);
    const sleep = o.sleep ?? abortableSleep;
    const jitter = o.jitter === undefined ? fullJitter : o.jitter;
    const waits = (o.waitGenerator ?? (() => exponential(1, 2, MAX_RETRY_DELAY)))();
    const start = now();
    for (let tries = 1; ; tries++) {
      const elapsed = now() - start;
      const state: RetryState = { tries, elapsed };
      let result: T;
      try {
        result = await target();
      } catch (error) {
        if (!o.recoverable(error)) throw error;
        state.error = error;
        const maxTriesExceeded = o.maxTries != null && tries === o.maxTries;
        const maxTimeExceeded = o.maxTime != null && elapsed >= o.maxTime;
        if ((o.shouldGiveUp?.(error) ?? false) || maxTriesExceeded || maxTimeExceeded) {
          o.onGiveUp?.(state);
          throw error;
        }
        const next = waits.next();
        if (next.done) {
          o.onGiveUp?.(state);
          throw error;
        }
        let wait = jitter === null ? next.value : jitter(next.value);
        if (o.maxTime != null) wait = Math.min(wait, o.maxTime - elapsed);
        state.wait = wait;
        o.onBackoff?.(state);
        await sleep(wait, o.signal);
        continue;
      }
      o.onSuccess?.(state);
      return result;
    }
  }
}

/** An HTTP answer worth retrying, carried through the invoker (502, 503, 504). */
class RetryableStatus extends Error {
  constructor(readonly answer: { status: number; body: Uint8Array }) {
    super(`the SuperLink answered HTTP ${answer.status}`);
  }
}

const RETRYABLE_STATUSES = new Set([502, 503, 504]);
/** Calls Flower's SuperNode makes without its retry invoker. */
export const NOT_RETRIED_PATHS: ReadonlySet<string> = new Set([
  FLEET_ROUTES.sendNodeHeartbeat,
  FLEET_ROUTES.deactivateNode,
  FLEET_ROUTES.unregisterNode,
]);

/** Settings of {@link retryingTransport}. */
export interface RetryingTransportOptions {
  /** `--max-retries`: retries after the first try (`null`: no limit). */
  maxRetries?: number | null;
  /** `--max-wait-time` in seconds (`null`: no limit). */
  maxWaitTime?: number | null;
  /** Key that signs each retry afresh (absent: the headers are reused as they are). */
  key?: NodeAuthKey;
  /** Progress lines (Flower's warnings and infos). */
  log?: (line: string) => void;
  /** Aborting it ends every retry wait at once. */
  signal?: AbortSignal;
  /** Overrides for tests. */
  sleep?: (seconds: number, signal?: AbortSignal) => Promise<void>;
  jitter?: ((wait: number) => number) | null;
}

/**
 * Wrap a transport with Flower's SuperNode retry policy (see the module comment). Giving up on a
 * 5xx returns that answer (the Fleet client reports the status); giving up on a connection error
 * throws it.
 */
export function retryingTransport(inner: Transport, options: RetryingTransportOptions = {}): Transport {
  const log = options.log ?? (() => {});
  const invoker = new RetryInvoker({
    recoverable: (error) => error instanceof RetryableStatus || (error instanceof TransportError && error.failure !== "closed"),
    // Flower gives up at once on a TLS failure ("certificate", "ssl" or "tls" in the message).
    shouldGiveUp: (error) => error instanceof TransportError && !error.retryable,
    maxTries: options.maxRetries == null ? null : options.maxRetries + 1,
    maxTime: options.maxWaitTime ?? null,
    waitGenerator: () => exponential(1, 2, MAX_RETRY_DELAY),
    ...(options.jitter !== undefined ? { jitter: options.jitter } : {}),
    ...(options.sleep !== undefined ? { sleep: options.sleep } : {}),
    ...(options.signal !== undefined ? { signal: options.signal } : {}),
    onSuccess: (state) => {
      if (state.tries > 1) log(`Connection successful after ${state.elapsed.toFixed(2)} seconds and ${state.tries} tries.`);
    },
    onBackoff: (state) => {
      const reason = state.error instanceof Error ? state.error.message : String(state.error);
      log(`Connection attempt failed (${reason}), retrying in ${(state.wait ?? 0).toFixed(2)} seconds`);
    },
    onGiveUp: (state) => {
      if (state.tries > 1) log(`Giving up reconnection after ${state.elapsed.toFixed(2)} seconds and ${state.tries} tries.`);
    },
  });
  return async (path, body, headers) => {
    if (NOT_RETRIED_PATHS.has(path)) return inner(path, body, headers);
    let first = true;
    try {
      return await invoker.invoke(async () => {
        const signed = first || options.key === undefined || !("flwr-signature" in headers) ? headers : { ...headers, ...(await nodeAuthHeaders(options.key)) };
        first = false;
        const answer = await inner(path, body, signed);
        if (RETRYABLE_STATUSES.has(answer.status)) throw new RetryableStatus(answer);
        return answer;
      });
    } catch (error) {
      if (error instanceof RetryableStatus) return error.answer;
      throw error;
    }
  };
}
