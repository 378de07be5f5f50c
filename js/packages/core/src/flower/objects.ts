/**
 * Flower 1.42's content-addressed objects: a message travels as a tree of objects, each
 * identified by the SHA-256 (lower-case hex) of its bytes.
 *
 * Port of `flwr/supercore/inflatable/*` and the `deflate`/`inflate` of `flwr/app/message/*.py`.
 * An object's bytes are `"<ClassName> <child ids, comma-joined> <body length>"`, a zero byte,
 * then the body:
 *   Message      body: protobuf `flwr.proto.Message` {metadata with message_id "", error?};
 *                child: its RecordDict, or none when it carries an error
 *   RecordDict   body: `json.dumps({record name: record id})`; children: the unique records
 *   ArrayRecord  body: `json.dumps({array name: Array id})`; children: the unique Arrays
 *   ConfigRecord body: protobuf `flwr.proto.ConfigRecord`; MetricRecord likewise
 *   Array        body: `json.dumps({"dtype", "shape", "stype", "arraychunk_ids": [indices into
 *                the unique chunks]})`; children: the unique ArrayChunks
 *   ArrayChunk   body: up to FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE (5 MiB) bytes of the array's data
 * `json.dumps` is Python's default: `", "`/`": "` separators and `ensure_ascii`.
 *
 * Order: a RecordDict is written configs first, then arrays, then metrics, each in its Map's
 * order (records.ts keeps the three kinds apart; Python keeps one insertion order). cola-fed's
 * Python records follow that order (HelloReply: "clear" config, then "sealed" array).
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { defaultCryptoProvider } from "../crypto/provider.js";
import { FleetError } from "../errors.js";
import { toHex } from "../util/bytes.js";
import type { MessageError, FlowerMessage, FlowerMetadata } from "./message.js";
import { message as schema } from "./proto.js";
import type { ArrayRecord, ConfigRecord, ConfigValue, FlowerArray, MetricRecord, MetricValue, RecordDict } from "./records.js";

/** `FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`: bytes of array data per ArrayChunk. */
export const MAX_ARRAY_CHUNK_SIZE = 5242880;

/** The class names Flower inflates (`inflatable_class_registry`). */
export type ObjectClass = "Message" | "RecordDict" | "ArrayRecord" | "ConfigRecord" | "MetricRecord" | "Array" | "ArrayChunk";
const CLASSES: ReadonlySet<string> = new Set(["Message", "RecordDict", "ArrayRecord", "ConfigRecord", "MetricRecord", "Array", "ArrayChunk"]);

/** An object and its descendants by id (`flwr.proto.ObjectTree`). */
export interface ObjectTree {
  objectId: string;
  children: ObjectTree[];
}

/** Bounds on a message's objects, checked before anything is allocated from them. */
export interface ObjectLimits {
  /** Nodes in the object tree, repeats included. */
  maxObjects: number;
  /** Bytes of one object (a ConfigRecord of graphs is the largest non-chunk object). */
  maxObjectBytes: number;
  /** Bytes of all distinct objects together. */
  maxTotalBytes: number;
  /** Bytes of one Array's data once its chunks are joined (chunks may repeat). */
  maxArrayBytes: number;
  /** Entries of one record (names, config items, chunk indices). */
  maxEntries: number;
}

/** Defaults: generous for cola-fed's rounds (tens of MB), far below what hurts a device. */
export const DEFAULT_OBJECT_LIMITS: Readonly<ObjectLimits> = {
  maxObjects: 100_000,
  maxObjectBytes: 64 * 2 ** 20,
  maxTotalBytes: 1024 * 2 ** 20,
  maxArrayBytes: 1024 * 2 ** 20,
  maxEntries: 100_000,
};

/** A message deflated: its id, its tree and every distinct object's bytes (children first). */
export interface EncodedMessage {
  messageId: string;
  tree: ObjectTree;
  objects: Map<string, Uint8Array>;
}

const INT64_MAX = 2n ** 63n - 1n;
const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;
const ID_PATTERN = /^[0-9a-f]{64}$/;

/** The object id of deflated object bytes: SHA-256, lower-case hex (`get_object_id`). */
export async function objectIdOf(content: Uint8Array): Promise<string> {
  return toHex(await defaultCryptoProvider().sha256(content));
}

