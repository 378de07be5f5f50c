/** The round protocol against the Python vectors (tests/conformance/protocol.py): plans and
 * transcripts byte for byte, every rewrite of a transcript refused (or accepted) as Python
 * does, control messages, node caps, records, bundles. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { dumpsCanonical, isJsonObject, loadsStrict, type JsonValue } from "../src/json/strict-json.js";
import { fromHex, toHex } from "../src/util/bytes.js";
import { transcriptHash, SecureChannel } from "../src/wire/seal.js";
import { Limits } from "../src/wire/codec.js";
import { graphKeys } from "../src/edge/graphs.js";
import {
  adaptationPart, batchPart, evalPart, expectParts, HelloClaim, HelloReply, HelloTranscript, KIND_TRAIN, MAX_CONTROL_BYTES,
  MAX_GRAPHS, MAX_PARTITION_ID, MAX_TRANSCRIPT_BYTES, NodeCaps, openBundle, openSealed, PROTOCOL, readBundle,
  Sealed, TASK_FILES, TrainOrder, TrainReport, type Plan,
} from "../src/protocol/index.js";
import { MAX_NODE_STATES as NODE_STATES } from "../src/protocol/constants.js";
import {
  assertOutcomes, bytesOf, configValueOf, describe, jsonOf, outcome, outcomeAsync, planOf, recordDictOf, vectors, type Typed,
} from "./protocol-vectors.js";

const V = vectors();

test("constants and part names are Python's", () => {
  const c = V.constants;
  assert.deepEqual([PROTOCOL, MAX_TRANSCRIPT_BYTES, MAX_CONTROL_BYTES, MAX_GRAPHS, MAX_PARTITION_ID, NODE_STATES],
    [c.protocol, c.max_transcript_bytes, c.max_control_bytes, c.max_graphs, c.max_partition_id, c.max_node_states]);
  assert.deepEqual([...TASK_FILES], c.task_files);
  for (const name of [batchPart(3), evalPart(0), adaptationPart(12)]) assert.equal(c.parts[name], name);
});

test("real plans' transcripts decode, and encode back to Python's bytes", async () => {
  assert.equal(V.transcripts.length, 3);
  for (const t of V.transcripts) {
    const data = fromHex(t.hex);
    const transcript = HelloTranscript.decode(data);
    assert.equal(transcript.runId, BigInt(t.run_id));
    assert.equal(transcript.nodeId, BigInt(t.node_id));
    assert.equal(transcript.helloId, BigInt(t.hello_id));
    assert.equal(transcript.lineage, BigInt(t.lineage));
    assert.equal(toHex(transcript.identity), t.identity);
    assert.equal(toHex(transcript.exchangeKey), t.exchange_key);
    assert.equal(toHex(transcript.encode()), t.hex, `${t.name}: re-encoded transcript`);
    assert.equal(toHex(await transcriptHash(data)), t.sha256);
    assert.equal(new TextDecoder().decode(dumpsCanonical(transcript.plan.toDict())), t.plan_text);
    checkFacts(t.name, transcript.plan, t.facts);
  }
});

function checkFacts(name: string, plan: Plan, facts: Vectors): void {
  assert.equal(plan.maxRows, facts.max_rows);
  const limits = new NodeCaps().limits(plan);
  assert.deepEqual([String(limits.maxBytes), String(limits.maxRows)], [facts.limits.max_bytes, facts.limits.max_rows]);
  for (const p of facts.partitions) {
    const pid = p.partition as number;
    const specs = plan.specsFor(pid);
    assert.deepEqual([...specs.keys()], Object.keys(p.specs), `${name} p${pid}`);
    for (const [selector, spec] of specs) {
      const want = p.specs[selector];
      assert.deepEqual({ kind: spec.kind, rank: spec.rank, bias: spec.bias, hidden: spec.hidden, depth: spec.depth,
        growth: spec.growth, activation: spec.activation, options: Object.fromEntries(spec.options) },
      { kind: want.kind, rank: want.rank, bias: want.bias, hidden: want.hidden, depth: want.depth, growth: want.growth,
        activation: want.activation, options: want.options });
    }
    assert.equal(plan.backendFor(pid), p.backend);
    assert.equal(plan.batchSeed(pid).toString(), p.batch_seed);
    assert.equal(plan.adapterSeed(pid).toString(), p.adapter_seed);
    assert.deepEqual([...graphKeys(plan.layout, [specs], plan.optimizer).keys()], p.graphs_rows);
    assert.deepEqual([...graphKeys(plan.layout, [specs], plan.optimizer, "all").keys()], p.graphs_all);
  }
}
type Vectors = ReturnType<typeof vectors>;

/** Apply one rewrite to a parsed transcript (set a field or item, or drop a field). */
function rewrite(base: JsonValue, path: (string | number)[], op: string, value: Typed | null): JsonValue {
  const raw = loadsStrict(dumpsCanonical(base), { what: "copy", maxBytes: 2 ** 24, maxDepth: 32 });
  let target = raw as JsonValue;
  for (const key of path.slice(0, -1)) target = (target as Record<string, JsonValue>)[key as string]!;
  const last = path[path.length - 1]!;
  if (op === "drop") {
    if (isJsonObject(target)) delete target[last as string];
  } else {
    (target as Record<string, JsonValue>)[last as string] = jsonOf(value!);
  }
  return raw;
}

