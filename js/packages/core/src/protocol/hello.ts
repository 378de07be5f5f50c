/**
 * The hello and the records that carry the protocol over Flower (`HelloTranscript`, `Hello`,
 * `HelloReply`, `Sealed` of `cola_fed/federation/protocol.py`).
 *
 * ```
 * round 0  QUERY  server -> node  cola{identity, transcript, signature}  graphs{<name>: ONNX}
 *                                 files{<name>: bytes}
 *                 node -> server  cola{node-public-key}  sealed{HelloClaim bundle}
 * round t  TRAIN  either way      sealed{bundle}
 * ```
 */

import { PayloadError, ProtocolError } from "../errors.js";
import { blobToRecord, recordToBlob } from "../flower/blob.js";
import { recordDict, type ConfigRecord, type RecordDict } from "../flower/records.js";
import { dumpsCanonical, loadsStrict, type JsonValue } from "../json/strict-json.js";
import { compareCodePoints } from "../json/python-json.js";
import { toHex } from "../util/bytes.js";
import {
  CLEAR, FILES, GRAPHS, MAX_GRAPHS, MAX_TASK_FILE_BYTES, MAX_TRANSCRIPT_BYTES, PROTOCOL, SEALED, SIGNATURE_BYTES,
  TASK_FILES,
} from "./constants.js";
import { isLowerHex, pyPrefix, reprCut, sortedRepr, take } from "./fields.js";
import { Plan, type PlanReadOptions } from "./plan.js";

/** What the server signs for one node: the run, the node, the keys and the plan. */
export class HelloTranscript {
  constructor(
    readonly runId: bigint,
    readonly nodeId: bigint,
    readonly helloId: bigint,
    readonly identity: Uint8Array,
    readonly exchangeKey: Uint8Array,
    readonly plan: Plan,
    /** the run this one continues (its first run id; this run's id unless it resumed) */
    readonly lineage: bigint,
  ) {}

  /** The canonical JSON bytes the server signs (`HelloTranscript.encode`). */
  encode(): Uint8Array {
    return dumpsCanonical({
      protocol: BigInt(PROTOCOL), "run-id": this.runId.toString(), lineage: this.lineage.toString(),
      "node-id": this.nodeId.toString(), "hello-id": this.helloId.toString(), identity: toHex(this.identity),
      "exchange-key": toHex(this.exchangeKey), plan: this.plan.toDict(),
    });
  }

  /**
   * A transcript from its bytes, strictly: a strict JSON object (at most 1 MiB, 8 levels) with
   * exactly its fields, this node's protocol version, unsigned 64-bit ids, 32-byte keys as
   * lower-case hex and a plan that passes every check. Throws ProtocolError only (a refused
   * JSON text, a PayloadError, becomes one, as in Python).
   */
  static decode(data: Uint8Array, options: PlanReadOptions = {}): HelloTranscript {
    let raw: JsonValue;
    try {
      raw = loadsStrict(data, { what: "hello transcript", maxBytes: MAX_TRANSCRIPT_BYTES, maxDepth: 8 });
    } catch (err) {
      if (err instanceof PayloadError) throw new ProtocolError(err.message);
      throw err;
    }
    const obj = take(raw, {
      protocol: "int", "run-id": "str", lineage: "str", "node-id": "str", "hello-id": "str", identity: "str",
      "exchange-key": "str", plan: "dict",
    }, "hello");
    if (obj.protocol !== BigInt(PROTOCOL)) {
      throw new ProtocolError(`the server speaks protocol ${String(obj.protocol)}, this node ${PROTOCOL}; upgrade the `
        + "older side");
    }
    // in the order of Python's keyword arguments
    const runId = u64(obj["run-id"] as string, "hello.run-id");
    const lineage = u64(obj.lineage as string, "hello.lineage");
    const nodeId = u64(obj["node-id"] as string, "hello.node-id");
    const helloId = u64(obj["hello-id"] as string, "hello.hello-id");
    const identity = key32(obj.identity as string, "hello.identity");
    const exchangeKey = key32(obj["exchange-key"] as string, "hello.exchange-key");
    const plan = Plan.fromDict(obj.plan, options);
    return new HelloTranscript(runId, nodeId, helloId, identity, exchangeKey, plan, lineage);
  }
}

/** `_u64`: ASCII digits (at most 20, leading zeros allowed) of a value below 2^64. */
function u64(text: string, where: string): bigint {
  if (!(/^[0-9]{1,20}$/.test(text)) || BigInt(text) >= 2n ** 64n) {
    throw new ProtocolError(`${where}: expected an unsigned 64-bit integer, got ${reprCut(text, 40)}`);
  }
  return BigInt(text);
}