/** `add_header_to_object_body`: the object's bytes from its class, child ids and body. */
export function addObjectHeader(className: ObjectClass, childIds: readonly string[], body: Uint8Array): Uint8Array {
  const head = new TextEncoder().encode(`${className} ${childIds.join(",")} ${body.length}`);
  const out = new Uint8Array(head.length + 1 + body.length);
  out.set(head, 0);
  out.set(body, head.length + 1);
  return out;
}

/** An object's head values and body, as `validate_object_content` checks them. */
export interface ParsedObject {
  className: ObjectClass;
  childIds: string[];
  body: Uint8Array;
}

/**
 * Splits an object into class name, child ids and body, refusing what
 * `validate_object_content` refuses (no divider, not three head values, a child id that is not
 * a SHA-256 hex, an unknown class, a body length that does not match) with FleetError.
 * Stricter than Python where Python's `int()` is lax: the length must be plain decimal digits.
 */
export function parseObject(content: Uint8Array, id = "?"): ParsedObject {
  const divider = content.indexOf(0);
  if (divider === -1) throw new FleetError(`object ${id}: head and body could not be split (no zero byte)`);
  let head: string;
  try {
    head = new TextDecoder("utf-8", { fatal: true }).decode(content.subarray(0, divider));
  } catch {
    throw new FleetError(`object ${id}: its head is not UTF-8`);
  }
  const parts = head.split(" ");
  if (parts.length !== 3) throw new FleetError(`object ${id}: unexpected format for object head`);
  const [className, childText, lengthText] = parts as [string, string, string];
  const childIds = childText === "" ? [] : childText.split(",");
  for (const child of childIds) {
    if (!ID_PATTERN.test(child)) throw new FleetError(`object ${id}: detected invalid object ID (${child.slice(0, 70)}) in children`);
  }
  if (!CLASSES.has(className)) throw new FleetError(`object ${id}: object of type ${className.slice(0, 40)} is not supported`);
  const body = content.subarray(divider + 1);
  if (!/^(0|[1-9][0-9]{0,15})$/.test(lengthText) || Number(lengthText) !== body.length) {
    throw new FleetError(`object ${id}: object content length expected ${lengthText.slice(0, 20)} bytes but got ${body.length} bytes`);
  }
  return { className: className as ObjectClass, childIds, body };
}

// ---------------------------------------------------------------- Python's json.dumps

/** Python's `json.dumps(str)` (ensure_ascii: every non-printable-ASCII UTF-16 unit as \uXXXX). */
export function pyJsonString(text: string): string {
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += "\\\\";
    else if (c >= 0x20 && c <= 0x7e) out += text[i];
    else if (c === 0x08) out += "\\b";
    else if (c === 0x0c) out += "\\f";
    else if (c === 0x0a) out += "\\n";
    else if (c === 0x0d) out += "\\r";
    else if (c === 0x09) out += "\\t";
    else out += "\\u" + c.toString(16).padStart(4, "0");
  }
  return out + '"';
}

function pyDumpsObject(entries: Iterable<[string, string]>): string {
  const parts: string[] = [];
  for (const [k, v] of entries) parts.push(`${pyJsonString(k)}: ${v}`);
  return `{${parts.join(", ")}}`;
}

function pyDumpsIntList(values: readonly (number | bigint)[]): string {
  return `[${values.map((v) => String(v)).join(", ")}]`;
}

// ---------------------------------------------------------------- strict JSON reading

/** A parsed JSON value: objects keep their key order (Map), integers are bigint. */
type JsonNode = null | boolean | bigint | number | string | JsonNode[] | Map<string, JsonNode>;

/**
 * A small JSON reader for object bodies: keeps key order (a JavaScript object would move
 * integer-like names first), refuses duplicate names, bounds depth and entry counts.
 */
