/**
 * The sealed control messages (`HelloClaim`, `TrainOrder`, `TrainReport` of
 * `cola_fed/federation/protocol.py`): small, typed JSON inside a sealed bundle. `encode` is
 * the canonical JSON Python writes, byte for byte; `decode` reads strict JSON (at most 16 KiB,
 * 2 levels) with exactly the message's fields, each of its type and within its bounds.
 * Decoding throws ProtocolError, or MalformedPayloadError for text that is not strict JSON.
 */

import { ProtocolError } from "../errors.js";
import { dumpsCanonical, loadsStrict, type JsonObject, type JsonValue } from "../json/strict-json.js";
import { BACKENDS, MAX_CONTROL_BYTES, MAX_NODE_STATES, MAX_PARTITION_ID, SIGNATURE_BYTES } from "./constants.js";
import { asFloat, asInt, isLowerHex, isSmallInt, MAX_INT, reprCut, take, type FieldKind } from "./fields.js";

/** A control field: wire name, kind, inclusive bounds of a number (ignored otherwise). */
type FieldSpec = readonly [wire: string, kind: FieldKind, low: number, high: number];

/** What every control message class offers: its name, its fields and how to read one. */
export interface ControlClass<T> {
  readonly kindName: string;
  decode(data: Uint8Array): T;
}

/** `Control.decode`'s shared part: strict JSON, exactly the fields, each within its bounds. */
function readFields(data: Uint8Array, what: string, fields: readonly FieldSpec[]): JsonObject {
  const raw = loadsStrict(data, { what, maxBytes: MAX_CONTROL_BYTES, maxDepth: 2 });
  const obj = take(raw, Object.fromEntries(fields.map(([wire, kind]) => [wire, kind])), what);
  for (const [wire, , low, high] of fields) {
    const value = obj[wire];
    if ((typeof value === "bigint" || typeof value === "number") && !(low <= value && value <= high)) {
      throw new ProtocolError(`${what}.${wire}: expected a value in [${low}, ${high}], got ${reprCut(value, 40)}`);
    }
  }
  return obj;
}

const CLAIM_FIELDS: readonly FieldSpec[] = [
  ["partition-id", "int", 0, MAX_PARTITION_ID], ["num-examples", "int", 0, MAX_INT], ["backend", "str", 0, 0],
  ["state", "int", 1, MAX_INT], ["identity", "str", 0, 0], ["signature", "str", 0, 0], ["held", "list", 0, 0],
];

/**
 * Sealed in the hello reply: which partition the node holds, on which backend, the number of
 * the learner state its adapters and batches are, its long-term identity (hex) with its
 * signature of this session, and every learner state it holds.
 */
export class HelloClaim {
  static readonly kindName = "HelloClaim";
  readonly partitionId: number;
  readonly numExamples: number;
  readonly backend: string;
  readonly state: number;
  /** the node's long-term Ed25519 public key, hex */
  readonly identity: string;
  /** its signature of this session (`signNodeClaim`), hex */
  readonly signature: string;
  /** every learner state the node holds */
  readonly held: readonly number[];

  /** A checked claim (`__post_init__`): a known backend, at most 16 state numbers in
   * [1, 2^53), a 32-byte identity and a 64-byte signature as lower-case hex. */
  constructor(fields: {
    partitionId: number; numExamples: number; backend: string; state: number; identity: string; signature: string;
    held: readonly (number | bigint)[];
  }) {
    const { backend, held } = fields;
    this.partitionId = fields.partitionId;
    this.numExamples = fields.numExamples;
    this.backend = backend;
    this.state = fields.state;
    this.identity = fields.identity;
    this.signature = fields.signature;
    if (!BACKENDS.includes(backend)) {
      throw new ProtocolError(`HelloClaim.backend: expected one of ('torch', 'onnx'), got ${reprCut(backend, 40)}`);
    }
    if (!(Array.isArray(held) && held.length <= MAX_NODE_STATES && held.every((n) =>
      (typeof n === "bigint" && isSmallInt(n) && n >= 1n) || (typeof n === "number" && Number.isSafeInteger(n) && n >= 1)))) {
      throw new ProtocolError(`HelloClaim.held: expected at most ${MAX_NODE_STATES} state numbers`);
    }
    this.held = held.map(Number);
    for (const [name, size] of [["identity", 32], ["signature", SIGNATURE_BYTES]] as const) {
      if (typeof this[name] !== "string" || !isLowerHex(this[name], 2 * size)) {
        throw new ProtocolError(`HelloClaim.${name}: expected ${size} bytes as ${2 * size} lower-case hex digits`);
      }
    }
  }