/** `_key32`: 32 bytes as 64 lower-case hex digits. */
function key32(text: string, where: string): Uint8Array {
  if (!isLowerHex(text, 64)) throw new ProtocolError(`${where}: expected 32 bytes as 64 lower-case hex digits`);
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Round 0, server -> node: the signed transcript, and the train-step graphs and task files
 * whose hashes its plan lists. */
export class Hello {
  constructor(
    readonly identity: Uint8Array,
    readonly transcript: Uint8Array,
    readonly signature: Uint8Array,
    readonly graphs: ReadonlyMap<string, Uint8Array> = new Map(),
    readonly files: ReadonlyMap<string, Uint8Array> = new Map(),
  ) {}

  /** The hello as Flower content (`Hello.to_record`; the server's side, for tests). */
  toRecord(): RecordDict {
    return recordDict({
      configs: new Map<string, ConfigRecord>([
        [CLEAR, new Map([["identity", this.identity], ["transcript", this.transcript], ["signature", this.signature]])],
        [GRAPHS, new Map(this.graphs)],
        [FILES, new Map(this.files)],
      ]),
    });
  }

  /**
   * A hello from a message's content (`Hello.from_record`): exactly the records `cola`, `graphs`
   * and `files` (config records), the clear fields `identity`, `transcript`, `signature` as
   * bytes of the right sizes, at most 64 graphs of at most `maxGraphBytes` each, and only known
   * task files of at most 64 MiB. Throws ProtocolError.
   */
  static fromRecord(content: RecordDict, { maxGraphBytes = 16 * 2 ** 20 } = {}): Hello {
    expectRecords(content, [CLEAR, GRAPHS, FILES], [], "hello");
    const clear = configFields(content.configs.get(CLEAR)!, ["identity", "transcript", "signature"], "hello");
    const identity = clear.get("identity")!;
    const transcript = clear.get("transcript")!;
    const signature = clear.get("signature")!;
    if (identity.length !== 32 || signature.length !== SIGNATURE_BYTES || transcript.length > MAX_TRANSCRIPT_BYTES) {
      throw new ProtocolError("hello: identity, signature or transcript of the wrong size");
    }
    const graphs = content.configs.get(GRAPHS)!;
    if (graphs.size > MAX_GRAPHS) throw new ProtocolError(`hello: more than ${MAX_GRAPHS} graphs`);
    for (const [name, model] of graphs) {
      if (!(model instanceof Uint8Array) || model.length > maxGraphBytes) {
        throw new ProtocolError(`hello: graph ${pyPrefix(name, 60)} is not bytes of at most ${maxGraphBytes} bytes`);
      }
    }
    const files = content.configs.get(FILES)!;
    for (const [name, data] of files) {
      if (!TASK_FILES.includes(name) || !(data instanceof Uint8Array) || data.length > MAX_TASK_FILE_BYTES) {
        throw new ProtocolError(`hello: file ${pyPrefix(name, 60)} is not one of ('${TASK_FILES.join("', '")}',) as bytes `
          + `of at most ${MAX_TASK_FILE_BYTES} bytes`);
      }
    }
    return new Hello(identity, transcript, signature, graphs as Map<string, Uint8Array>, files as Map<string, Uint8Array>);
  }
}

/** Round 0, node -> server: the node's public key and its sealed claim and data. */
export class HelloReply {
  constructor(readonly nodePublic: Uint8Array, readonly sealed: Uint8Array) {}

  /** The reply as Flower content (`HelloReply.to_record`). */
  toRecord(): RecordDict {
    return recordDict({
      configs: new Map([[CLEAR, new Map([["node-public-key", this.nodePublic]])]]),
      arrays: new Map([[SEALED, blobToRecord(this.sealed)]]),
    });
  }

  /** `HelloReply.from_record` (the server's side): a 32-byte key and one sealed blob. */
  static fromRecord(content: RecordDict): HelloReply {
    expectRecords(content, [CLEAR], [SEALED], "hello reply");
    const clear = configFields(content.configs.get(CLEAR)!, ["node-public-key"], "hello reply");
    if (clear.get("node-public-key")!.length !== 32) throw new ProtocolError("hello reply: node-public-key must be 32 bytes");
    return new HelloReply(clear.get("node-public-key")!, recordToBlob(content.arrays.get(SEALED)!));
  }
}

/** A TRAIN message either way: one sealed bundle and nothing in the clear. */
export class Sealed {
  constructor(readonly sealed: Uint8Array) {}

  /** `Sealed.to_record`. */
  toRecord(): RecordDict {
    return recordDict({ arrays: new Map([[SEALED, blobToRecord(this.sealed)]]) });
  }

  /** `Sealed.from_record`: exactly one array record `sealed` holding one sealed blob (a
   * malformed blob is a MalformedPayloadError, from `recordToBlob`). */
  static fromRecord(content: RecordDict): Sealed {
    expectRecords(content, [], [SEALED], "train message");
    return new Sealed(recordToBlob(content.arrays.get(SEALED)!));
  }
}

/** `_expect_records`: exactly these config and array records, and no metric records. */
export function expectRecords(content: RecordDict, configs: readonly string[], arrays: readonly string[], what: string): void {
  const same = (got: Iterable<string>, want: readonly string[]): boolean => {
    const keys = [...got];
    return keys.length === want.length && keys.every((k) => want.includes(k));
  };
  if (!same(content.configs.keys(), configs) || !same(content.arrays.keys(), arrays) || content.metrics.size) {
    throw new ProtocolError(`${what}: expected config records ${sortedRepr(configs)} and array records `
      + `${sortedRepr(arrays)}, got ${sortedRepr(content.configs.keys())}, ${sortedRepr(content.arrays.keys())} and `
      + sortedRepr(content.metrics.keys()));
  }
}

/** `_config_fields`: exactly these fields, every one bytes. */
function configFields(record: ConfigRecord, names: readonly string[], what: string): Map<string, Uint8Array> {
  const keys = [...record.keys()];
  if (keys.length !== names.length || !keys.every((k) => names.includes(k))) {
    throw new ProtocolError(`${what}: expected clear fields ${sortedRepr(names)}, got `
      + pyListRepr([...keys].sort(compareCodePoints).slice(0, 8)));
  }
  if (!names.every((n) => record.get(n) instanceof Uint8Array)) {
    throw new ProtocolError(`${what}: every clear field must be bytes`);
  }
  return new Map(names.map((n) => [n, record.get(n) as Uint8Array]));
}

function pyListRepr(items: string[]): string {
  return sortedRepr(items);
}
