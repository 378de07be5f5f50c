/**
 * The Fleet API's transport for Node.js: protobuf bodies POSTed over `node:http` / `node:https`
 * (HTTP/1.1, the platform's own client, no dependency), as Flower 1.42's SuperNode does with
 * httpx (`flwr/supercore/protobuf/client.py`).
 *
 * - `--insecure`: plain http. Otherwise https, verified against the CA file given with
 *   `--root-certificates` (only that CA), or against Node's bundled roots when none is given.
 * - Keep-alive: one agent per transport; idle sockets are closed after 4 s, before uvicorn's 5 s
 *   keep-alive timeout can close them under a request. A request that fails on a reused socket
 *   before any byte of answer came back is sent once more on a fresh one (the server never saw it).
 * - Timeouts as httpx's: 30 s of inactivity while connecting, writing or reading (5 s for
 *   heartbeats, Flower's `HEARTBEAT_CALL_TIMEOUT`).
 * - Bounded answers: a body larger than `maxResponseBytes` (declared or received) is refused
 *   before it is buffered; error answers keep at most 64 KiB, as Flower's client does.
 * - Redirects are not followed (Flower's httpx client follows them): a 3xx is returned as is.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { isIP } from "node:net";
import { FleetError } from "@cola-fed/core";

/** One Fleet call: POST `body` to `path` with `headers`; the answer's status and body. */
export type Transport = (path: string, body: Uint8Array, headers: Record<string, string>) => Promise<{ status: number; body: Uint8Array }>;

/** Why a call got no HTTP answer. */
export type TransportFailure = "connect" | "timeout" | "read" | "write" | "protocol" | "tls" | "too-large" | "closed";

/**
 * A Fleet call got no usable HTTP answer. `retryable` follows Flower's SuperNode: connection,
 * read, write, protocol errors and timeouts are retried; TLS failures, oversized answers and a
 * closed transport are not.
 */
export class TransportError extends FleetError {
  readonly retryable: boolean;
  constructor(
    readonly failure: TransportFailure,
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.retryable = !["tls", "too-large", "closed"].includes(failure);
  }
}

/** A SuperLink address as `flower-supernode --superlink` takes it. */
export interface SuperlinkAddress {
  host: string;
  port: number;
  isV6: boolean;
}

/**
 * Parse `HOST:PORT` (`[V6]:PORT`, a name or an IPv4 address) as Flower's `parse_address` does;
 * returns undefined where Flower refuses (a URL prefix, a port that is not 0..65535) and also for
 * an empty host, which Flower accepts and then fails to connect to.
 */
export function parseSuperlinkAddress(address: string): SuperlinkAddress | undefined {
  if (address.includes("://")) return undefined;
  const colon = address.lastIndexOf(":");
  if (colon < 0) return undefined;
  const rawPort = address.slice(colon + 1);
  if (!/^[0-9]{1,5}$/.test(rawPort)) return undefined;
  const port = Number(rawPort);
  if (port > 65535) return undefined;
  const host = address.slice(0, colon).replace(/[[\]]/g, "");
  if (host === "") return undefined;
  const isV6 = host.includes(":");
  return { host, port, isV6 };
}

/** Settings of {@link createHttpTransport}. */
export interface HttpTransportOptions {
  /** The SuperLink as `HOST:PORT`. */
  address: string;
  /** Plain http (`--insecure`). */
  insecure: boolean;
  /** PEM CA certificates (the contents of `--root-certificates`); https only. */
  rootCertificates?: string | Uint8Array;
  /** Inactivity timeout of a call in ms (default 30 000, Flower's). */
  timeoutMs?: number;
  /** Per-path inactivity timeouts in ms (default: 5 000 for send-node-heartbeat). */
  timeoutsByPath?: Record<string, number>;
  /** Largest answer body accepted, in bytes (default 64 MiB). */
  maxResponseBytes?: number;
  /** Idle keep-alive sockets are closed after this many ms (default 4 000). */
  idleSocketMs?: number;
}

