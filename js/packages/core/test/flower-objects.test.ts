/**
 * Flower's content-addressed objects against flwr 1.42 itself (js/conformance/flower.json):
 * messages deflated byte for byte with the same ids, trees read back, replies made as
 * `Message(..., reply_to=...)` makes them, and every hostile tree refused with FleetError.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FleetError } from "../src/errors.js";
import { makeReply, validateReply } from "../src/flower/message.js";
import { decodeMessageTree, encodeMessage, parseObject, pyJsonString } from "../src/flower/objects.js";
import { fromHex, toHex } from "../src/util/bytes.js";
import { float, loadVectors, messageOf, treeJson, treeOf, type MessageJson } from "./flower-vectors.js";

const V = loadVectors();
const SMALL = ["instruction", "empty_instruction", "reply_content", "reply_error", "reply_error_no_reason"];

function objectsOf(v: MessageJson): Map<string, Uint8Array> {
  return new Map(Object.entries(v.objects).map(([id, hex]) => [id, fromHex(hex!)]));
}

for (const name of SMALL) {
  test(`${name}: deflates to flwr's object tree byte for byte`, async () => {
    const v = V.messages[name] as MessageJson;
    const encoded = await encodeMessage(messageOf(v));
    assert.equal(encoded.messageId, v.message_id);
    assert.deepEqual(treeJson(encoded.tree), v.tree);
    assert.deepEqual([...encoded.objects.keys()], v.order);
    for (const [id, bytes] of encoded.objects) assert.equal(toHex(bytes), v.objects[id], `object ${id}`);
  });

  test(`${name}: flwr's tree inflates to the same message`, async () => {
    const v = V.messages[name] as MessageJson;
    const decoded = await decodeMessageTree(treeOf(v.tree), objectsOf(v));
    const expected = messageOf(v);
    expected.metadata.messageId = v.message_id;
    assert.deepStrictEqual(decoded, expected);
  });
}

test("a message larger than a chunk: 5 MiB ArrayChunks, repeated chunks listed once", async () => {
  const v = V.messages["large"] as MessageJson;
  const encoded = await encodeMessage(messageOf(v));
  assert.equal(encoded.messageId, v.message_id);
  assert.deepEqual(treeJson(encoded.tree), v.tree);
  assert.deepEqual([...encoded.objects.keys()], v.order);
  for (const [id, bytes] of encoded.objects) {
    if (v.objects[id] === null) assert.ok(bytes.length <= V.messages.chunk_size + 100);
    else assert.equal(toHex(bytes), v.objects[id], `object ${id}`);
  }
  const zeros = [...encoded.objects.values()].map((b) => parseObject(b)).find((o) => o.className === "Array" && new TextDecoder().decode(o.body).includes("[0, 0]"));
  assert.ok(zeros, "the all-zero array's two identical chunks are one child, referenced twice");
  const decoded = await decodeMessageTree(encoded.tree, encoded.objects);
  const arrays = decoded.content!.arrays.get("big")!;
  assert.equal(arrays.get("pattern")!.data.length, V.messages.chunk_size + 1000);
  assert.equal(arrays.get("pattern")!.data[V.messages.chunk_size + 999], (7 * (V.messages.chunk_size + 999) + 3) & 0xff);
  assert.equal(arrays.get("zeros")!.data.length, 2 * V.messages.chunk_size);
});

for (const h of V.hostile) {
  test(`hostile tree refused: ${h.name} (Python: ${h.python_error})`, async () => {
    const objects = new Map(Object.entries(h.objects).map(([id, hex]) => [id, fromHex(hex)]));
    await assert.rejects(decodeMessageTree(treeOf(h.tree), objects), (err: Error) => {
      assert.equal(err.name, h.error, err.message);
      return true;
    });
  });
}

test("limits: too many objects, too many bytes, an array that repeats a chunk past its bound", async () => {
  const v = V.messages["instruction"] as MessageJson;
  const tree = treeOf(v.tree);
  await assert.rejects(decodeMessageTree(tree, objectsOf(v), { maxObjects: 3 }), FleetError);
  await assert.rejects(decodeMessageTree(tree, objectsOf(v), { maxTotalBytes: 100 }), FleetError);
  await assert.rejects(decodeMessageTree(tree, objectsOf(v), { maxObjectBytes: 50 }), FleetError);
  const large = V.messages["large"] as MessageJson;
  const encoded = await encodeMessage(messageOf(large));
  await assert.rejects(decodeMessageTree(encoded.tree, encoded.objects, { maxArrayBytes: V.messages.chunk_size }), /more than the limit/);
  const extra = objectsOf(v);
  extra.set("f".repeat(64), new Uint8Array(1));
  await assert.rejects(decodeMessageTree(tree, extra), /not in the message's tree/);
});

test("makeReply builds the reply flwr builds (ids, metadata, TTL capped to the instruction's)", async () => {
  const ins = messageOf(V.messages["instruction"] as MessageJson);
  const now = float(V.messages.reply_time);
  for (const name of ["reply_content", "reply_error"]) {
    const v = V.messages[name] as MessageJson;
    const expected = messageOf(v);
    const body = expected.content !== undefined ? { content: expected.content } : { error: expected.error! };
    const reply = await makeReply(ins, body, { now });
    assert.equal(reply.metadata.messageId, v.message_id);
    assert.deepStrictEqual(reply.metadata, expected.metadata);
    assert.deepEqual(validateReply(reply, now), []);
  }
  const capped = await makeReply(ins, { content: { configs: new Map(), arrays: new Map(), metrics: new Map() } }, { now, ttl: 1e9 });
  assert.equal(capped.metadata.ttl, ins.metadata.createdAt + ins.metadata.ttl - now);
  await assert.rejects(makeReply(ins, { content: { configs: new Map(), arrays: new Map(), metrics: new Map() } }, { now: ins.metadata.createdAt + ins.metadata.ttl + 1 }), FleetError);
  await assert.rejects(makeReply({ ...ins, metadata: { ...ins.metadata, messageId: "" } }, { error: { code: 0n, reason: "" } }, { now }), FleetError);
});

test("json.dumps strings: ensure_ascii escapes as Python writes them", () => {
  assert.equal(pyJsonString('a"\\\n\t\b\f\r\u0001\u007f\u00e9\u{1d11e}'), '"a\\"\\\\\\n\\t\\b\\f\\r\\u0001\\u007f\\u00e9\\ud834\\udd1e"');
});