test("every rewrite of a transcript is refused or accepted as Python does", () => {
  const { base, rewrites } = V.transcript_rewrites;
  const parsed = loadsStrict(base, { what: "base", maxBytes: 2 ** 24 });
  assert.ok(rewrites.length > 1500);
  const results = rewrites.map((r: Vectors) => ({
    name: `${JSON.stringify(r.path)} ${r.op} ${JSON.stringify(r.value)}`, expect: r.expect,
    got: outcome(() => HelloTranscript.decode(dumpsCanonical(rewrite(parsed, r.path, r.op, r.value)))),
  }));
  assertOutcomes(results);
  assert.ok(results.filter((r: { expect: string }) => r.expect === "ok").length > 100);
});

test("transcript bytes that are not strict JSON are a ProtocolError", () => {
  assertOutcomes(V.transcript_bytes.map((c: Vectors) => ({
    name: c.name, expect: c.expect, got: outcome(() => HelloTranscript.decode(fromHex(c.hex))),
  })));
});

function fieldsOf(kind: string, fields: Record<string, Typed>): Vectors {
  const v = (k: string): Vectors => { const x = jsonOf(fields[k]!); return typeof x === "bigint" ? Number(x) : x; };
  if (kind === "HelloClaim") {
    return new HelloClaim({ partitionId: v("partition_id"), numExamples: v("num_examples"), backend: v("backend"),
      state: v("state"), identity: v("identity"), signature: v("signature"), held: v("held").map(Number) });
  }
  if (kind === "TrainOrder") return new TrainOrder({ round: v("round"), acknowledged: v("acknowledged"), checkpointed: v("checkpointed") });
  return new TrainReport({ round: v("round"), loss: v("loss"), numExamples: v("num_examples"), gradNorm: v("grad_norm"),
    step: v("step"), state: v("state") });
}

const CONTROLS = { HelloClaim, TrainOrder, TrainReport } as const;

test("control messages encode to Python's bytes and decode back", () => {
  for (const c of V.controls.encoded) {
    const message = fieldsOf(c.kind, c.fields);
    assert.equal(toHex(message.encode()), c.hex, c.kind);
    const back = CONTROLS[c.kind as keyof typeof CONTROLS].decode(fromHex(c.hex));
    assert.equal(toHex(back.encode()), c.hex);
  }
});

test("control messages are refused as Python refuses them", () => {
  assert.ok(V.controls.decoded.length > 200);
  assertOutcomes(V.controls.decoded.map((c: Vectors) => ({
    name: `${c.kind} ${c.name}`, expect: c.expect,
    got: outcome(() => CONTROLS[c.kind as keyof typeof CONTROLS].decode(fromHex(c.hex))),
  })));
  assertOutcomes(V.controls.constructed.map((c: Vectors, i: number) => ({
    name: `constructed ${i}`, expect: c.expect, got: outcome(() => fieldsOf(c.kind, c.fields)),
  })));
});

function plansByName(): Map<string, Plan> {
  const plans = new Map<string, Plan>();
  for (const t of V.transcripts) plans.set(t.name, planOf(t.plan_text));
  for (const [name, text] of Object.entries(V.caps.extra_plans)) plans.set(name, planOf(text as string));
  return plans;
}

function configOf(typed: Record<string, Typed>): Record<string, Vectors> {
  return Object.fromEntries(Object.entries(typed).map(([k, v]) => [k, configValueOf(v)]));
}

test("node caps come from node config as Python reads them", () => {
  for (const c of V.caps.from_config) {
    const name = JSON.stringify(c.config);
    if (c.expect !== "ok") {
      assert.equal(outcome(() => NodeCaps.fromNodeConfig(configOf(c.config))), c.expect, name);
      continue;
    }
    const caps = NodeCaps.fromNodeConfig(configOf(c.config));
    const want = Object.fromEntries(Object.entries(c.caps as Record<string, Typed>).map(([k, v]) => [k, Number(jsonOf(v))]));
    assert.deepEqual({
      max_interval: caps.maxInterval, max_batch_size: caps.maxBatchSize, max_length: caps.maxLength,
      max_eval_batches: caps.maxEvalBatches, max_layers: caps.maxLayers, max_width: caps.maxWidth,
      max_payload_mb: caps.maxPayloadMb, max_payload_bytes: caps.maxPayloadBytes,
    }, want, name);
  }
});