/** A {@link Transport} with its connection pool; `close()` ends every call in flight. */
export interface HttpTransport extends Transport {
  /** The base URL calls go to, e.g. `https://127.0.0.1:9092`. */
  readonly baseUrl: string;
  /** Abort calls in flight (they fail with a non-retryable TransportError) and close sockets. */
  close(): void;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const HEARTBEAT_TIMEOUT_MS = 5_000;
const DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024;
const MAX_ERROR_BODY_BYTES = 64 * 1024;
const PROTOBUF_MEDIA_TYPE = "application/protobuf";

/** Read `--root-certificates` (a PEM file); throws a plain Error naming the file otherwise. */
export function readRootCertificates(path: string): string {
  const text = readFileSync(path, "utf-8");
  if (!text.includes("-----BEGIN CERTIFICATE-----")) {
    throw new Error(`${path} holds no PEM certificate (expected "-----BEGIN CERTIFICATE-----")`);
  }
  return text;
}

/** A Fleet transport over node:http / node:https with keep-alive, timeouts and bounded answers. */
export function createHttpTransport(options: HttpTransportOptions): HttpTransport {
  const parsed = parseSuperlinkAddress(options.address);
  if (parsed === undefined) throw new TypeError(`SuperLink address (${options.address}) cannot be parsed; expected HOST:PORT`);
  if (options.insecure && options.rootCertificates !== undefined) {
    throw new TypeError("root certificates should not be given with insecure (plain http)");
  }
  const secure = !options.insecure;
  const hostForUrl = parsed.isV6 ? `[${parsed.host}]` : parsed.host;
  const baseUrl = `${secure ? "https" : "http"}://${hostForUrl}:${parsed.port}`;
  const idleSocketMs = options.idleSocketMs ?? 4_000;
  const agent = secure
    ? new https.Agent({
        keepAlive: true,
        timeout: idleSocketMs,
        ...(options.rootCertificates !== undefined ? { ca: toText(options.rootCertificates) } : {}),
      })
    : new http.Agent({ keepAlive: true, timeout: idleSocketMs });
  const timeouts: Record<string, number> = { "/v1/fleet/send-node-heartbeat": HEARTBEAT_TIMEOUT_MS, ...options.timeoutsByPath };
  const maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  const inFlight = new Set<http.ClientRequest>();
  let closed = false;

  const once = (path: string, body: Uint8Array, headers: Record<string, string>) =>
    new Promise<{ status: number; body: Uint8Array; reusedSocket: boolean; answered: boolean }>((resolve, reject) => {
      if (closed) {
        reject(new TransportError("closed", "the Fleet transport is closed"));
        return;
      }
      const timeoutMs = timeouts[path] ?? options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
      const requestHeaders: Record<string, string | number> = {
        "content-type": PROTOBUF_MEDIA_TYPE,
        accept: PROTOBUF_MEDIA_TYPE,
        "accept-encoding": "identity",
        "user-agent": "cola-fed-node",
        ...headers,
        "content-length": body.byteLength,
      };
      const request = (secure ? https : http).request({
        agent,
        protocol: secure ? "https:" : "http:",
        host: parsed.host,
        port: parsed.port,
        method: "POST",
        path,
        headers: requestHeaders,
        timeout: timeoutMs,
        ...(secure ? { servername: isIP(parsed.host) ? "" : parsed.host } : {}),
      });
      inFlight.add(request);
      let answered = false;
      let settled = false;
      const fail = (error: TransportError) => {
        if (settled) return;
        settled = true;
        inFlight.delete(request);
        request.destroy();
        Object.assign(error, { reusedSocket: request.reusedSocket, answered });
        reject(error);
      };
      request.on("timeout", () => fail(new TransportError("timeout", `no progress on ${path} for ${timeoutMs} ms`, "ETIMEDOUT")));
      request.on("error", (err: NodeJS.ErrnoException) => fail(classify(err, path, closed)));
      request.on("response", (response) => {
        answered = true;
        const status = response.statusCode ?? 0;
        const limit = status >= 400 ? MAX_ERROR_BODY_BYTES : maxResponseBytes;
        const declared = Number(response.headers["content-length"] ?? Number.NaN);
        if (status < 400 && Number.isFinite(declared) && declared > limit) {
          fail(new TransportError("too-large", `the answer to ${path} declares ${declared} bytes; at most ${limit} are accepted`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        let truncated = false;
        response.on("data", (chunk: Buffer) => {
          if (truncated || settled) return;
          if (size + chunk.length > limit) {
            if (status >= 400) {
              chunks.push(chunk.subarray(0, limit - size)); // keep the start of an error body
              size = limit;
              truncated = true;
              finish();
              return;
            }
            fail(new TransportError("too-large", `the answer to ${path} is larger than ${limit} bytes`));
            return;
          }
          chunks.push(chunk);
          size += chunk.length;
        });
        response.on("error", (err: NodeJS.ErrnoException) => fail(classify(err, path, closed)));
        response.on("aborted", () => fail(new TransportError("read", `the answer to ${path} was cut off`)));
        const finish = () => {
          if (settled) return;
          settled = true;
          inFlight.delete(request);
          if (truncated) response.destroy();
          const joined = new Uint8Array(size);
          let at = 0;
          for (const c of chunks) {
            joined.set(c, at);
            at += c.length;
          }
          resolve({ status, body: joined, reusedSocket: request.reusedSocket, answered });
        };
        response.on("end", finish);
      });
      request.end(body);
    });

  const transport = (async (path: string, body: Uint8Array, headers: Record<string, string>) => {
    try {
      const { status, body: answer } = await once(path, body, headers);
      return { status, body: answer };
    } catch (err) {
      // A keep-alive socket that the server closed while idle: the request never reached it.
      const info = err as { reusedSocket?: boolean; answered?: boolean };
      if (err instanceof TransportError && err.retryable && info.reusedSocket && !info.answered && err.failure !== "timeout") {
        const { status, body: answer } = await once(path, body, headers);
        return { status, body: answer };
      }
      throw err;
    }
  }) as HttpTransport;
  Object.defineProperty(transport, "baseUrl", { value: baseUrl, enumerable: true });
  transport.close = () => {
    closed = true;
    for (const request of inFlight) request.destroy(new Error("the Fleet transport was closed"));
    inFlight.clear();
    agent.destroy();
  };
  return transport;
}

const TLS_CODES = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|HOSTNAME|ALTNAME/i;

function classify(err: NodeJS.ErrnoException, path: string, closed: boolean): TransportError {
  const code = err.code ?? "";
  if (closed) return new TransportError("closed", `the Fleet transport was closed during ${path}`, code);
  const detail = `${code ? `${code}: ` : ""}${err.message.trim()}`;
  if (TLS_CODES.test(code) || /certificate|ssl|tls/i.test(err.message)) {
    // OpenSSL's "wrong version number": the server answered in plain HTTP, not TLS
    const hint = /wrong version number|packet length too long/i.test(err.message)
      ? "the SuperLink speaks plain HTTP: if it was started with --insecure, pass --insecure too"
      : "check --root-certificates";
    return new TransportError("tls", `TLS handshake with the SuperLink failed on ${path} (${detail}); ${hint}`, code);
  }
  if (["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL"].includes(code)) {
    return new TransportError("connect", `cannot connect to the SuperLink for ${path} (${detail})`, code);
  }
  if (code === "EPIPE") return new TransportError("write", `the connection closed while sending ${path} (${detail})`, code);
  if (code.startsWith("HPE_")) return new TransportError("protocol", `the SuperLink's answer to ${path} is not valid HTTP (${detail})`, code);
  return new TransportError("read", `the connection failed during ${path} (${detail})`, code);
}

function toText(pem: string | Uint8Array): string {
  return typeof pem === "string" ? pem : new TextDecoder("utf-8", { fatal: true }).decode(pem);
}
