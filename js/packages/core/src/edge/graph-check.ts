/**
 * Check a shipped train-step graph before ONNX Runtime sees it (port of
 * `cola_fed/edge/graph_check.py`).
 *
 * A node gets its graphs from the server, checked against a signed list of SHA-256 hashes. An
 * authentic graph is still parsed by onnxruntime's protobuf loader, and an ONNX model can make
 * that loader read files (tensors with external data), run nested graphs (`If`/`Loop`/`Scan`
 * bodies, training_info) or call operators and functions outside ONNX's own domain. The
 * exporter emits none of those, so this module refuses them, and every operator outside
 * {@link ALLOWED_OPS}, before a session is created.
 *
 * The protobuf wire format is read field by field here, as Python reads it, rather than decoded
 * with `fromBinary`: protobuf merges repeated occurrences of a singular message and keeps
 * unknown enum values of a proto2 enum as unknown fields, so a full decoder would hide a second
 * `graph` occurrence's nodes (it merges them, which is fine) but also an unknown
 * `data_location` (which Python refuses). The field numbers are read from the pinned
 * `onnx.ModelProto` schema (`message("onnx.ModelProto")`), not written by hand. Every length is
 * checked against what is left, so malformed bytes give GraphError and nothing else; the
 * messages are Python's, word for word.
 */

import type { DescMessage } from "@bufbuild/protobuf";
import { GraphError } from "../errors.js";
import { message } from "../flower/proto.js";

/** Operators (default ONNX domain) of every train-step graph the exporter emits. */
export const ALLOWED_OPS: ReadonlySet<string> = new Set([
  "Add", "Cast", "Constant", "Div", "Erf", "Exp", "Gelu", "Greater", "MatMul", "Mul", "Pow",
  "ReduceSum", "Relu", "Sigmoid", "Sqrt", "Sub", "Tanh", "Transpose",
]);

/** The default ONNX operator domain, under both of its names. */
export const DEFAULT_DOMAINS: ReadonlySet<string> = new Set(["", "ai.onnx"]);

/** Bytes 4-8 of an ORT-format model: ONNX Runtime loads such bytes in its own format. */
export const ORT_FORMAT_MARK = new Uint8Array([0x4f, 0x52, 0x54, 0x4d]); // "ORTM"

// wire types (3 and 4, groups, are not used by onnx.proto and are refused)
const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;
const MAX_FIELD_NUMBER = 2 ** 29 - 1;
const DATA_LOCATION_DEFAULT = 0n;
const DATA_LOCATION_EXTERNAL = 1n;

/** Field numbers of onnx.proto, from the pinned schema. */
interface Numbers {
  modelGraph: number; modelOpsetImport: number; modelMetadataProps: number; modelTrainingInfo: number;
  modelFunctions: number; opsetDomain: number; entryKey: number; entryValue: number; graphNode: number;
  graphInitializer: number; graphSparseInitializer: number; nodeOpType: number; nodeAttribute: number;
  nodeDomain: number; attrName: number; attrT: number; attrG: number; attrTensors: number; attrGraphs: number;
  attrSparseTensor: number; attrSparseTensors: number; tensorName: number; tensorExternalData: number;
  tensorDataLocation: number;
}

let numbers: Numbers | undefined;

function fieldNumber(schema: DescMessage, name: string): number {
  const field = schema.fields.find((f) => f.name === name);
  if (field === undefined) throw new Error(`onnx schema: ${schema.typeName} has no field ${name}`);
  return field.number;
}

/** The onnx.proto field numbers the check reads, looked up once. */
function onnxNumbers(): Numbers {
  if (numbers === undefined) {
    const model = message("onnx.ModelProto");
    const opset = message("onnx.OperatorSetIdProto");
    const entry = message("onnx.StringStringEntryProto");
    const graph = message("onnx.GraphProto");
    const node = message("onnx.NodeProto");
    const attr = message("onnx.AttributeProto");
    const tensor = message("onnx.TensorProto");
    numbers = {
      modelGraph: fieldNumber(model, "graph"), modelOpsetImport: fieldNumber(model, "opset_import"),
      modelMetadataProps: fieldNumber(model, "metadata_props"), modelTrainingInfo: fieldNumber(model, "training_info"),
      modelFunctions: fieldNumber(model, "functions"), opsetDomain: fieldNumber(opset, "domain"),
      entryKey: fieldNumber(entry, "key"), entryValue: fieldNumber(entry, "value"),
      graphNode: fieldNumber(graph, "node"), graphInitializer: fieldNumber(graph, "initializer"),
      graphSparseInitializer: fieldNumber(graph, "sparse_initializer"), nodeOpType: fieldNumber(node, "op_type"),
      nodeAttribute: fieldNumber(node, "attribute"), nodeDomain: fieldNumber(node, "domain"),
      attrName: fieldNumber(attr, "name"), attrT: fieldNumber(attr, "t"), attrG: fieldNumber(attr, "g"),
      attrTensors: fieldNumber(attr, "tensors"), attrGraphs: fieldNumber(attr, "graphs"),
      attrSparseTensor: fieldNumber(attr, "sparse_tensor"), attrSparseTensors: fieldNumber(attr, "sparse_tensors"),
      tensorName: fieldNumber(tensor, "name"), tensorExternalData: fieldNumber(tensor, "external_data"),
      tensorDataLocation: fieldNumber(tensor, "data_location"),
    };
  }
  return numbers;
}

