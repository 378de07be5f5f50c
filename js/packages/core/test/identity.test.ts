import assert from "node:assert/strict";
import { test } from "node:test";
import { KnownServers, type KnownServersStorage, formatKnownServers, parseKnownServers } from "../src/wire/identity.js";
import { WIRE, assertRefused, hex, toHexString } from "./wire-vectors.js";

const I = WIRE.identity;

/** A known-servers document in memory, as a runtime's file would hold it. */
class MemoryStorage implements KnownServersStorage {
  data: Uint8Array | null = null;
  writes = 0;
  readonly location = "memory";
  async read(): Promise<Uint8Array | null> {
    return this.data;
  }
  async write(data: Uint8Array): Promise<void> {
    this.data = data;
    this.writes++;
  }
}

interface Step { op: "check" | "forget"; name: string; public?: string; pinned?: string | null; remember?: boolean;
  result?: string | boolean; error?: string; file: string | null }

test(`${I.steps.length} check/forget steps give Python's results, errors and file bytes`, async () => {
  const storage = new MemoryStorage();
  const firstUse: string[] = [];
  const known = new KnownServers(storage, { onFirstUse: (name) => firstUse.push(name) });
  for (const step of I.steps as Step[]) {
    const label = `${step.op} ${step.name} ${step.pinned ?? ""} ${step.remember ?? ""}`;
    const run = (): Promise<string | boolean> => (step.op === "forget" ? known.forget(step.name)
      : known.check(step.name, hex(step.public as string), { pinned: step.pinned, remember: step.remember }));
    if (step.error !== undefined) await assertRefused(run, step.error, label);
    else assert.equal(await run(), step.result, label);
    assert.equal(storage.data === null ? null : toHexString(storage.data), step.file, label);
  }
  assert.deepEqual(firstUse, ["superlink.example:9092", "other", "A-server", "other"]);
});

test("a mismatch says how to rotate", async () => {
  const storage = new MemoryStorage();
  const known = new KnownServers(storage, { forgetHint: "run: cola-fed-node trust forget {name}" });
  const steps = I.steps as Step[];
  await known.check("s", hex(steps[0]?.public as string));
  await assert.rejects(known.check("s", hex(steps[3]?.public as string)),
    (err: Error) => err.constructor.name === "UntrustedKeyError" && /trust forget s/.test(err.message) && /server-key-fingerprint/.test(err.message));
});

test(`${I.good_files.length} known-servers files Python reads are read alike`, () => {
  for (const v of I.good_files as { file: string; result: Record<string, string> }[]) {
    assert.deepEqual(Object.fromEntries(parseKnownServers(hex(v.file))), v.result, v.file);
  }
});

test(`${I.bad_files.length} damaged known-servers files are refused with Python's error class`, async () => {
  for (const v of I.bad_files as { file: string; error: string }[]) await assertRefused(() => parseKnownServers(hex(v.file)), v.error, v.file);
  const known = new KnownServers({ read: async () => hex((I.bad_files as { file: string }[])[4]?.file as string), write: async () => assert.fail("written") });
  await assertRefused(() => known.check("a", new Uint8Array(32)), "ConfigError");
});

test("the file is written as Python writes it", () => {
  for (const v of I.written as { servers: Record<string, string>; file: string }[]) {
    assert.equal(toHexString(formatKnownServers(new Map(Object.entries(v.servers)))), v.file);
  }
});
