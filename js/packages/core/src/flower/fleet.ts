/**
 * Flower 1.42's Fleet API client for a node: protobuf over plain HTTP POST, over an injected
 * transport (so the core stays platform-neutral: Node.js passes `fetch` or `node:http`, a
 * browser `fetch`).
 *
 * Port of `flwr/supernode/fleet_http_connection.py` and `fleet_http_client.py` (routes of
 * `flwr/superlink/routers/fleet/router.py`): RegisterNode -> ActivateNode -> (SendNodeHeartbeat
 * every interval) -> PullMessages -> PullObject for every object of the message's tree ->
 * ConfirmMessageReceived -> (the app runs) -> PushMessages -> PushObject for each object the
 * SuperLink asks for -> ... -> DeactivateNode -> UnregisterNode.
 *
 * Every response body is hostile: sizes are bounded before decoding, bodies are decoded with
 * the pinned schemas, object contents are checked against their ids and the message tree is
 * checked before anything in it is used. Every failure is a FleetError (or a subclass saying
 * whether the SuperLink answered with an HTTP error or could not be reached).
 */
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { FleetError } from "../errors.js";
import { nodeAuthHeaders, type NodeAuthKey } from "./auth.js";
import type { FlowerMessage } from "./message.js";
import {
  checkObjectTree,
  decodeMessageTree,
  DEFAULT_OBJECT_LIMITS,
  encodeMessage,
  metadataToProto,
  errorToProto,
  objectIdOf,
  type ObjectLimits,
  type ObjectTree,
} from "./objects.js";
import { message as schema } from "./proto.js";

/**
 * One HTTP POST: `path` is the route (e.g. `/v1/fleet/pull-messages`), relative to the
 * SuperLink's base URL which the transport knows. Resolves with the status and the body (the
 * transport should itself stop reading past a sane size); rejects on network failure.
 */
export type Transport = (path: string, body: Uint8Array, headers: Record<string, string>) => Promise<{ status: number; body: Uint8Array }>;

/** The SuperLink answered a Fleet call with an HTTP error status. */
export class FleetHttpError extends FleetError {
  constructor(
    message: string,
    /** The HTTP status (401: authentication refused; 502-504: the SuperLink is unreachable behind a proxy). */
    readonly status: number,
  ) {
    super(message);
  }
}

/** The transport failed (connection refused, reset, timeout): the call may be retried. */
export class FleetTransportError extends FleetError {}

/** Flower's Fleet routes (`flwr/supernode/fleet_http_client.py`). */
export const FLEET_ROUTES = {
  registerNode: "/v1/fleet/register-node",
  activateNode: "/v1/fleet/activate-node",
  deactivateNode: "/v1/fleet/deactivate-node",
  unregisterNode: "/v1/fleet/unregister-node",
  sendNodeHeartbeat: "/v1/fleet/send-node-heartbeat",
  pullMessages: "/v1/fleet/pull-messages",
  pushMessages: "/v1/fleet/push-messages",
  getRun: "/v1/fleet/get-run",
  getFab: "/v1/fleet/get-fab",
  pushObject: "/v1/fleet/push-object",
  pullObject: "/v1/fleet/pull-object",
  confirmMessageReceived: "/v1/fleet/confirm-message-received",
} as const;

/** Flower's protobuf media type (`flwr/supercore/protobuf/constants.py`). */
export const PROTOBUF_MEDIA_TYPE = "application/protobuf";

/** `HEARTBEAT_DEFAULT_INTERVAL` and the bounds the SuperLink accepts (seconds). */
export const HEARTBEAT_DEFAULT_INTERVAL = 30;
export const HEARTBEAT_MIN_INTERVAL = 10;
export const HEARTBEAT_MAX_INTERVAL = 1800;

/**
 * The runtime-version headers Flower's SuperNode sends (`RuntimeVersionHttpInterceptor`):
 * the SuperLink warns, or refuses, a peer of another major.minor release.
 */
export const RUNTIME_VERSION_HEADERS: Readonly<Record<string, string>> = {
  "flwr-package-name": "flwr",
  "flwr-package-version": "1.42.0",
  "flwr-component-name": "SuperNode",
};