/** Internal: why a graph is refused; {@link checkGraph} adds the graph's name. */
class Refused extends Error {}

type Value = bigint | Uint8Array;
type Fields = Map<number, [number, Value][]>;

/**
 * Throw GraphError unless `model` is an ONNX model that only uses what the exporter emits:
 * operators of {@link ALLOWED_OPS} in the default domain, tensors with their data inline, no
 * subgraphs, sparse tensors, training_info or model-local functions, no ORT-format mark, at
 * most `maxBytes` long. `name` is only used in the error message.
 */
export function checkGraph(model: Uint8Array, { name, maxBytes = 16 * 2 ** 20 }: { name: string; maxBytes?: number }): void {
  try {
    if (!(model instanceof Uint8Array)) throw new Refused(`expected bytes, got ${typeof model}`);
    if (model.length > maxBytes) {
      throw new Refused(`${groupThousands(model.length)} bytes is over the limit of ${groupThousands(maxBytes)}`);
    }
    if (model.length >= 8 && ORT_FORMAT_MARK.every((b, i) => model[4 + i] === b)) {
      throw new Refused("it carries the ORT format mark at bytes 4-8");
    }
    checkModel(model, onnxNumbers());
  } catch (err) {
    if (err instanceof Refused) throw new GraphError(`train-step graph ${pyStr(name)}: ${err.message}; refused`);
    throw err;
  }
}

// -- the model's structure ------------------------------------------------------------------

function checkModel(buf: Uint8Array, n: Numbers): void {
  const fields = parse(buf, "ModelProto");
  if (fields.has(n.modelFunctions)) throw new Refused("it defines model-local functions");
  if (fields.has(n.modelTrainingInfo)) throw new Refused("it carries training_info (more graphs)");
  for (const opset of messages(fields, n.modelOpsetImport, "ModelProto.opset_import")) {
    const domain = string(parse(opset, "OperatorSetIdProto"), n.opsetDomain, "opset domain");
    if (!DEFAULT_DOMAINS.has(domain)) throw new Refused(`it imports the operator domain ${pyStr(domain)}`);
  }
  for (const entry of messages(fields, n.modelMetadataProps, "ModelProto.metadata_props")) {
    checkEntry(entry, "ModelProto.metadata_props", n);
  }
  const graphs = messages(fields, n.modelGraph, "ModelProto.graph");
  if (!graphs.length) throw new Refused("it has no graph");
  for (const graph of graphs) checkGraphProto(graph, n);
}

function checkEntry(buf: Uint8Array, what: string, n: Numbers): void {
  const fields = parse(buf, what);
  string(fields, n.entryKey, `${what} key`);
  string(fields, n.entryValue, `${what} value`);
}

function checkGraphProto(buf: Uint8Array, n: Numbers): void {
  const fields = parse(buf, "GraphProto");
  if (fields.has(n.graphSparseInitializer)) throw new Refused("it has a sparse initializer");
  for (const tensor of messages(fields, n.graphInitializer, "GraphProto.initializer")) checkTensor(tensor, "initializer", n);
  messages(fields, n.graphNode, "GraphProto.node").forEach((node, i) => checkNode(node, i, n));
}

function checkNode(buf: Uint8Array, index: number, n: Numbers): void {
  const fields = parse(buf, `node ${index}`);
  const opType = string(fields, n.nodeOpType, `node ${index} op_type`);
  const domain = string(fields, n.nodeDomain, `node ${index} domain`);
  const where = `node ${index} (${pyStr(opType)})`;
  for (const attribute of messages(fields, n.nodeAttribute, `${where} attribute`)) checkAttribute(attribute, where, n);
  if (!DEFAULT_DOMAINS.has(domain)) throw new Refused(`${where} is in the custom domain ${pyStr(domain)}`);
  if (!ALLOWED_OPS.has(opType)) throw new Refused(`${where} is not an operator the exporter emits`);
}

function checkAttribute(buf: Uint8Array, where: string, n: Numbers): void {
  const fields = parse(buf, `${where} attribute`);
  const label = `${where} attribute ${pyStr(string(fields, n.attrName, `${where} attribute name`))}`;
  if (fields.has(n.attrG) || fields.has(n.attrGraphs)) throw new Refused(`${label} is a subgraph`);
  if (fields.has(n.attrSparseTensor) || fields.has(n.attrSparseTensors)) throw new Refused(`${label} is a sparse tensor`);
  for (const number of [n.attrT, n.attrTensors]) {
    for (const tensor of messages(fields, number, label)) checkTensor(tensor, `${label} tensor`, n);
  }
}