function parseJson(bytes: Uint8Array, id: string, maxEntries: number): JsonNode {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new FleetError(`object ${id}: its body is not UTF-8`);
  }
  let at = 0;
  const fail = (what: string): never => {
    throw new FleetError(`object ${id}: its JSON body is malformed at ${at}: ${what}`);
  };
  const ws = () => {
    while (at < text.length && " \t\n\r".includes(text[at]!)) at++;
  };
  const str = (): string => {
    if (text[at] !== '"') fail("expected a string");
    at++;
    let out = "";
    for (;;) {
      if (at >= text.length) fail("unterminated string");
      const c = text[at]!;
      if (c === '"') {
        at++;
        return out;
      }
      if (c < " ") fail("control character in a string");
      if (c !== "\\") {
        out += c;
        at++;
        continue;
      }
      const e = text[at + 1];
      const simple: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
      if (e !== undefined && e in simple) {
        out += simple[e];
        at += 2;
      } else if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(at + 2, at + 6))) {
        out += String.fromCharCode(parseInt(text.slice(at + 2, at + 6), 16));
        at += 6;
      } else fail("bad escape");
    }
  };
  const value = (depth: number): JsonNode => {
    if (depth > 4) fail("nested too deeply");
    ws();
    const c = text[at];
    if (c === "{") {
      at++;
      const map = new Map<string, JsonNode>();
      ws();
      if (text[at] === "}") {
        at++;
        return map;
      }
      for (;;) {
        ws();
        const key = str();
        ws();
        if (text[at] !== ":") fail("expected ':'");
        at++;
        if (map.has(key)) fail(`duplicate name ${JSON.stringify(key.slice(0, 60))}`);
        map.set(key, value(depth + 1));
        if (map.size > maxEntries) fail(`more than ${maxEntries} entries`);
        ws();
        if (text[at] === ",") at++;
        else if (text[at] === "}") {
          at++;
          return map;
        } else fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      at++;
      const list: JsonNode[] = [];
      ws();
      if (text[at] === "]") {
        at++;
        return list;
      }
      for (;;) {
        list.push(value(depth + 1));
        if (list.length > maxEntries) fail(`more than ${maxEntries} entries`);
        ws();
        if (text[at] === ",") at++;
        else if (text[at] === "]") {
          at++;
          return list;
        } else fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    const literal = /^(true|false|null|-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)/.exec(text.slice(at, at + 400));
    if (literal === null) fail("unexpected character");
    const token = literal![0];
    at += token.length;
    if (token === "true") return true;
    if (token === "false") return false;
    if (token === "null") return null;
    return /^-?[0-9]+$/.test(token) ? BigInt(token) : Number(token);
  };
  const result = value(0);
  ws();
  if (at !== text.length) fail("trailing data");
  return result;
}

function jsonRefs(body: Uint8Array, id: string, limits: ObjectLimits, what: string): Map<string, string> {
  const parsed = parseJson(body, id, limits.maxEntries);
  if (!(parsed instanceof Map)) throw new FleetError(`object ${id}: a ${what} body must be a JSON object of name -> object id`);
  const refs = new Map<string, string>();
  for (const [name, ref] of parsed) {
    if (typeof ref !== "string" || !ID_PATTERN.test(ref)) {
      throw new FleetError(`object ${id}: ${what} entry ${JSON.stringify(name.slice(0, 60))} is not an object id`);
    }
    refs.set(name, ref);
  }
  return refs;
}

// ---------------------------------------------------------------- protobuf bodies

type ProtoInit = Record<string, unknown>;

/** Metadata as `flwr.proto.Metadata` (message_id kept or blanked, as in the object body). */
export function metadataToProto(meta: FlowerMetadata, withMessageId: boolean): unknown {
  const init: ProtoInit = {
    runId: meta.runId,
    messageId: withMessageId ? meta.messageId : "",
    srcNodeId: meta.srcNodeId,
    dstNodeId: meta.dstNodeId,
    replyToMessageId: meta.replyToMessageId,
    groupId: meta.groupId,
    ttl: meta.ttl,
    messageType: meta.messageType,
    createdAt: meta.createdAt,
  };
  if (meta.srcTaskId !== undefined) init["srcTaskId"] = meta.srcTaskId;
  if (meta.dstTaskId !== undefined) init["dstTaskId"] = meta.dstTaskId;
  return create(schema("flwr.proto.Metadata"), init as never);
}

/** An error as `flwr.proto.Error` (`error_to_proto`). */
export function errorToProto(error: MessageError): unknown {
  return create(schema("flwr.proto.Error"), { code: error.code, reason: error.reason } as never);
}

function messageBody(message: FlowerMessage): Uint8Array {
  const init: ProtoInit = { metadata: metadataToProto(message.metadata, false) };
  if (message.error !== undefined) init["error"] = errorToProto(message.error);
  const desc = schema("flwr.proto.Message");
  return toBinary(desc, create(desc, init as never));
}

interface ValueCase {
  case: string;
  value: unknown;
}

function checkInt64(v: bigint, key: string): void {
  if (v < INT64_MIN || v > UINT64_MAX) throw new FleetError(`record value ${key}: ${v} does not fit a 64-bit integer`);
}

/** `_record_value_to_proto`: the oneof case Flower picks for a value (bool before int, uint64 above INT64_MAX, an empty list as the first allowed kind). */
function valueCase(value: ConfigValue | MetricValue, key: string, kinds: "config" | "metric"): ValueCase {
  const listSchema: Record<string, string> = { doubleList: "DoubleList", sintList: "SintList", uintList: "UintList", boolList: "BoolList", stringList: "StringList", bytesList: "BytesList" };
  const mk = (name: string, vals: unknown[]): ValueCase => ({ case: name, value: create(schema(`flwr.proto.${listSchema[name]}`), { vals } as never) });
  if (Array.isArray(value)) {
    const items = value as unknown[];
    if (items.length === 0) return kinds === "config" ? mk("boolList", []) : mk("doubleList", []);
    const allOf = (pred: (v: unknown) => boolean) => items.every(pred);
    if (kinds === "config" && allOf((v) => typeof v === "boolean")) return mk("boolList", items);
    if (allOf((v) => typeof v === "bigint")) {
      for (const v of items as bigint[]) checkInt64(v, key);
      return (items as bigint[]).some((v) => v > INT64_MAX) ? mk("uintList", items) : mk("sintList", items);
    }
    if (allOf((v) => typeof v === "number")) return mk("doubleList", items);
    if (kinds === "config" && allOf((v) => typeof v === "string")) return mk("stringList", items);
    if (kinds === "config" && allOf((v) => v instanceof Uint8Array)) return mk("bytesList", items);
    throw new FleetError(`record value ${key}: a list of mixed or unsupported types`);
  }
  if (typeof value === "boolean" && kinds === "config") return { case: "bool", value };
  if (typeof value === "bigint") {
    checkInt64(value, key);
    return value > INT64_MAX ? { case: "uint64", value } : { case: "sint64", value };
  }
  if (typeof value === "number") return { case: "double", value };
  if (typeof value === "string" && kinds === "config") return { case: "string", value };
  if (value instanceof Uint8Array && kinds === "config") return { case: "bytes", value };
  throw new FleetError(`record value ${key}: type not allowed in a ${kinds === "config" ? "ConfigRecord" : "MetricRecord"}`);
}

function recordBody(record: ConfigRecord | MetricRecord, kind: "config" | "metric"): Uint8Array {
  const recordName = kind === "config" ? "flwr.proto.ConfigRecord" : "flwr.proto.MetricRecord";
  const valueName = kind === "config" ? "flwr.proto.ConfigRecordValue" : "flwr.proto.MetricRecordValue";
  const items = [...record].map(([key, v]) =>
    create(schema(`${recordName}.Item`), { key, value: create(schema(valueName), { value: valueCase(v, key, kind) } as never) } as never),
  );
  const desc = schema(recordName);
  return toBinary(desc, create(desc, { items } as never));
}

function decodeRecordBody(body: Uint8Array, id: string, kind: "config" | "metric", limits: ObjectLimits): Map<string, ConfigValue> {
  const recordName = kind === "config" ? "flwr.proto.ConfigRecord" : "flwr.proto.MetricRecord";
  let proto: { items: { key: string; value?: { value: { case: string | undefined; value?: unknown } } }[] };
  try {
    proto = fromBinary(schema(recordName), body, { readUnknownFields: false }) as unknown as typeof proto;
  } catch (err) {
    throw new FleetError(`object ${id}: not a valid ${recordName}: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (proto.items.length > limits.maxEntries) throw new FleetError(`object ${id}: more than ${limits.maxEntries} items`);
  const out = new Map<string, ConfigValue>();
  for (const item of proto.items) {
    if (out.has(item.key)) throw new FleetError(`object ${id}: duplicate key ${JSON.stringify(item.key.slice(0, 60))}`);
    const oneof = item.value?.value;
    if (oneof === undefined || oneof.case === undefined) throw new FleetError(`object ${id}: key ${JSON.stringify(item.key.slice(0, 60))} has no value`);
    const v = oneof.value;
    if (oneof.case.endsWith("List")) {
      const vals = (v as { vals: unknown[] }).vals;
      out.set(item.key, (oneof.case === "bytesList" ? vals.map((b) => new Uint8Array(b as Uint8Array)) : [...vals]) as ConfigValue);
    } else out.set(item.key, (oneof.case === "bytes" ? new Uint8Array(v as Uint8Array) : v) as ConfigValue);
  }
  return out;
}

// ---------------------------------------------------------------- encoding

interface Deflated {
  id: string;
  tree: ObjectTree;
}

class Deflater {
  readonly objects = new Map<string, Uint8Array>();
  constructor(private readonly chunkSize: number) {}

  private async put(className: ObjectClass, children: Deflated[], body: Uint8Array): Promise<Deflated> {
    const unique: Deflated[] = [];
    for (const c of children) if (!unique.some((u) => u.id === c.id)) unique.push(c);
    const content = addObjectHeader(className, unique.map((c) => c.id), body);
    const id = await objectIdOf(content);
    if (!this.objects.has(id)) this.objects.set(id, content);
    return { id, tree: { objectId: id, children: unique.map((c) => c.tree) } };
  }

  async array(array: FlowerArray): Promise<Deflated> {
    const chunks: Deflated[] = [];
    for (let start = 0; start < array.data.length; start += this.chunkSize) {
      chunks.push(await this.put("ArrayChunk", [], array.data.subarray(start, Math.min(start + this.chunkSize, array.data.length))));
    }
    const unique = [...new Set(chunks.map((c) => c.id))];
    const indices = chunks.map((c) => unique.indexOf(c.id));
    const body = pyDumpsObject([
      ["dtype", pyJsonString(array.dtype)],
      ["shape", pyDumpsIntList(array.shape)],
      ["stype", pyJsonString(array.stype)],
      ["arraychunk_ids", pyDumpsIntList(indices)],
    ]);
    return this.put("Array", chunks, new TextEncoder().encode(body));
  }

  async refs(className: "RecordDict" | "ArrayRecord", entries: [string, Deflated][]): Promise<Deflated> {
    const body = pyDumpsObject(entries.map(([name, d]) => [name, pyJsonString(d.id)]));
    return this.put(className, entries.map(([, d]) => d), new TextEncoder().encode(body));
  }

  async recordDict(content: RecordDict): Promise<Deflated> {
    const entries: [string, Deflated][] = [];
    const seen = new Set<string>();
    const name = (n: string) => {
      if (seen.has(n)) throw new FleetError(`record name ${JSON.stringify(n)} is used by two records of a RecordDict`);
      seen.add(n);
      return n;
    };
    for (const [n, r] of content.configs) entries.push([name(n), await this.put("ConfigRecord", [], recordBody(r, "config"))]);
    for (const [n, r] of content.arrays) {
      const arrays: [string, Deflated][] = [];
      for (const [an, a] of r) arrays.push([an, await this.array(a)]);
      entries.push([name(n), await this.refs("ArrayRecord", arrays)]);
    }
    for (const [n, r] of content.metrics) entries.push([name(n), await this.put("MetricRecord", [], recordBody(r as Map<string, ConfigValue>, "metric"))]);
    return this.refs("RecordDict", entries);
  }

  async message(message: FlowerMessage): Promise<Deflated> {
    if ((message.content !== undefined) === (message.error !== undefined)) throw new FleetError("a message carries content or an error (exactly one)");
    const children = message.content !== undefined ? [await this.recordDict(message.content)] : [];
    return this.put("Message", children, messageBody(message));
  }
}

/**
 * Deflates a message into Flower's object tree: its id (the `message_id` Flower gives it), the
 * tree, and each distinct object's bytes, children before parents (the order Flower pushes).
 * `chunkSize` exists for tests; Flower's is {@link MAX_ARRAY_CHUNK_SIZE}.
 */
export async function encodeMessage(message: FlowerMessage, chunkSize: number = MAX_ARRAY_CHUNK_SIZE): Promise<EncodedMessage> {
  const deflater = new Deflater(chunkSize);
  const root = await deflater.message(message);
  // Post-order with the root last, as Flower's iterate_object_tree yields them.
  const ordered = new Map<string, Uint8Array>();
  const visit = (tree: ObjectTree) => {
    for (const c of tree.children) visit(c);
    if (!ordered.has(tree.objectId)) ordered.set(tree.objectId, deflater.objects.get(tree.objectId)!);
  };
  visit(root.tree);
  return { messageId: root.id, tree: root.tree, objects: ordered };
}

// ---------------------------------------------------------------- decoding

/** The class each level of a message tree may hold. */
const ALLOWED_CHILDREN: Record<ObjectClass, readonly ObjectClass[]> = {
  Message: ["RecordDict"],
  RecordDict: ["ConfigRecord", "ArrayRecord", "MetricRecord"],
  ArrayRecord: ["Array"],
  Array: ["ArrayChunk"],
  ConfigRecord: [],
  MetricRecord: [],
  ArrayChunk: [],
};

/**
 * Checks an object tree's shape before anything is pulled (ids are SHA-256 hex, at most
 * `maxObjects` nodes, no deeper than a message goes) and returns its distinct ids, children
 * first, root last.
 */
export function checkObjectTree(tree: ObjectTree, limits: Partial<ObjectLimits> = {}): string[] {
  const lim = { ...DEFAULT_OBJECT_LIMITS, ...limits };
  const ids: string[] = [];
  const seen = new Set<string>();
  let count = 0;
  const visit = (node: ObjectTree, depth: number) => {
    if (depth > 4) throw new FleetError("the object tree is deeper than a message (Message > RecordDict > ArrayRecord > Array > ArrayChunk)");
    if (++count > lim.maxObjects) throw new FleetError(`the object tree has more than ${lim.maxObjects} objects`);
    if (!ID_PATTERN.test(node.objectId)) throw new FleetError(`the object tree holds an invalid object id ${JSON.stringify(node.objectId.slice(0, 70))}`);
    for (const child of node.children) visit(child, depth + 1);
    if (!seen.has(node.objectId)) {
      seen.add(node.objectId);
      ids.push(node.objectId);
    }
  };
  visit(tree, 0);
  return ids;
}

type Inflated =
  | { kind: "Message"; value: FlowerMessage }
  | { kind: "RecordDict"; value: RecordDict }
  | { kind: "ConfigRecord"; value: ConfigRecord }
  | { kind: "MetricRecord"; value: MetricRecord }
  | { kind: "ArrayRecord"; value: ArrayRecord }
  | { kind: "Array"; value: FlowerArray }
  | { kind: "ArrayChunk"; value: Uint8Array };

class Inflater {
  private readonly done = new Map<string, Inflated>();
  constructor(
    private readonly objects: Map<string, Uint8Array>,
    private readonly limits: ObjectLimits,
  ) {}

  inflate(tree: ObjectTree, expected: readonly ObjectClass[]): Inflated {
    const id = tree.objectId;
    const content = this.objects.get(id);
    if (content === undefined) throw new FleetError(`object ${id} of the message's tree is missing`);
    const parsed = parseObject(content, id);
    if (!expected.includes(parsed.className)) {
      throw new FleetError(`object ${id} is a ${parsed.className} where a ${expected.join(" or ")} was expected`);
    }
    // The head's list (bound into the object's id) is what counts, in its order; the SuperLink's
    // tree may list the same children in another order, as Flower's own inflation allows.
    const treeIds = tree.children.map((c) => c.objectId);
    const sortedTree = [...treeIds].sort();
    const sortedHead = [...parsed.childIds].sort();
    if (sortedTree.length !== sortedHead.length || sortedTree.some((c, i) => c !== sortedHead[i])) {
      throw new FleetError(`object ${id}: its head lists children [${parsed.childIds.join(",")}] but the tree gives [${treeIds.join(",")}]`);
    }
    if (new Set(parsed.childIds).size !== parsed.childIds.length) throw new FleetError(`object ${id}: its head lists a child twice`);
    const cached = this.done.get(id);
    if (cached !== undefined) return cached;
    const children = new Map<string, Inflated>();
    for (const child of tree.children) children.set(child.objectId, this.inflate(child, ALLOWED_CHILDREN[parsed.className]));
    const result = this.build(id, parsed, children);
    this.done.set(id, result);
    return result;
  }

  private sameSet(id: string, referenced: Iterable<string>, children: Map<string, Inflated>): void {
    const refs = new Set(referenced);
    if (refs.size !== children.size || [...refs].some((r) => !children.has(r))) {
      throw new FleetError(`object ${id}: unexpected set of children: its body references [${[...refs].join(",")}] but its head lists [${[...children.keys()].join(",")}]`);
    }
  }

  private build(id: string, parsed: ParsedObject, children: Map<string, Inflated>): Inflated {
    const lim = this.limits;
    switch (parsed.className) {
      case "ArrayChunk":
        return { kind: "ArrayChunk", value: parsed.body };
      case "ConfigRecord":
        return { kind: "ConfigRecord", value: decodeRecordBody(parsed.body, id, "config", lim) };
      case "MetricRecord": {
        const record = decodeRecordBody(parsed.body, id, "metric", lim);
        for (const [k, v] of record) {
          const ok = typeof v === "bigint" || typeof v === "number" || (Array.isArray(v) && (v as unknown[]).every((x) => typeof x === "bigint" || typeof x === "number"));
          if (!ok) throw new FleetError(`object ${id}: metric ${JSON.stringify(k.slice(0, 60))} is not a number`);
        }
        return { kind: "MetricRecord", value: record as MetricRecord };
      }
      case "Array":
        return { kind: "Array", value: this.array(id, parsed, children) };
      case "ArrayRecord": {
        const refs = jsonRefs(parsed.body, id, lim, "ArrayRecord");
        this.sameSet(id, refs.values(), children);
        const record: ArrayRecord = new Map();
        for (const [name, ref] of refs) record.set(name, (children.get(ref) as { value: FlowerArray }).value);
        return { kind: "ArrayRecord", value: record };
      }
      case "RecordDict": {
        const refs = jsonRefs(parsed.body, id, lim, "RecordDict");
        this.sameSet(id, refs.values(), children);
        const out: RecordDict = { configs: new Map(), arrays: new Map(), metrics: new Map() };
        for (const [name, ref] of refs) {
          const child = children.get(ref)!;
          if (child.kind === "ConfigRecord") out.configs.set(name, child.value);
          else if (child.kind === "ArrayRecord") out.arrays.set(name, child.value);
          else if (child.kind === "MetricRecord") out.metrics.set(name, child.value);
        }
        return { kind: "RecordDict", value: out };
      }
      case "Message":
        return { kind: "Message", value: this.message(id, parsed, children) };
    }
  }

  private array(id: string, parsed: ParsedObject, children: Map<string, Inflated>): FlowerArray {
    const meta = parseJson(parsed.body, id, this.limits.maxEntries);
    if (!(meta instanceof Map)) throw new FleetError(`object ${id}: an Array body must be a JSON object`);
    const keys = [...meta.keys()].sort().join(",");
    if (keys !== "arraychunk_ids,dtype,shape,stype") throw new FleetError(`object ${id}: an Array body has keys dtype, shape, stype, arraychunk_ids; got ${keys.slice(0, 100)}`);
    const dtype = meta.get("dtype");
    const stype = meta.get("stype");
    const shape = meta.get("shape");
    const indices = meta.get("arraychunk_ids");
    if (typeof dtype !== "string" || typeof stype !== "string") throw new FleetError(`object ${id}: an Array's dtype and stype must be strings`);
    if (!Array.isArray(shape) || !shape.every((d) => typeof d === "bigint" && d >= 0n && d <= BigInt(Number.MAX_SAFE_INTEGER))) {
      throw new FleetError(`object ${id}: an Array's shape must be a list of non-negative integers`);
    }
    if (!Array.isArray(indices) || !indices.every((i) => typeof i === "bigint" && i >= 0n && i < BigInt(parsed.childIds.length))) {
      throw new FleetError(`object ${id}: arraychunk_ids must be indices into the ${parsed.childIds.length} chunks of its head`);
    }
    const chunkIds = (indices as bigint[]).map((i) => parsed.childIds[Number(i)]!);
    this.sameSet(id, chunkIds, children);
    const chunks = chunkIds.map((c) => (children.get(c) as { value: Uint8Array }).value);
    const size = chunks.reduce((n, c) => n + c.length, 0);
    if (size > this.limits.maxArrayBytes) throw new FleetError(`object ${id}: the array's data would be ${size} bytes, more than the limit of ${this.limits.maxArrayBytes}`);
    const data = new Uint8Array(size);
    let at = 0;
    for (const c of chunks) {
      data.set(c, at);
      at += c.length;
    }
    return { dtype, shape: (shape as bigint[]).map(Number), stype, data };
  }

  private message(id: string, parsed: ParsedObject, children: Map<string, Inflated>): FlowerMessage {
    let proto: {
      metadata?: FlowerMetadata & { srcTaskId?: bigint; dstTaskId?: bigint };
      content?: unknown;
      error?: { code: bigint; reason: string };
    };
    try {
      proto = fromBinary(schema("flwr.proto.Message"), parsed.body, { readUnknownFields: false }) as unknown as typeof proto;
    } catch (err) {
      throw new FleetError(`object ${id}: not a valid flwr.proto.Message: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (proto.metadata === undefined) throw new FleetError(`object ${id}: the message has no metadata`);
    if (proto.content !== undefined) throw new FleetError(`object ${id}: a Message object carries its content as a child, not in its body`);
    if (proto.metadata.messageId !== "") throw new FleetError(`object ${id}: a Message object's metadata must have an empty message_id`);
    const m = proto.metadata;
    const metadata: FlowerMetadata = {
      runId: m.runId,
      messageId: id,
      srcNodeId: m.srcNodeId,
      dstNodeId: m.dstNodeId,
      replyToMessageId: m.replyToMessageId,
      groupId: m.groupId,
      ttl: m.ttl,
      messageType: m.messageType,
      createdAt: m.createdAt,
    };
    if (m.srcTaskId !== undefined) metadata.srcTaskId = m.srcTaskId;
    if (m.dstTaskId !== undefined) metadata.dstTaskId = m.dstTaskId;
    if (proto.error !== undefined) {
      if (children.size !== 0) throw new FleetError(`object ${id}: a message with an error has no content`);
      return { metadata, error: { code: proto.error.code, reason: proto.error.reason } };
    }
    if (children.size !== 1) throw new FleetError(`object ${id}: a message without an error has exactly one RecordDict`);
    const content = [...children.values()][0]!;
    return { metadata, content: content.value as RecordDict };
  }
}

/**
 * Inflates a pulled message from its tree and its objects' bytes, as `inflate_object_from_contents`
 * does, after checking every object's id against its bytes, the classes allowed at each level,
 * that each head lists exactly the tree's children, that bodies reference exactly those
 * children, and the limits. The message's `message_id` is the root's id. Throws FleetError.
 */
export async function decodeMessageTree(tree: ObjectTree, objects: Map<string, Uint8Array>, limits: Partial<ObjectLimits> = {}): Promise<FlowerMessage> {
  const lim = { ...DEFAULT_OBJECT_LIMITS, ...limits };
  const ids = checkObjectTree(tree, lim);
  let total = 0;
  for (const id of ids) {
    const content = objects.get(id);
    if (content === undefined) throw new FleetError(`object ${id} of the message's tree is missing`);
    if (content.length > lim.maxObjectBytes) throw new FleetError(`object ${id} has ${content.length} bytes, more than the limit of ${lim.maxObjectBytes}`);
    total += content.length;
    if (total > lim.maxTotalBytes) throw new FleetError(`the message's objects exceed ${lim.maxTotalBytes} bytes in all`);
    const actual = await objectIdOf(content);
    if (actual !== id) throw new FleetError(`object ${id} came with bytes whose SHA-256 is ${actual}: refused`);
  }
  const wanted = new Set(ids);
  const extra = [...objects.keys()].filter((k) => !wanted.has(k));
  if (extra.length > 0) throw new FleetError(`objects not in the message's tree were given: ${extra.slice(0, 3).join(", ")}`);
  const root = new Inflater(objects, lim).inflate(tree, ["Message"]);
  return root.value as FlowerMessage;
}
