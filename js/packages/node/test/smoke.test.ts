import assert from "node:assert/strict";
import { test } from "node:test";
import { message } from "@cola-fed/core";

test("the Node.js runtime reaches the core through its package name", () => {
  assert.ok(message("flwr.proto.Node"));
});