function checkTensor(buf: Uint8Array, where: string, n: Numbers): void {
  const fields = parse(buf, where);
  const label = `${where} ${pyStr(string(fields, n.tensorName, `${where} name`))}`;
  if (fields.has(n.tensorExternalData)) throw new Refused(`${label} points at external data`);
  for (const [wire, value] of fields.get(n.tensorDataLocation) ?? []) {
    if (wire !== VARINT) throw new Refused(`malformed protobuf: ${label} data_location has wire type ${wire}`);
    if (value !== DATA_LOCATION_DEFAULT) {
      const kind = value === DATA_LOCATION_EXTERNAL ? "EXTERNAL" : `unknown (${value})`;
      throw new Refused(`${label} has data_location ${kind}`);
    }
  }
}

// -- typed access to parsed fields ------------------------------------------------------------

/** Every occurrence of an embedded-message field (length-delimited). */
function messages(fields: Fields, number: number, what: string): Uint8Array[] {
  const found = fields.get(number) ?? [];
  for (const [wire] of found) {
    if (wire !== LEN) throw new Refused(`malformed protobuf: ${what} has wire type ${wire}, not ${LEN}`);
  }
  return found.map(([, value]) => value as Uint8Array);
}

/** A singular string field: its last occurrence (protobuf's rule), "" if absent. */
function string(fields: Fields, number: number, what: string): string {
  const values = messages(fields, number, what);
  if (!values.length) return "";
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(values[values.length - 1]);
  } catch {
    throw new Refused(`malformed protobuf: ${what} is not UTF-8`);
  }
}

// -- the wire format --------------------------------------------------------------------------

/** All fields of one message, `number -> [(wire type, value), ...]` in order. */
function parse(buf: Uint8Array, what: string): Fields {
  const fields: Fields = new Map();
  try {
    let pos = 0;
    while (pos < buf.length) {
      let tag: bigint;
      [tag, pos] = varint(buf, pos);
      const number = tag >> 3n;
      const wire = Number(tag & 7n);
      if (!(number >= 1n && number <= BigInt(MAX_FIELD_NUMBER))) throw new Refused(`field number ${number} at byte ${pos}`);
      let value: Value;
      if (wire === VARINT) {
        [value, pos] = varint(buf, pos);
      } else if (wire === I64 || wire === I32) {
        [value, pos] = fixed(buf, pos, wire === I64 ? 8 : 4);
      } else if (wire === LEN) {
        [value, pos] = delimited(buf, pos);
      } else {
        throw new Refused(`wire type ${wire} of field ${number} at byte ${pos}`);
      }
      const list = fields.get(Number(number));
      if (list) list.push([wire, value]);
      else fields.set(Number(number), [[wire, value]]);
    }
  } catch (err) {
    if (err instanceof Refused) throw new Refused(`malformed protobuf in ${what}: ${err.message}`);
    throw err;
  }
  return fields;
}

/** A base-128 varint (at most 10 bytes, below 2^64) and the position after it. */
function varint(buf: Uint8Array, pos: number): [bigint, number] {
  let result = 0n;
  for (let shift = 0n; shift < 70n; shift += 7n) {
    if (pos >= buf.length) throw new Refused("truncated varint");
    const byte = buf[pos]!;
    pos += 1;
    result |= BigInt(byte & 0x7f) << shift;
    if (!(byte & 0x80)) {
      if (result >= 1n << 64n) throw new Refused("varint over 64 bits");
      return [result, pos];
    }
  }
  throw new Refused("varint longer than 10 bytes");
}

/** A little-endian fixed-width field (fixed32/float or fixed64/double). */
function fixed(buf: Uint8Array, pos: number, width: number): [bigint, number] {
  if (width > buf.length - pos) throw new Refused(`truncated ${width}-byte field at byte ${pos}`);
  let value = 0n;
  for (let i = width - 1; i >= 0; i--) value = (value << 8n) | BigInt(buf[pos + i]!);
  return [value, pos + width];
}

/** A length-delimited field's bytes: a varint length, then exactly that many bytes. */
function delimited(buf: Uint8Array, pos: number): [Uint8Array, number] {
  let length: bigint;
  [length, pos] = varint(buf, pos);
  if (length > BigInt(buf.length - pos)) {
    throw new Refused(`length ${length} at byte ${pos} runs past the end (${buf.length - pos} bytes left)`);
  }
  const end = pos + Number(length);
  return [buf.subarray(pos, end), end];
}

/** Python's `repr(str)` for the names in messages (single quotes unless the text has one). */
function pyStr(text: string): string {
  if (text.includes("'") && !text.includes('"')) return `"${text.replace(/\\/g, "\\\\")}"`;
  return `'${text.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** Python's `f"{n:,}"`. */
function groupThousands(value: number): string {
  return String(value).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}