  /** The canonical JSON bytes (`Control.encode`). */
  encode(): Uint8Array {
    return dumpsCanonical({
      "partition-id": BigInt(this.partitionId), "num-examples": BigInt(this.numExamples), backend: this.backend,
      state: BigInt(this.state), identity: this.identity, signature: this.signature, held: this.held.map(BigInt),
    });
  }

  /** `HelloClaim.decode`. */
  static decode(data: Uint8Array): HelloClaim {
    const o = readFields(data, "HelloClaim", CLAIM_FIELDS);
    // held's entries must be Python ints (a bool or a float is refused by the constructor)
    const held = o.held as JsonValue[];
    const entries = held.map((n) => (typeof n === "bigint" ? n : -1n));
    return new HelloClaim({
      partitionId: asInt(o["partition-id"]), numExamples: asInt(o["num-examples"]), backend: o.backend as string,
      state: asInt(o.state), identity: o.identity as string, signature: o.signature as string, held: entries,
    });
  }
}

const ORDER_FIELDS: readonly FieldSpec[] = [
  ["round", "int", 1, MAX_INT], ["acknowledged", "int", 0, MAX_INT], ["checkpointed", "int", 0, MAX_INT],
];

/**
 * Sealed in a TRAIN request: the round, the number of the node's learner state the server
 * holds, and the number of the one its latest checkpoint holds.
 */
export class TrainOrder {
  static readonly kindName = "TrainOrder";

  readonly round: number;
  /** the node's learner state the server holds */
  readonly acknowledged: number;
  /** the one its latest checkpoint holds */
  readonly checkpointed: number;

  constructor(fields: { round: number; acknowledged: number; checkpointed: number }) {
    this.round = fields.round;
    this.acknowledged = fields.acknowledged;
    this.checkpointed = fields.checkpointed;
  }

  /** The canonical JSON bytes (`Control.encode`). */
  encode(): Uint8Array {
    return dumpsCanonical({
      round: BigInt(this.round), acknowledged: BigInt(this.acknowledged), checkpointed: BigInt(this.checkpointed),
    });
  }

  /** `TrainOrder.decode`. */
  static decode(data: Uint8Array): TrainOrder {
    const o = readFields(data, "TrainOrder", ORDER_FIELDS);
    return new TrainOrder({ round: asInt(o.round), acknowledged: asInt(o.acknowledged), checkpointed: asInt(o.checkpointed) });
  }
}

const REPORT_FIELDS: readonly FieldSpec[] = [
  ["round", "int", 1, MAX_INT], ["loss", "float", 0.0, 1e30], ["num-examples", "int", 0, MAX_INT],
  ["grad-norm", "float", 0.0, 1e30], ["step", "int", 0, MAX_INT], ["state", "int", 1, MAX_INT],
];

/**
 * Sealed in a TRAIN reply: the round it answers, the node's training metrics and the number of
 * the learner state the reply's adapters and batches are.
 */
export class TrainReport {
  static readonly kindName = "TrainReport";

  readonly round: number;
  /** a float: written as Python writes a float (`0.5`, `1.0`, `1e-05`) */
  readonly loss: number;
  readonly numExamples: number;
  /** a float */
  readonly gradNorm: number;
  readonly step: number;
  readonly state: number;

  constructor(fields: { round: number; loss: number; numExamples: number; gradNorm: number; step: number; state: number }) {
    this.round = fields.round;
    this.loss = fields.loss;
    this.numExamples = fields.numExamples;
    this.gradNorm = fields.gradNorm;
    this.step = fields.step;
    this.state = fields.state;
  }

  /** The canonical JSON bytes (`Control.encode`). */
  encode(): Uint8Array {
    return dumpsCanonical({
      round: BigInt(this.round), loss: this.loss, "num-examples": BigInt(this.numExamples), "grad-norm": this.gradNorm,
      step: BigInt(this.step), state: BigInt(this.state),
    });
  }

  /** `TrainReport.decode` (the server's side; an int given for a float is read as a number). */
  static decode(data: Uint8Array): TrainReport {
    const o = readFields(data, "TrainReport", REPORT_FIELDS);
    return new TrainReport({
      round: asInt(o.round), loss: asFloat(o.loss), numExamples: asInt(o["num-examples"]),
      gradNorm: asFloat(o["grad-norm"]), step: asInt(o.step), state: asInt(o.state),
    });
  }
}

/** Any control message. */
export type Control = HelloClaim | TrainOrder | TrainReport;
