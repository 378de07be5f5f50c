import assert from "node:assert/strict";
import { test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { message } from "../src/flower/proto.js";

test("Flower's Fleet messages load from the pinned wheel's descriptors and round-trip", () => {
  const schema = message("flwr.proto.PullMessagesRequest");
  const node = create(message("flwr.proto.Node"), { nodeId: 2n ** 63n + 5n });
  const request = create(schema, { node });
  const back = fromBinary(schema, toBinary(schema, request)) as unknown as { node: { nodeId: bigint } };
  assert.equal(back.node.nodeId, 2n ** 63n + 5n);
});

test("an unknown message name is refused with its name", () => {
  assert.throws(() => message("flwr.proto.NoSuchThing"), /NoSuchThing/);
});
