import assert from "node:assert/strict";
import { test } from "node:test";
import { FleetHttpError, FleetTransportError, recordDict, type FleetClient, type FlowerMessage, type PulledMessage } from "@cola-fed/core";
import { exponential, RetryInvoker, retryingTransport } from "../src/retry.js";
import { CLIENT_APP_RAISED_EXCEPTION, exceptionReason, SuperNode, type AppHandler } from "../src/supernode.js";
import { TransportError, type Transport } from "../src/transport.js";

function instruction(type = "query"): FlowerMessage {
  return {
    metadata: {
      runId: 7n,
      messageId: "ab".repeat(32),
      srcNodeId: 1n,
      dstNodeId: 42n,
      replyToMessageId: "",
      groupId: "3",
      ttl: 3600,
      messageType: type,
      createdAt: Date.now() / 1000,
    },
    content: recordDict({ configs: new Map([["c", new Map([["x", 1n]])]]) }),
  };
}

/** A Fleet client double: records calls, serves `queue` then nothing. */
class FakeClient {
  calls: string[] = [];
  pushed: FlowerMessage[] = [];
  constructor(
    private readonly queue: Array<PulledMessage | Error>,
    private readonly onPull?: () => void,
  ) {}
  async registerNode() {
    this.calls.push("register");
  }
  async activateNode(interval: number) {
    this.calls.push(`activate:${interval}`);
    return 42n;
  }
  async sendHeartbeat() {
    this.calls.push("heartbeat");
  }
  async pullMessage(): Promise<PulledMessage | null> {
    this.calls.push("pull");
    this.onPull?.();
    const next = this.queue.shift();
    if (next instanceof Error) throw next;
    return next ?? null;
  }
  async pushReply(reply: FlowerMessage) {
    this.calls.push("push");
    this.pushed.push(reply);
  }
  async deactivate() {
    this.calls.push("deactivate");
  }
  async unregister() {
    this.calls.push("unregister");
  }
}

function node(client: FakeClient, handler: AppHandler, selfRegister = true, lines: string[] = []): SuperNode {
  return new SuperNode({
    client: client as unknown as FleetClient,
    handler,
    nodeConfig: Object.assign(Object.create(null), { "partition-id": 1n }),
    selfRegister,
    heartbeatInterval: 60,
    pullInterval: 0.01,
    log: (line) => lines.push(line),
  });
}

test("serves a message with the app's content, then stops cleanly: deactivate, unregister, exit 0", async () => {
  let sn: SuperNode;
  let pulls = 0;
  const client = new FakeClient([{ message: instruction(), objects: new Map() }], () => {
    if (++pulls === 3) sn.stop("test");
  });
  const seen: Array<{ runId: bigint; nodeId: bigint; partition: unknown }> = [];
  sn = node(client, async (message, context) => {
    seen.push({ runId: context.runId, nodeId: context.nodeId, partition: context.nodeConfig["partition-id"] });
    return message.content!;
  });
  const exit = await sn.run();
  assert.deepEqual(exit, { code: 0, reason: "test" });
  assert.deepEqual(seen, [{ runId: 7n, nodeId: 42n, partition: 1n }]);
  assert.equal(client.pushed.length, 1);
  const reply = client.pushed[0]!;
  assert.equal(reply.metadata.replyToMessageId, "ab".repeat(32));
  assert.equal(reply.metadata.srcNodeId, 42n);
  assert.ok(reply.content && !reply.error);
  const calls = client.calls.filter((c) => c !== "heartbeat");
  assert.deepEqual(calls, ["register", "activate:60", "pull", "push", "pull", "pull", "deactivate", "unregister"]);
});

test("an app exception becomes Flower's CLIENT_APP_RAISED_EXCEPTION error reply", async () => {
  let sn: SuperNode;
  const client = new FakeClient([{ message: instruction(), objects: new Map() }], () => {
    if (client.calls.filter((c) => c === "pull").length === 2) sn.stop("test");
  });
  sn = node(client, async () => {
    throw new RangeError("bad input");
  });
  assert.equal((await sn.run()).code, 0);
  const reply = client.pushed[0]!;
  assert.equal(reply.content, undefined);
  assert.deepEqual(reply.error, { code: CLIENT_APP_RAISED_EXCEPTION, reason: "<class 'RangeError'>:<'bad input'>" });
  assert.equal(exceptionReason("text"), "<class 'string'>:<'text'>");
});

