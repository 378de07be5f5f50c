/**
 * The Fleet client: against a scripted SuperLink (pull, push, and hostile answers of every
 * kind), and against a REAL `flower-superlink --insecure` on loopback (register, activate,
 * heartbeat, pull nothing, deactivate, unregister; a badly signed call refused with 401).
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FleetError } from "../src/errors.js";
import { generateNodeAuthKey, nodeAuthHeaders } from "../src/flower/auth.js";
import { FleetClient, FleetHttpError, type Transport } from "../src/flower/fleet.js";
import { makeReply } from "../src/flower/message.js";
import { decodeMessageTree, encodeMessage } from "../src/flower/objects.js";
import { message as schema } from "../src/flower/proto.js";
import { fromHex } from "../src/util/bytes.js";
import { float, loadVectors, messageOf, type MessageJson, type TreeJson } from "./flower-vectors.js";

const V = loadVectors();
const INSTRUCTION = V.messages["instruction"] as MessageJson;

// ------------------------------------------------------------------ a scripted SuperLink

type Handler = (request: Record<string, unknown>) => Record<string, unknown> | { status: number; body: Uint8Array };
const RESPONSES: Record<string, string> = {
  "/v1/fleet/register-node": "RegisterNodeFleet",
  "/v1/fleet/activate-node": "ActivateNode",
  "/v1/fleet/send-node-heartbeat": "SendNodeHeartbeat",
  "/v1/fleet/pull-messages": "PullMessages",
  "/v1/fleet/pull-object": "PullObject",
  "/v1/fleet/confirm-message-received": "ConfirmMessageReceived",
  "/v1/fleet/push-messages": "PushMessages",
  "/v1/fleet/push-object": "PushObject",
  "/v1/fleet/deactivate-node": "DeactivateNode",
  "/v1/fleet/unregister-node": "UnregisterNodeFleet",
};

function scripted(handlers: Record<string, Handler>, calls: string[] = []): Transport {
  return async (path, body, headers) => {
    calls.push(path);
    assert.equal(headers["content-type"], "application/protobuf");
    assert.ok(headers["flwr-signature"] && headers["flwr-public-key"] && headers["flwr-timestamp"]);
    const name = RESPONSES[path]!;
    const request = fromBinary(schema(`flwr.proto.${name}Request`), body) as unknown as Record<string, unknown>;
    const answer = (handlers[path] ?? (() => ({})))(request);
    if ("status" in answer && (answer as { body?: unknown }).body instanceof Uint8Array) return answer as { status: number; body: Uint8Array };
    const desc = schema(`flwr.proto.${name}Response`);
    return { status: 200, body: toBinary(desc, create(desc, answer as never)) };
  };
}

function treeProto(t: TreeJson): unknown {
  return create(schema("flwr.proto.ObjectTree"), { objectId: t.id, children: t.children.map(treeProto) } as never);
}

function superlinkWith(objects: Map<string, Uint8Array>, extra: Record<string, Handler> = {}): Record<string, Handler> {
  const meta = messageOf(INSTRUCTION).metadata;
  return {
    "/v1/fleet/activate-node": () => ({ nodeId: meta.dstNodeId }),
    "/v1/fleet/pull-messages": () => ({
      messagesList: [create(schema("flwr.proto.Message"), { metadata: create(schema("flwr.proto.Metadata"), { runId: meta.runId, messageId: INSTRUCTION.message_id } as never) } as never)],
      messageObjectTrees: [treeProto(INSTRUCTION.tree)],
    }),
    "/v1/fleet/pull-object": (r) => {
      const content = objects.get(r["objectId"] as string);
      return content === undefined ? { objectFound: false } : { objectFound: true, objectAvailable: true, objectContent: content };
    },
    ...extra,
  };
}

function instructionObjects(): Map<string, Uint8Array> {
  return new Map(Object.entries(INSTRUCTION.objects).map(([id, hex]) => [id, fromHex(hex!)]));
}

async function activated(handlers: Record<string, Handler>, calls: string[] = []): Promise<FleetClient> {
  const client = new FleetClient({ transport: scripted(handlers, calls), key: await generateNodeAuthKey(), sleep: async () => {} });
  await client.activateNode();
  return client;
}

describe("FleetClient against a scripted SuperLink", () => {
  test("pulls every object, checks ids, confirms, decodes; pushes the reply's objects", async () => {
    const calls: string[] = [];
    const pushed = new Map<string, Uint8Array>();
    let pushedTree: unknown;
    const client = await activated(
      superlinkWith(instructionObjects(), {
        "/v1/fleet/push-messages": (r) => {
          pushedTree = (r["messageObjectTrees"] as unknown[])[0];
          const ids: string[] = [];
          const walk = (t: { objectId: string; children: unknown[] }) => {
            t.children.forEach((c) => walk(c as never));
            ids.push(t.objectId);
          };
          walk(pushedTree as never);
          return { objectsToPush: ids.slice(1), sessionId: "s1" };
        },
        "/v1/fleet/push-object": (r) => {
          assert.equal(r["sessionId"], "s1");
          pushed.set(r["objectId"] as string, r["objectContent"] as Uint8Array);
          return { stored: true };
        },
      }),
      calls,
    );
    const pulled = await client.pullMessage();
    assert.ok(pulled);
    assert.equal(pulled.message.metadata.messageId, INSTRUCTION.message_id);
    assert.equal(pulled.objects.size, INSTRUCTION.order.length);
    assert.equal(calls.filter((c) => c.endsWith("pull-object")).length, INSTRUCTION.order.length);
    assert.deepEqual(calls.slice(-1), ["/v1/fleet/confirm-message-received"]);
    const reply = await makeReply(pulled.message, { content: pulled.message.content! }, { now: float(V.messages.reply_time) });
    await client.pushReply(reply);
    const encoded = await encodeMessage(reply);
    assert.equal(pushed.size, encoded.objects.size - 1);
    for (const [id, bytes] of pushed) assert.deepEqual(bytes, encoded.objects.get(id));
  });

  test("no message waiting: null", async () => {
    const client = await activated({ "/v1/fleet/activate-node": () => ({ nodeId: 5n }), "/v1/fleet/pull-messages": () => ({}) });
    assert.equal(await client.pullMessage(), null);
  });

  test("an object not yet available is pulled again after a backoff", async () => {
    const objects = instructionObjects();
    let misses = 2;
    const client = await activated(
      superlinkWith(objects, {
        "/v1/fleet/pull-object": (r) => (misses-- > 0 ? { objectFound: true, objectAvailable: false } : { objectFound: true, objectAvailable: true, objectContent: objects.get(r["objectId"] as string)! }),
      }),
    );
    assert.ok(await client.pullMessage());
  });

  const hostile: [string, Record<string, Handler>, RegExp][] = [
    ["tampered object bytes", superlinkWith(new Map([...instructionObjects()].map(([k, v]) => [k, v.length > 300 ? Uint8Array.of(...v.subarray(0, -1), v[v.length - 1]! ^ 1) : v]))), /SHA-256/],
    ["a missing object", superlinkWith(new Map([...instructionObjects()].slice(1))), /could not be found/],
    ["an HTTP error with Flower's JSON", superlinkWith(instructionObjects(), { "/v1/fleet/pull-messages": () => ({ status: 500, body: new TextEncoder().encode('{"code": 1234, "detail": "bad\\u0000 thing"}') }) }), /HTTP 500: \[code: 1234\] bad\? thing/],
    ["a body that is not protobuf", superlinkWith(instructionObjects(), { "/v1/fleet/pull-messages": () => ({ status: 200, body: Uint8Array.of(0xff, 0xff, 0xff) }) }), /not a valid flwr.proto.PullMessagesResponse/],
    ["a listed id that is not the tree's root", superlinkWith(instructionObjects(), { "/v1/fleet/pull-messages": () => ({ messagesList: [create(schema("flwr.proto.Message"), { metadata: create(schema("flwr.proto.Metadata"), { messageId: "0".repeat(64) } as never) } as never)], messageObjectTrees: [treeProto(INSTRUCTION.tree)] }) }), /not its object tree's root/],
    ["an object never available", superlinkWith(instructionObjects(), { "/v1/fleet/pull-object": () => ({ objectFound: true, objectAvailable: false }) }), /retry limit/],
  ];
  for (const [name, handlers, pattern] of hostile) {
    test(`pull refuses ${name}`, async () => {
      const client = new FleetClient({ transport: scripted(handlers), key: await generateNodeAuthKey(), sleep: async () => {}, pullRetry: { maxTries: 3 } });
      await client.activateNode();
      await assert.rejects(client.pullMessage(), (err: Error) => err instanceof FleetError && pattern.test(err.message));
    });
  }

  test("a response larger than the limit is refused before decoding", async () => {
    const client = new FleetClient({ transport: scripted({ "/v1/fleet/activate-node": () => ({ status: 200, body: new Uint8Array(2000) }) }), key: await generateNodeAuthKey(), maxResponseBytes: 1000 });
    await assert.rejects(client.activateNode(), /more than the limit/);
  });

  test("push refuses a request for an object that is not the reply's, and an unstored object", async () => {
    const pulledMessage = await decodeMessageTree(
      { objectId: INSTRUCTION.tree.id, children: [] } as never,
      new Map(),
    ).catch(() => null);
    assert.equal(pulledMessage, null);
    const ins = messageOf(INSTRUCTION);
    ins.metadata.messageId = INSTRUCTION.message_id;
    const reply = await makeReply(ins, { error: { code: 1n, reason: "x" } }, { now: float(V.messages.reply_time) });
    const foreign = await activated(superlinkWith(instructionObjects(), { "/v1/fleet/push-messages": () => ({ objectsToPush: ["a".repeat(64)], sessionId: "s" }) }));
    await assert.rejects(foreign.pushReply(reply), /not part of the reply/);
    const unstored = await activated(
      superlinkWith(instructionObjects(), {
        "/v1/fleet/push-messages": () => ({ objectsToPush: [reply.metadata.messageId], sessionId: "s" }),
        "/v1/fleet/push-object": () => ({ stored: false }),
      }),
    );
    await assert.rejects(unstored.pushReply(reply), /Failed to push object/);
    await assert.rejects(foreign.pushReply({ ...reply, metadata: { ...reply.metadata, messageId: "b".repeat(64) } }), /not its object id/);
  });

  test("calls before activation and bad heartbeat intervals are refused locally", async () => {
    const client = new FleetClient({ transport: scripted({}), key: await generateNodeAuthKey() });
    await assert.rejects(client.pullMessage(), /not activated/);
    await assert.rejects(client.activateNode(5), /between 10 and 1800/);
  });
});

// ------------------------------------------------------------------ a real SuperLink

const SUPERLINK = "/work/main/.venv/bin/flower-superlink";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

async function waitForPort(port: number, proc: ChildProcess, seconds: number): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`flower-superlink exited with ${proc.exitCode}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ port, host: "127.0.0.1" }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`nothing listens on ${port}`);
}

function fetchTransport(base: string): Transport {
  return async (path, body, headers) => {
    const response = await fetch(base + path, { method: "POST", body, headers });
    return { status: response.status, body: new Uint8Array(await response.arrayBuffer()) };
  };
}

describe("FleetClient against a real flower-superlink --insecure", { skip: !existsSync(SUPERLINK) && "no flower-superlink in /work/main/.venv" }, () => {
  let proc: ChildProcess | undefined;
  let home = "";
  let base = "";
  let log = "";

  before(async () => {
    home = mkdtempSync(join(tmpdir(), "flwr-home-"));
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    proc = spawn(SUPERLINK, ["--insecure", "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", String(port), "--database", join(home, "state.db")], {
      // The SuperLink starts its `flower-superexec` helpers from PATH.
      env: { ...process.env, FLWR_HOME: home, PATH: `/work/main/.venv/bin:${process.env["PATH"] ?? ""}` },
      stdio: ["ignore", "pipe", "pipe"],
    });
    proc.stdout!.on("data", (d: Buffer) => (log += d.toString()));
    proc.stderr!.on("data", (d: Buffer) => (log += d.toString()));
    try {
      await waitForPort(port, proc, 90);
    } catch (err) {
      throw new Error(`${String(err)}\n${log.slice(-3000)}`);
    }
  });

  after(async () => {
    // Stop the SuperLink we started, by its PID (its flower-superexec children follow their --parent-pid).
    const running = () => proc !== undefined && proc.exitCode === null && proc.signalCode === null;
    if (running() && proc!.pid !== undefined) {
      const exited = new Promise((r) => proc!.once("exit", r));
      proc!.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10000))]);
      if (running()) proc!.kill("SIGKILL");
    }
    if (process.env["FLOWER_TEST_LOG"]) console.log(log.slice(-4000));
    if (home !== "") rmSync(home, { recursive: true, force: true });
  });

  test("register, activate, heartbeat, pull nothing, deactivate, unregister; bad signatures get 401", async () => {
    const key = await generateNodeAuthKey();
    const client = new FleetClient({ transport: fetchTransport(base), key });
    await client.registerNode();
    const nodeId = await client.activateNode(30);
    assert.ok(nodeId > 0n);
    await client.sendHeartbeat(30);
    assert.equal(await client.pullMessage(), null);

    // A request signed by another key than the one it claims is refused.
    const impostor = await generateNodeAuthKey();
    const node = create(schema("flwr.proto.Node"), { nodeId } as never);
    const desc = schema("flwr.proto.PullMessagesRequest");
    const body = toBinary(desc, create(desc, { node } as never));
    const good = await nodeAuthHeaders(key);
    const forged = { ...good, "flwr-signature": (await nodeAuthHeaders(impostor))["flwr-signature"]! };
    const stale = await nodeAuthHeaders(key, new Date(Date.now() - 400_000));
    for (const headers of [forged, stale]) {
      const answer = await fetchTransport(base)("/v1/fleet/pull-messages", body, { "content-type": "application/protobuf", ...headers });
      assert.equal(answer.status, 401, new TextDecoder().decode(answer.body));
    }
    // The impostor's own key is not this node's: its calls for the node are refused too.
    const other = new FleetClient({ transport: fetchTransport(base), key: impostor });
    await assert.rejects(other.activateNode(30), (err: Error) => err instanceof FleetHttpError && err.status >= 400);

    await client.deactivate();
    await client.unregister();
    await assert.rejects(new FleetClient({ transport: fetchTransport(base), key }).activateNode(30), (err: Error) => err instanceof FleetHttpError);
  });
});
