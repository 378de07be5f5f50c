/**
 * Flower 1.42's backoff pieces (`flwr/supercore/retry/`), shared by every runtime's SuperNode:
 * the exponential wait generator, full jitter, and a sleep that a stop interrupts. Moved here
 * from the Node.js runtime (js/packages/node/src/retry.ts) so a browser node uses the same loop.
 */

/** `MAX_RETRY_DELAY` (seconds) of `flwr.common.constant`. */
export const MAX_RETRY_DELAY = 20;

/** Flower's `exponential(base_delay, multiplier, max_delay)` wait generator (seconds). */
export function* exponential(baseDelay = 1, multiplier = 2, maxDelay?: number): Generator<number, never, undefined> {
  let delay = maxDelay === undefined ? baseDelay : Math.min(baseDelay, maxDelay);
  for (;;) {
    yield delay;
    delay *= multiplier;
    if (maxDelay !== undefined) delay = Math.min(delay, maxDelay);
  }
}

/** Flower's `full_jitter`: a uniform wait in [0, max). */
export function fullJitter(max: number): number {
  return Math.random() * max;
}

/** Raised by a wait that was interrupted because the node is stopping. */
export class RetryAborted extends Error {
  constructor() {
    super("retrying stopped: the node is shutting down");
    this.name = "RetryAborted";
  }
}

/** Sleep that an AbortSignal interrupts (with RetryAborted). */
export function abortableSleep(seconds: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new RetryAborted());
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(new RetryAborted());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, seconds * 1000));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