test("a pre-registered key neither registers nor unregisters", async () => {
  let sn: SuperNode;
  const client = new FakeClient([], () => sn.stop("test"));
  sn = node(client, async (m) => m.content!, false);
  assert.equal((await sn.run()).code, 0);
  assert.deepEqual(client.calls.filter((c) => c !== "heartbeat"), ["activate:60", "pull", "deactivate"]);
});

test("HTTP 403 drops the message and goes on; HTTP 401 and a lost connection stop the node with exit 1", async () => {
  let sn: SuperNode;
  const client = new FakeClient([new FleetHttpError("run stopped", 403), { message: instruction(), objects: new Map() }]);
  const lines: string[] = [];
  sn = node(client, async (m) => m.content!, true, lines);
  const stopper = setInterval(() => {
    if (client.pushed.length > 0) sn.stop("test");
  }, 5);
  assert.equal((await sn.run()).code, 0);
  clearInterval(stopper);
  assert.ok(lines.some((l) => l.includes("non-`RUNNING` status")));

  for (const error of [new FleetHttpError("who are you", 401), new FleetTransportError("gave up")]) {
    const failing = new FakeClient([error]);
    const exit = await node(failing, async (m) => m.content!).run();
    assert.equal(exit.code, 1);
    assert.ok(failing.calls.includes("deactivate"));
  }
});

test("a failed activation exits 1 with Flower's message", async () => {
  const client = new FakeClient([]);
  client.activateNode = async () => {
    throw new FleetHttpError("refused", 400);
  };
  const exit = await node(client, async (m) => m.content!).run();
  assert.equal(exit.code, 1);
  assert.match(exit.reason, /^Failed to initialize the connection to the SuperLink: /);
});

test("abandon() drops a message whose app does not finish", async () => {
  let sn: SuperNode;
  const client = new FakeClient([{ message: instruction(), objects: new Map() }]);
  sn = node(client, () => {
    setTimeout(() => sn.abandon("test"), 20);
    return new Promise(() => {}); // never settles
  });
  const exit = await sn.run();
  assert.equal(exit.code, 0);
  assert.equal(client.pushed.length, 0);
  assert.ok(client.calls.includes("deactivate") && client.calls.includes("unregister"));
});

test("RetryInvoker: exponential waits capped, max tries, and give-up rules as Flower's", async () => {
  assert.deepEqual([...take(exponential(1, 2, 20), 7)], [1, 2, 4, 8, 16, 20, 20]);
  const waits: number[] = [];
  let calls = 0;
  const invoker = new RetryInvoker({
    recoverable: (e) => e instanceof TransportError,
    shouldGiveUp: (e) => e instanceof TransportError && !e.retryable,
    maxTries: 3,
    jitter: null,
    sleep: async (s) => {
      waits.push(s);
    },
  });
  await assert.rejects(
    invoker.invoke(async () => {
      calls++;
      throw new TransportError("connect", "refused");
    }),
    TransportError,
  );
  assert.equal(calls, 3);
  assert.deepEqual(waits, [1, 2]);
  calls = 0;
  await assert.rejects(
    invoker.invoke(async () => {
      calls++;
      throw new TransportError("tls", "bad certificate");
    }),
  );
  assert.equal(calls, 1);
  await assert.rejects(invoker.invoke(async () => Promise.reject(new TypeError("not recoverable"))), TypeError);
});