/** How a pull retries an object the SuperLink does not have yet (`flwr/supercore/constant.py`). */
export interface PullRetry {
  /** Tries per object before giving up (`PULL_MAX_TRIES_PER_OBJECT` = 500). */
  maxTries: number;
  /** First wait in seconds (`PULL_INITIAL_BACKOFF` = 1), doubled per try up to `backoffCap`. */
  initialBackoff: number;
  /** Longest wait in seconds (`PULL_BACKOFF_CAP` = 10). */
  backoffCap: number;
  /** Seconds for the whole message (`PULL_MAX_TIME` = 7200). */
  maxTime: number;
}

/** Options of a {@link FleetClient}. */
export interface FleetClientOptions {
  transport: Transport;
  /** The node's signing key; a fresh one per start is what a self-registering SuperNode uses. */
  key: NodeAuthKey;
  /** Bounds on a pulled message's objects (defaults: {@link DEFAULT_OBJECT_LIMITS}). */
  limits?: Partial<ObjectLimits>;
  /** Largest response body accepted from any call, in bytes (default: maxObjectBytes + 1 MiB). */
  maxResponseBytes?: number;
  /** Retry policy of object pulls (defaults: Flower's). */
  pullRetry?: Partial<PullRetry>;
  /** Clock for the signed timestamps (default: the system clock). */
  now?: () => Date;
  /** Sleep used between pull retries (default: setTimeout). */
  sleep?: (seconds: number) => Promise<void>;
}

/** A pulled instruction: the decoded message and the verified object contents by id. */
export interface PulledMessage {
  message: FlowerMessage;
  objects: Map<string, Uint8Array>;
}

/** What the node learns of a run from GetRun (`flwr.proto.Run`, the fields a node uses). */
export interface FlowerRun {
  runId: bigint;
  fabId: string;
  fabVersion: string;
  fabHash: string;
  federation: string;
  seriesId: bigint;
}

/** Options of {@link FleetClient.pushReply}. */
export interface PushOptions {
  /** Seconds the app took for this message (`clientapp_runtime_list`; Flower reports it). */
  clientappRuntime?: number;
}

// Proto shapes as this file reads and writes them (the schemas come from reflection).
interface NodeProto { nodeId: bigint }
interface ObjectTreeProto { objectId: string; children: ObjectTreeProto[] }
interface MetadataProto {
  runId: bigint;
  messageId: string;
}
interface MessageProto { metadata?: MetadataProto }
interface PullMessagesResponseProto { messagesList: MessageProto[]; messageObjectTrees: ObjectTreeProto[] }
interface PushMessagesResponseProto { objectsToPush: string[]; sessionId: string }
interface PullObjectResponseProto { objectFound: boolean; objectAvailable: boolean; objectContent: Uint8Array }
interface RunProto { runId: bigint; fabId: string; fabVersion: string; fabHash: string; federation: string; seriesId: bigint }

const DEFAULT_PULL_RETRY: PullRetry = { maxTries: 500, initialBackoff: 1, backoffCap: 10, maxTime: 7200 };
const MAX_ERROR_BODY = 64 * 1024;

/**
 * A node's connection to a SuperLink's Fleet API. Calls are sequential (one at a time per
 * client is what Flower's SuperNode does besides its heartbeat thread; heartbeats may run
 * concurrently with the other calls here).
 */
export class FleetClient {
  private readonly transport: Transport;
  private readonly key: NodeAuthKey;
  private readonly limits: ObjectLimits;
  private readonly maxResponseBytes: number;
  private readonly retry: PullRetry;
  private readonly now: () => Date;
  private readonly sleep: (seconds: number) => Promise<void>;
  private node: bigint | undefined;

  /** A client that has not registered yet. */
  constructor(options: FleetClientOptions) {
    this.transport = options.transport;
    this.key = options.key;
    this.limits = { ...DEFAULT_OBJECT_LIMITS, ...options.limits };
    this.maxResponseBytes = options.maxResponseBytes ?? this.limits.maxObjectBytes + 2 ** 20;
    this.retry = { ...DEFAULT_PULL_RETRY, ...options.pullRetry };
    this.now = options.now ?? (() => new Date());
    this.sleep = options.sleep ?? ((s) => new Promise((resolve) => setTimeout(resolve, s * 1000)));
  }

  /** The node id the SuperLink gave at activation (undefined before). */
  get nodeId(): bigint | undefined {
    return this.node;
  }

