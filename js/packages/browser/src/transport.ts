/**
 * The Fleet API's transport in a browser: `fetch` POSTs to the page's own origin, where
 * `cola-fed serve-node` forwards `/v1/fleet/*` to the SuperLink (which sends no CORS headers, so a
 * page cannot call it directly). Answers are read with a size bound before they are buffered.
 *
 * Retries follow the Node.js node's policy in spirit (Flower's SuperNode): a call that got no
 * answer, or a 502/503/504 from the forwarder, is tried again with exponential backoff and full
 * jitter, signed afresh each time, for at most `maxWaitTime` seconds; heartbeats, DeactivateNode
 * and UnregisterNode are not retried here (the heartbeat has its own loop). A stop ends the
 * waits at once.
 */
import {
  abortableSleep, exponential, FLEET_ROUTES, fullJitter, MAX_RETRY_DELAY, nodeAuthHeaders, type NodeAuthKey, type Transport,
} from "@cola-fed/core";

/** Settings of {@link fetchTransport}. */
export interface FetchTransportOptions {
  /** Where the Fleet routes are: the page's origin (default `location.origin`). */
  baseUrl?: string;
  /** Largest answer accepted, in bytes. */
  maxResponseBytes: number;
  /** Milliseconds a call may take before it is abandoned (default 60 000). */
  timeoutMs?: number;
}

const NOT_RETRIED: ReadonlySet<string> = new Set([FLEET_ROUTES.sendNodeHeartbeat, FLEET_ROUTES.deactivateNode, FLEET_ROUTES.unregisterNode]);

/** One Fleet call over `fetch` (same origin, no credentials, no redirects followed). */
export function fetchTransport(options: FetchTransportOptions): Transport {
  const base = options.baseUrl ?? location.origin;
  return async (path, body, headers) => {
    const response = await fetch(new URL(path, base), {
      method: "POST", body: new Uint8Array(body), headers, credentials: "omit", redirect: "manual", cache: "no-store",
      signal: AbortSignal.timeout(options.timeoutMs ?? 60_000),
    });
    return { status: response.status, body: await boundedBody(response, options.maxResponseBytes, path) };
  };
}

/** The body of `response`, refused (an Error) as soon as it is larger than `limit` bytes. */
async function boundedBody(response: Response, limit: number, path: string): Promise<Uint8Array> {
  const declared = Number(response.headers.get("content-length") ?? "0");
  if (declared > limit) throw new Error(`${path}: the answer declares ${declared} bytes, more than the limit of ${limit}`);
  if (response.body === null) return new Uint8Array(0);
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > limit) {
      await reader.cancel();
      throw new Error(`${path}: the answer is larger than the limit of ${limit} bytes`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/** Settings of {@link retrying}. */
export interface RetryOptions {
  key: NodeAuthKey;
  /** Seconds of retrying before the error is passed on (default 120). */
  maxWaitTime?: number;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

/** `inner` with retries on a missing answer or HTTP 502/503/504 (see the module comment). */
export function retrying(inner: Transport, options: RetryOptions): Transport {
  const maxWait = options.maxWaitTime ?? 120;
  return async (path, body, headers) => {
    if (NOT_RETRIED.has(path)) return inner(path, body, headers);
    const waits = exponential(1, 2, MAX_RETRY_DELAY);
    const started = performance.now();
    let signed = headers;
    for (;;) {
      let failure: string;
      try {
        const answer = await inner(path, body, signed);
        if (![502, 503, 504].includes(answer.status)) return answer;
        failure = `HTTP ${answer.status}`;
        if ((performance.now() - started) / 1000 >= maxWait) return answer;
      } catch (err) {
        failure = err instanceof Error ? err.message : String(err);
        if ((performance.now() - started) / 1000 >= maxWait || options.signal?.aborted) throw err;
      }
      const wait = fullJitter(waits.next().value);
      options.log?.(`Connection attempt failed (${failure}), retrying in ${wait.toFixed(2)} seconds`);
      await abortableSleep(wait, options.signal);
      signed = { ...headers, ...(await nodeAuthHeaders(options.key)) };
    }
  };
}
