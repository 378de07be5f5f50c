/** Reading js/conformance/flower.json (made by tests/conformance/flower.py) for the flower-* tests. */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { fromHex } from "../src/util/bytes.js";
import type { FlowerMessage, FlowerMetadata } from "../src/flower/message.js";
import type { ConfigValue, FlowerArray, RecordDict } from "../src/flower/records.js";
import type { ObjectTree } from "../src/flower/objects.js";

export interface Typed {
  t: string;
  of?: string;
  v: unknown;
}
export interface ArrayJson {
  dtype: string;
  shape: number[];
  stype: string;
  data?: string;
  pattern?: number;
  zeros?: number;
}
export interface RecordJson {
  name: string;
  kind: "config" | "metric" | "array";
  items: [string, Typed | ArrayJson][];
}
export interface TreeJson {
  id: string;
  children: TreeJson[];
}
export interface MessageJson {
  metadata: Record<string, string>;
  message_id: string;
  tree: TreeJson;
  order: string[];
  objects: Record<string, string | null>;
  content?: RecordJson[];
  error?: { code: string; reason: string };
}
export interface Vectors {
  messages: Record<string, MessageJson> & { chunk_size: number; reply_time: string };
  hostile: { name: string; python_error: string; error: string; tree: TreeJson; objects: Record<string, string> }[];
  blobs: {
    made: { blob: string; record: [string, ArrayJson][] }[];
    read: { name: string; record: [string, ArrayJson][]; blob?: string; error: string | null }[];
  };
  auth: {
    keys: Record<string, { openssh: string; pkcs8: string; sec1: string; public_pem: string; signatures: { message: string; der: string }[] }>;
    timestamps: { ms: number; iso: string }[];
  };
}

/** js/conformance/flower.json, found from the compiled test upwards. */
export function loadVectors(): Vectors {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "conformance", "flower.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("js/conformance/flower.json not found: run make js");
    dir = up;
  }
  return JSON.parse(readFileSync(join(dir, "conformance", "flower.json"), "utf8")) as Vectors;
}

/** A big-endian IEEE double from 16 hex digits. */
export function float(hex: string): number {
  return new DataView(fromHex(hex).buffer).getFloat64(0);
}

function raw(kind: string, v: unknown): ConfigValue {
  if (kind === "int") return BigInt(v as string);
  if (kind === "float") return float(v as string);
  if (kind === "bytes") return fromHex(v as string);
  return v as ConfigValue;
}

export function typedValue(t: Typed): ConfigValue {
  if (t.t === "list") return (t.v as unknown[]).map((x) => raw(t.of!, x)) as ConfigValue;
  return raw(t.t, t.v);
}

export function arrayOf(a: ArrayJson): FlowerArray {
  let data: Uint8Array;
  if (a.data !== undefined) data = fromHex(a.data);
  else if (a.zeros !== undefined) data = new Uint8Array(a.zeros);
  else {
    data = new Uint8Array(a.pattern!);
    for (let i = 0; i < data.length; i++) data[i] = (7 * i + 3) & 0xff;
  }
  return { dtype: a.dtype, shape: a.shape, stype: a.stype, data };
}

export function contentOf(records: RecordJson[]): RecordDict {
  const out: RecordDict = { configs: new Map(), arrays: new Map(), metrics: new Map() };
  for (const r of records) {
    if (r.kind === "array") out.arrays.set(r.name, new Map(r.items.map(([k, a]) => [k, arrayOf(a as ArrayJson)])));
    else {
      const map = new Map(r.items.map(([k, t]) => [k, typedValue(t as Typed)]));
      if (r.kind === "config") out.configs.set(r.name, map);
      else out.metrics.set(r.name, map as never);
    }
  }
  return out;
}

export function metadataOf(m: Record<string, string>): FlowerMetadata {
  const out: FlowerMetadata = {
    runId: BigInt(m["run_id"]!),
    messageId: m["message_id"]!,
    srcNodeId: BigInt(m["src_node_id"]!),
    dstNodeId: BigInt(m["dst_node_id"]!),
    replyToMessageId: m["reply_to_message_id"]!,
    groupId: m["group_id"]!,
    ttl: float(m["ttl"]!),
    messageType: m["message_type"]!,
    createdAt: float(m["created_at"]!),
  };
  if (m["src_task_id"] !== undefined) out.srcTaskId = BigInt(m["src_task_id"]);
  if (m["dst_task_id"] !== undefined) out.dstTaskId = BigInt(m["dst_task_id"]);
  return out;
}

export function messageOf(v: MessageJson): FlowerMessage {
  const metadata = metadataOf(v.metadata);
  if (v.error !== undefined) return { metadata, error: { code: BigInt(v.error.code), reason: v.error.reason } };
  return { metadata, content: contentOf(v.content!) };
}

export function treeOf(t: TreeJson): ObjectTree {
  return { objectId: t.id, children: t.children.map(treeOf) };
}

export function treeJson(t: ObjectTree): TreeJson {
  return { id: t.objectId, children: t.children.map(treeJson) };
}