  /** The public key (PEM bytes) the node registers with, as Flower sends it. */
  get publicKey(): Uint8Array {
    return new TextEncoder().encode(this.key.publicKeyPem);
  }

  /** RegisterNode: makes the key known (refused when the SuperLink runs `--enable-supernode-auth`). */
  async registerNode(): Promise<void> {
    await this.call(FLEET_ROUTES.registerNode, "RegisterNodeFleetRequest", { publicKey: this.publicKey }, "flwr.proto.RegisterNodeFleetResponse");
  }

  /** ActivateNode: brings the registered key online; returns (and keeps) the node id. */
  async activateNode(heartbeatInterval: number = HEARTBEAT_DEFAULT_INTERVAL): Promise<bigint> {
    checkHeartbeatInterval(heartbeatInterval);
    const response = (await this.call(FLEET_ROUTES.activateNode, "ActivateNodeRequest", { publicKey: this.publicKey, heartbeatInterval }, "flwr.proto.ActivateNodeResponse")) as { nodeId: bigint };
    if (response.nodeId === 0n) throw new FleetError("the SuperLink activated the node without giving it a node id");
    this.node = response.nodeId;
    return response.nodeId;
  }

  /**
   * SendNodeHeartbeat. Throws FleetError when the SuperLink no longer knows the node
   * (`success` false: Flower's SuperNode stops), FleetHttpError/FleetTransportError otherwise.
   */
  async sendHeartbeat(heartbeatInterval: number = HEARTBEAT_DEFAULT_INTERVAL): Promise<void> {
    checkHeartbeatInterval(heartbeatInterval);
    const node = this.nodeProto();
    const response = (await this.call(FLEET_ROUTES.sendNodeHeartbeat, "SendNodeHeartbeatRequest", { node, heartbeatInterval }, "flwr.proto.SendNodeHeartbeatResponse")) as { success: boolean };
    if (!response.success) throw new FleetError("Heartbeat failed unexpectedly. The SuperLink does not recognize this SuperNode.");
  }

  /**
   * PullMessages, then every object of the message's tree (each checked against its id), then
   * ConfirmMessageReceived; returns the decoded instruction, or null when none is waiting.
   */
  async pullMessage(): Promise<PulledMessage | null> {
    const node = this.nodeProto();
    const response = (await this.call(FLEET_ROUTES.pullMessages, "PullMessagesRequest", { node }, "flwr.proto.PullMessagesResponse")) as unknown as PullMessagesResponseProto;
    if (response.messagesList.length === 0) return null;
    if (response.messagesList.length !== response.messageObjectTrees.length) {
      throw new FleetError(`the SuperLink sent ${response.messagesList.length} messages but ${response.messageObjectTrees.length} object trees`);
    }
    const listed = response.messagesList[0]!;
    const tree = treeFromProto(response.messageObjectTrees[0]!);
    const runId = listed.metadata?.runId ?? 0n;
    if (listed.metadata === undefined || listed.metadata.messageId !== tree.objectId) {
      throw new FleetError(`the pulled message's id ${JSON.stringify(listed.metadata?.messageId ?? "")} is not its object tree's root ${tree.objectId.slice(0, 64)}`);
    }
    const ids = checkObjectTree(tree, this.limits);
    const objects = new Map<string, Uint8Array>();
    let total = 0;
    const started = Date.now();
    for (const id of ids) {
      const content = await this.pullObject(node, runId, id, started);
      if (content.length > this.limits.maxObjectBytes) {
        throw new FleetError(`object ${id} has ${content.length} bytes, more than the limit of ${this.limits.maxObjectBytes}`);
      }
      total += content.length;
      if (total > this.limits.maxTotalBytes) throw new FleetError(`the message's objects exceed ${this.limits.maxTotalBytes} bytes in all`);
      const actual = await objectIdOf(content);
      if (actual !== id) throw new FleetError(`object ${id} came with bytes whose SHA-256 is ${actual}: refused`);
      objects.set(id, content);
    }
    await this.call(FLEET_ROUTES.confirmMessageReceived, "ConfirmMessageReceivedRequest", { node, runId, messageObjectId: tree.objectId }, "flwr.proto.ConfirmMessageReceivedResponse");
    const message = await decodeMessageTree(tree, objects, this.limits);
    if (message.metadata.runId !== runId) throw new FleetError("the pulled message's object names another run than its listing");
    return { message, objects };
  }