test("retryingTransport retries 503 and connection errors, re-signs each retry, passes heartbeats through", async () => {
  const { generateNodeAuthKey } = await import("@cola-fed/core");
  const key = await generateNodeAuthKey();
  const seen: Array<Record<string, string>> = [];
  const answers: Array<number | Error> = [503, new TransportError("read", "reset"), 200];
  const inner: Transport = async (_path, _body, headers) => {
    seen.push(headers);
    const next = answers.shift()!;
    if (next instanceof Error) throw next;
    return { status: next, body: new Uint8Array() };
  };
  const transport = retryingTransport(inner, { key, sleep: async () => {}, jitter: null });
  const first = { "flwr-signature": "first", "flwr-timestamp": "t0" };
  assert.equal((await transport("/v1/fleet/pull-messages", new Uint8Array(), first)).status, 200);
  assert.equal(seen.length, 3);
  assert.equal(seen[0]!["flwr-signature"], "first");
  assert.notEqual(seen[1]!["flwr-signature"], "first");

  answers.push(503);
  assert.equal((await transport("/v1/fleet/send-node-heartbeat", new Uint8Array(), first)).status, 503);
  assert.equal(seen.length, 4);

  const limited = retryingTransport(async () => ({ status: 504, body: new Uint8Array() }), { maxRetries: 2, sleep: async () => {}, jitter: null });
  assert.equal((await limited("/v1/fleet/pull-messages", new Uint8Array(), {})).status, 504);
  const forbidden = retryingTransport(async () => ({ status: 403, body: new Uint8Array() }), { sleep: async () => assert.fail("403 is not retried") });
  assert.equal((await forbidden("/v1/fleet/pull-messages", new Uint8Array(), {})).status, 403);
});

function* take<T>(it: Iterator<T>, n: number): Generator<T> {
  for (let i = 0; i < n; i++) yield it.next().value as T;
}

test("heartbeats: transient failures are retried with backoff, HTTP 401 is fatal", async () => {
  const { HeartbeatSender } = await import("../src/heartbeat.js");
  const outcomes: Array<Error | "ok"> = [new FleetTransportError("down"), new FleetHttpError("busy", 503), "ok", "ok", new FleetHttpError("key refused", 401)];
  const sent: number[] = [];
  const sleeps: number[] = [];
  let fatal = "";
  const done = new Promise<void>((resolve) => {
    const sender = new HeartbeatSender({
      client: {
        sendHeartbeat: async (interval: number) => {
          sent.push(interval);
          const next = outcomes.shift()!;
          if (next !== "ok") throw next;
        },
      },
      interval: 30,
      onFatal: (reason) => {
        fatal = reason;
        resolve();
      },
      sleep: async (seconds) => {
        sleeps.push(seconds);
      },
    });
    sender.start();
  });
  await done;
  assert.deepEqual(sent, [30, 30, 30, 30, 30]);
  assert.match(fatal, /401/);
  // two backoff waits (full jitter of 1 s, then of 2 s), then two periods of (30 - 5) * [0.7, 0.9]
  assert.ok(sleeps[0]! < 1 && sleeps[1]! < 2);
  for (const period of sleeps.slice(2)) assert.ok(period >= 17.5 && period <= 22.5, String(period));
});

test("log lines show what the SuperLink sent, never its terminal escapes, forged lines or bidi overrides", async () => {
  const { printableLogLine, runNodeProgram } = await import("../src/main.js");
  const hostile = "Receiving: \u001b]0;pwned\u0007\u001b[2J message (ID: a\r\n2026-01-01T00:00:00.000Z Sent \u202eevil\u009b)";
  const shown = printableLogLine(hostile);
  assert.equal(shown, "Receiving: \\x1b]0;pwned\\x07\\x1b[2J message (ID: a\\x0d\\x0a2026-01-01T00:00:00.000Z Sent \\u202eevil\\x9b)");
  assert.doesNotMatch(shown, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/);
  assert.equal(printableLogLine("round 3: loss 0.1234, état ✓"), "round 3: loss 0.1234, état ✓");
  // the program's own sink goes through it: a SuperLink address with an escape, logged as text
  const written: string[] = [];
  const code = await runNodeProgram(["--insecure", "--superlink", "x\u001b[31m:1", "--max-retries", "0"],
    async () => { throw new Error("stop here"); }, "cola-fed-node", { out: () => undefined, err: (t) => written.push(t) })
    .catch(() => -1);
  assert.ok(written.length > 0, String(code));
  assert.ok(written.every((t) => !t.slice(0, -1).includes("\u001b")), written.join(""));
});
