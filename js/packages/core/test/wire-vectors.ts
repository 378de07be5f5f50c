/** The wire's conformance vectors (`tests/conformance/wire.py`), and helpers its tests share. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

// compiled to js/packages/core/dist-test/test/: the vectors are in js/conformance/
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JSON document of known shape
export const WIRE: any = JSON.parse(readFileSync(new URL("../../../../conformance/wire.json", import.meta.url), "utf8"));

/** Bytes of a lower-case hex string. */
export function hex(text: string): Uint8Array {
  return Uint8Array.from(Buffer.from(text, "hex"));
}

/** Lower-case hex of bytes. */
export function toHexString(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** Assert that `action` throws (or rejects with) an error of class `name`. */
export async function assertRefused(action: () => unknown, name: string, label = ""): Promise<void> {
  let caught: unknown;
  try {
    await action();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof Error, `${label}: expected ${name}, but it was accepted`);
  assert.equal(caught.constructor.name, name, `${label}: expected ${name}, got ${caught.constructor.name}: ${caught.message}`);
}