  /**
   * PushMessages with the reply's metadata and object tree, then PushObject for each object
   * the SuperLink asks for. The reply's `message_id` must be its object id (see makeReply).
   */
  async pushReply(reply: FlowerMessage, options: PushOptions = {}): Promise<void> {
    const node = this.nodeProto();
    const encoded = await encodeMessage(reply);
    if (reply.metadata.messageId !== encoded.messageId) {
      throw new FleetError(`the reply's message_id ${JSON.stringify(reply.metadata.messageId)} is not its object id ${encoded.messageId}; build it with makeReply`);
    }
    const proto = create(schema("flwr.proto.Message"), {
      metadata: metadataToProto(reply.metadata, true),
      ...(reply.content !== undefined ? { content: create(schema("flwr.proto.RecordDict"), {}) } : {}),
      ...(reply.error !== undefined ? { error: errorToProto(reply.error) } : {}),
    } as never);
    const request = {
      node,
      messagesList: [proto],
      messageObjectTrees: [treeToProto(encoded.tree)],
      clientappRuntimeList: options.clientappRuntime !== undefined ? [options.clientappRuntime] : [],
    };
    const response = (await this.call(FLEET_ROUTES.pushMessages, "PushMessagesRequest", request, "flwr.proto.PushMessagesResponse")) as unknown as PushMessagesResponseProto;
    const wanted = new Set<string>();
    for (const id of response.objectsToPush) {
      if (!encoded.objects.has(id)) throw new FleetError(`the SuperLink asked for object ${id.slice(0, 64)}, which is not part of the reply`);
      wanted.add(id);
    }
    for (const [id, content] of encoded.objects) {
      if (!wanted.has(id)) continue;
      const pushed = (await this.call(
        FLEET_ROUTES.pushObject,
        "PushObjectRequest",
        { node, runId: reply.metadata.runId, objectId: id, objectContent: content, sessionId: response.sessionId },
        "flwr.proto.PushObjectResponse",
      )) as { stored: boolean };
      if (!pushed.stored) {
        throw new FleetError(`Failed to push object with ID '${id}' for run ${reply.metadata.runId} using session '${response.sessionId}'. The push session may have expired or been replaced.`);
      }
    }
  }

  /** GetRun: what the SuperLink says of a run the node has a message of. */
  async getRun(runId: bigint): Promise<FlowerRun> {
    const node = this.nodeProto();
    const response = (await this.call(FLEET_ROUTES.getRun, "GetRunRequest", { node, runId }, "flwr.proto.GetRunResponse")) as { run?: RunProto };
    if (response.run === undefined) throw new FleetError(`the SuperLink answered GetRun(${runId}) without a run`);
    const r = response.run;
    return { runId: r.runId, fabId: r.fabId, fabVersion: r.fabVersion, fabHash: r.fabHash, federation: r.federation, seriesId: r.seriesId };
  }

  /** DeactivateNode: the node goes offline (its registration stays). */
  async deactivate(): Promise<void> {
    const nodeId = this.nodeProto().nodeId;
    await this.call(FLEET_ROUTES.deactivateNode, "DeactivateNodeRequest", { nodeId }, "flwr.proto.DeactivateNodeResponse");
  }

  /** UnregisterNode: forgets the node (refused when the SuperLink runs `--enable-supernode-auth`). */
  async unregister(): Promise<void> {
    const nodeId = this.nodeProto().nodeId;
    await this.call(FLEET_ROUTES.unregisterNode, "UnregisterNodeFleetRequest", { nodeId }, "flwr.proto.UnregisterNodeFleetResponse");
    this.node = undefined;
  }

  // ------------------------------------------------------------------ internals

  private nodeProto(): NodeProto & object {
    if (this.node === undefined) throw new FleetError("the node is not activated: call activateNode() first");
    return create(schema("flwr.proto.Node"), { nodeId: this.node } as never) as unknown as NodeProto & object;
  }

