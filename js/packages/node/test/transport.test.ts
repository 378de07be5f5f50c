import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { createHttpTransport, parseSuperlinkAddress, TransportError } from "../src/transport.js";

const TLS = new URL("../../test/fixtures/tls/", import.meta.url);
const read = (name: string) => readFileSync(new URL(name, TLS), "utf-8");

type Handler = (req: http.IncomingMessage, body: Buffer, res: http.ServerResponse) => void;

/** A loopback server that counts connections and hands each request's body to `handler`. */
async function serve(handler: Handler, secure = false): Promise<{ address: string; connections: () => number; close: () => Promise<void> }> {
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => handler(req, Buffer.concat(chunks), res));
  };
  const server = secure ? https.createServer({ key: read("server.key"), cert: read("server.pem") }, onRequest) : http.createServer(onRequest);
  let connections = 0;
  server.on(secure ? "secureConnection" : "connection", () => connections++);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    address: `127.0.0.1:${port}`,
    connections: () => connections,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const echo: Handler = (req, body, res) => {
  res.writeHead(200, { "content-type": "application/protobuf", "x-seen-path": req.url ?? "", "x-seen-auth": String(req.headers["flwr-signature"]) });
  res.end(body);
};

test("parses SuperLink addresses as Flower's parse_address does", () => {
  assert.deepEqual(parseSuperlinkAddress("127.0.0.1:9092"), { host: "127.0.0.1", port: 9092, isV6: false });
  assert.deepEqual(parseSuperlinkAddress("[::1]:9092"), { host: "::1", port: 9092, isV6: true });
  assert.deepEqual(parseSuperlinkAddress("link.example:443"), { host: "link.example", port: 443, isV6: false });
  for (const bad of ["http://127.0.0.1:9092", "127.0.0.1", "127.0.0.1:70000", "127.0.0.1:x", ":9092"]) {
    assert.equal(parseSuperlinkAddress(bad), undefined, bad);
  }
});

test("posts protobuf bodies with the caller's headers and reuses one keep-alive connection", async () => {
  const server = await serve(echo);
  const transport = createHttpTransport({ address: server.address, insecure: true });
  try {
    for (let i = 0; i < 3; i++) {
      const body = Uint8Array.of(i, 1, 2, 3);
      const answer = await transport("/v1/fleet/pull-messages", body, { "flwr-signature": "c2ln" });
      assert.equal(answer.status, 200);
      assert.deepEqual([...answer.body], [...body]);
    }
    assert.equal(server.connections(), 1);
  } finally {
    transport.close();
    await server.close();
  }
});

test("returns HTTP error statuses with at most 64 KiB of their body", async () => {
  const server = await serve((_req, _body, res) => {
    res.writeHead(503);
    res.end(Buffer.alloc(200_000, 0x61));
  });
  const transport = createHttpTransport({ address: server.address, insecure: true });
  try {
    const answer = await transport("/v1/fleet/pull-messages", new Uint8Array(), {});
    assert.equal(answer.status, 503);
    assert.equal(answer.body.length, 64 * 1024);
  } finally {
    transport.close();
    await server.close();
  }
});

test("refuses an answer larger than the bound, declared or streamed", async () => {
  const server = await serve((req, _body, res) => {
    if (req.url === "/declared") {
      res.writeHead(200, { "content-length": 5000 });
      res.end(Buffer.alloc(5000));
    } else {
      res.writeHead(200); // chunked: no declared length
      res.write(Buffer.alloc(3000));
      res.end(Buffer.alloc(3000));
    }
  });
  const transport = createHttpTransport({ address: server.address, insecure: true, maxResponseBytes: 4096 });
  try {
    for (const path of ["/declared", "/streamed"]) {
      await assert.rejects(transport(path, new Uint8Array(), {}), (err: unknown) => err instanceof TransportError && err.failure === "too-large" && !err.retryable);
    }
  } finally {
    transport.close();
    await server.close();
  }
});

test("times out a silent server (retryable), with a shorter timeout for heartbeats", async () => {
  const server = await serve(() => {
    /* never answers */
  });
  const transport = createHttpTransport({ address: server.address, insecure: true, timeoutMs: 300, timeoutsByPath: { "/v1/fleet/send-node-heartbeat": 100 } });
  try {
    const started = performance.now();
    await assert.rejects(transport("/v1/fleet/send-node-heartbeat", new Uint8Array(), {}), (err: unknown) => err instanceof TransportError && err.failure === "timeout" && err.retryable);
    assert.ok(performance.now() - started < 280);
    await assert.rejects(transport("/v1/fleet/pull-messages", new Uint8Array(), {}), (err: unknown) => err instanceof TransportError && err.failure === "timeout");
  } finally {
    transport.close();
    await server.close();
  }
});

test("a refused connection is a retryable connect error", async () => {
  const server = await serve(echo);
  const address = server.address;
  await server.close();
  const transport = createHttpTransport({ address, insecure: true });
  try {
    await assert.rejects(transport("/x", new Uint8Array(), {}), (err: unknown) => err instanceof TransportError && err.failure === "connect" && err.retryable);
  } finally {
    transport.close();
  }
});

test("TLS: verifies the SuperLink against the given CA, and refuses another CA (not retryable)", async () => {
  const server = await serve(echo, true);
  const good = createHttpTransport({ address: server.address, insecure: false, rootCertificates: read("ca.crt") });
  const wrong = createHttpTransport({ address: server.address, insecure: false, rootCertificates: read("other-ca.crt") });
  const byName = createHttpTransport({ address: server.address.replace("127.0.0.1", "localhost"), insecure: false, rootCertificates: read("ca.crt") });
  try {
    assert.equal(good.baseUrl.startsWith("https://"), true);
    const answer = await good("/v1/fleet/pull-messages", Uint8Array.of(7), {});
    assert.deepEqual([...answer.body], [7]);
    assert.equal((await byName("/v1/fleet/pull-messages", Uint8Array.of(8), {})).status, 200);
    await assert.rejects(wrong("/v1/fleet/pull-messages", Uint8Array.of(7), {}), (err: unknown) => err instanceof TransportError && err.failure === "tls" && !err.retryable);
  } finally {
    good.close();
    wrong.close();
    byName.close();
    await server.close();
  }
});

test("close() ends calls in flight with a non-retryable error", async () => {
  const server = await serve(() => {
    /* never answers */
  });
  const transport = createHttpTransport({ address: server.address, insecure: true });
  const pending = transport("/v1/fleet/pull-messages", new Uint8Array(), {});
  await new Promise((resolve) => setTimeout(resolve, 50));
  transport.close();
  await assert.rejects(pending, (err: unknown) => err instanceof TransportError && err.failure === "closed" && !err.retryable);
  await assert.rejects(transport("/x", new Uint8Array(), {}), (err: unknown) => err instanceof TransportError && err.failure === "closed");
  await server.close();
});

test("insecure with root certificates is refused", () => {
  assert.throws(() => createHttpTransport({ address: "127.0.0.1:1", insecure: true, rootCertificates: "x" }), TypeError);
});