test("plans within and over a node's caps, and their decoding limits", () => {
  const plans = plansByName();
  assertOutcomes(V.caps.check.map((c: Vectors) => ({
    name: `${c.plan} p${c.partition} ${JSON.stringify(c.config)}`, expect: c.expect,
    got: outcome(() => NodeCaps.fromNodeConfig(configOf(c.config)).check(plans.get(c.plan)!, c.partition)),
  })));
  for (const c of V.caps.limits) {
    const caps = NodeCaps.fromNodeConfig(configOf(c.config));
    if (c.expect !== "ok") {
      assert.equal(outcome(() => caps.limits(plans.get(c.plan)!)), c.expect);
      continue;
    }
    const limits = caps.limits(plans.get(c.plan)!);
    assert.deepEqual([String(limits.maxBytes), String(limits.maxRows)], [c.max_bytes, c.max_rows], c.plan);
  }
});

test("replies and TRAIN messages are the records Python builds, and read back strictly", () => {
  const r = V.records;
  const blob = fromHex(r.blob);
  assert.deepEqual(describe(new HelloReply(fromHex(r.node_public), blob).toRecord()), r.hello_reply);
  assert.deepEqual(describe(new Sealed(blob).toRecord()), r.sealed);
  assertOutcomes(r.sealed_from_record.map((c: Vectors) => ({
    name: c.name, expect: c.expect, got: outcome(() => Sealed.fromRecord(recordDictOf(c.content))),
  })));
  assert.deepEqual(Sealed.fromRecord(recordDictOf(r.sealed)).sealed, blob);
  assertOutcomes(r.hello_reply_from_record.map((c: Vectors) => ({
    name: c.name, expect: c.expect, got: outcome(() => HelloReply.fromRecord(recordDictOf(c.content))),
  })));
});

test("bundles: the control part and the others, as Python reads them", async () => {
  const b = V.bundles;
  const [order, parts] = readBundle(fromHex(b.plaintext), KIND_TRAIN, TrainOrder);
  assert.equal(toHex(order.encode()), b.control);
  assert.deepEqual(Object.fromEntries([...parts].map(([k, v]) => [k, toHex(v)])), b.parts);
  assertOutcomes(b.read_hostile.map((c: Vectors) => ({
    name: c.name, expect: c.expect, got: outcome(() => readBundle(fromHex(c.hex), KIND_TRAIN, TrainOrder)),
  })));
});

test("a TRAIN order sealed by the Python server opens on the node, within its cap", async () => {
  const s = V.bundles.sealed;
  const channel = () => SecureChannel.create({
    privateKey: fromHex(s.node_private), peerPublic: fromHex(s.server_public), role: "node", runId: BigInt(s.run_id),
    nodeId: BigInt(s.node_id), transcript: fromHex(s.transcript),
  });
  const node = await channel();
  const [first, parts] = await openBundle(node, fromHex(s.first), KIND_TRAIN, TrainOrder);
  assert.deepEqual([first.round, first.acknowledged, first.checkpointed], [3, 2, 1]);
  assert.deepEqual([...parts.keys()], ["adaptation0", "adaptation1"]);
  expectParts(parts, [adaptationPart(0), adaptationPart(1)], "a TRAIN order");
  const [second] = await openBundle(node, fromHex(s.second), KIND_TRAIN, TrainOrder);
  assert.deepEqual([second.round, second.acknowledged, second.checkpointed], [4, 3, 1]);
  // over the cap: refused before it is decrypted; at the cap: opened
  assert.equal(await outcomeAsync(async () => openSealed(await channel(), fromHex(s.first), KIND_TRAIN,
    new Limits({ maxBytes: Number(s.too_small_max_bytes) }))), "PayloadError");
  assert.equal(await outcomeAsync(async () => openSealed(await channel(), fromHex(s.first), KIND_TRAIN,
    new Limits({ maxBytes: Number(s.fits_max_bytes) }))), "ok");
  // replayed: the second order again
  assert.equal(await outcomeAsync(() => openBundle(node, fromHex(s.second), KIND_TRAIN, TrainOrder)), "ReplayError");
});

test("expectParts refuses any other set of parts", () => {
  assertOutcomes(V.expect_parts.map((c: Vectors) => ({
    name: JSON.stringify(c), expect: c.expect, got: outcome(() => expectParts(c.parts, c.names, "x")),
  })));
});

test("a claim, an order and a report made here decode in Python's terms", () => {
  const claim = new HelloClaim({ partitionId: 3, numExamples: 100, backend: "onnx", state: 2, identity: "ab".repeat(32),
    signature: "cd".repeat(64), held: [1, 2] });
  assert.equal(new TextDecoder().decode(claim.encode()), '{"backend":"onnx","held":[1,2],"identity":"'
    + `${"ab".repeat(32)}","num-examples":100,"partition-id":3,"signature":"${"cd".repeat(64)}","state":2}`);
  const report = new TrainReport({ round: 2, loss: 1, numExamples: 16, gradNorm: 1e-5, step: 3, state: 4 });
  assert.equal(new TextDecoder().decode(report.encode()),
    '{"grad-norm":1e-05,"loss":1.0,"num-examples":16,"round":2,"state":4,"step":3}');
  assert.equal(bytesOf({ t: "bytes", v: "41", pad: 2 }).length, 3);
});