  private async pullObject(node: NodeProto, runId: bigint, objectId: string, started: number): Promise<Uint8Array> {
    let delay = this.retry.initialBackoff;
    for (let tries = 1; ; tries++) {
      const response = (await this.call(FLEET_ROUTES.pullObject, "PullObjectRequest", { node, runId, objectId }, "flwr.proto.PullObjectResponse")) as unknown as PullObjectResponseProto;
      if (!response.objectFound) throw new FleetError(`Failed to pull object with ID '${objectId}': the object could not be found.`);
      if (response.objectAvailable) return response.objectContent;
      if (tries >= this.retry.maxTries || (Date.now() - started) / 1000 >= this.retry.maxTime) {
        throw new FleetError(`Failed to pull object with ID '${objectId}': timeout or retry limit reached`);
      }
      await this.sleep(delay * (1 + (Math.random() * 0.4 - 0.2)));
      delay = Math.min(delay * 2, this.retry.backoffCap);
    }
  }

  /** One signed call: encodes `request` as `flwr.proto.<requestName>`, decodes the answer. */
  private async call(path: string, requestName: string, request: Record<string, unknown>, responseName: string): Promise<Record<string, unknown>> {
    const requestSchema = schema(`flwr.proto.${requestName}`);
    const body = toBinary(requestSchema, create(requestSchema, request as never));
    const headers = {
      "content-type": PROTOBUF_MEDIA_TYPE,
      accept: PROTOBUF_MEDIA_TYPE,
      ...RUNTIME_VERSION_HEADERS,
      ...(await nodeAuthHeaders(this.key, this.now())),
    };
    let answer: { status: number; body: Uint8Array };
    try {
      answer = await this.transport(path, body, headers);
    } catch (err) {
      throw new FleetTransportError(`${path}: the SuperLink could not be reached: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (answer.status !== 200) {
      throw new FleetHttpError(`${path}: the SuperLink answered HTTP ${answer.status}${describeErrorBody(answer.body)}`, answer.status);
    }
    if (answer.body.length > this.maxResponseBytes) {
      throw new FleetError(`${path}: the response has ${answer.body.length} bytes, more than the limit of ${this.maxResponseBytes}`);
    }
    return decodeResponse(schema(responseName), answer.body, path);
  }
}

function decodeResponse(desc: DescMessage, body: Uint8Array, path: string): Record<string, unknown> {
  try {
    return fromBinary(desc, body, { readUnknownFields: false }) as MessageShape<DescMessage> as unknown as Record<string, unknown>;
  } catch (err) {
    throw new FleetError(`${path}: the response is not a valid ${desc.typeName}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function checkHeartbeatInterval(interval: number): void {
  if (!(interval >= HEARTBEAT_MIN_INTERVAL && interval <= HEARTBEAT_MAX_INTERVAL)) {
    throw new FleetError(`a heartbeat interval must be between ${HEARTBEAT_MIN_INTERVAL} and ${HEARTBEAT_MAX_INTERVAL} seconds, got ${interval}`);
  }
}

/** A short, printable account of an HTTP error body (Flower's JSON `{code, detail, extra}`, or text). */
function describeErrorBody(body: Uint8Array): string {
  const text = new TextDecoder("utf-8", { fatal: false }).decode(body.subarray(0, MAX_ERROR_BODY));
  try {
    const payload: unknown = JSON.parse(text);
    if (payload !== null && typeof payload === "object" && !Array.isArray(payload)) {
      const p = payload as Record<string, unknown>;
      const detail = typeof p["detail"] === "string" ? p["detail"] : typeof p["public_message"] === "string" ? p["public_message"] : undefined;
      const code = typeof p["code"] === "number" ? ` [code: ${p["code"]}]` : "";
      const extra = typeof p["extra"] === "string" ? ` (${p["extra"]})` : "";
      if (detail !== undefined) return `:${code} ${printable(detail)}${printable(extra)}`;
    }
  } catch {
    // not JSON: show the text itself
  }
  return text.length > 0 ? `: ${printable(text)}` : "";
}

function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?").slice(0, 500);
}

function treeFromProto(tree: ObjectTreeProto, depth = 0): ObjectTree {
  if (depth > 8) throw new FleetError("the message's object tree is deeper than Flower's messages (Message > RecordDict > ArrayRecord > Array > ArrayChunk)");
  return { objectId: tree.objectId, children: tree.children.map((c) => treeFromProto(c, depth + 1)) };
}

function treeToProto(tree: ObjectTree): unknown {
  return create(schema("flwr.proto.ObjectTree"), { objectId: tree.objectId, children: tree.children.map(treeToProto) } as never);
}
