/**
 * Sealed bundles: a control message and named payloads, sealed as one (`seal_bundle`,
 * `open_sealed`, `read_bundle`, `open_bundle`, `expect_parts` of
 * `cola_fed/federation/protocol.py`).
 */

import { PayloadError, ProtocolError } from "../errors.js";
import { compareCodePoints } from "../json/python-json.js";
import { DEFAULT_LIMITS, decodeBundle, encodeBundle, Limits } from "../wire/codec.js";
import { PART_CONTROL } from "./constants.js";
import type { ControlClass } from "./control.js";
import { sortedRepr } from "./fields.js";

/** What a bundle needs of a secure channel (`wire/seal.ts` `SecureChannel`). */
export interface SealingChannel {
  seal(plaintext: Uint8Array, kind: string): Promise<Uint8Array>;
  open(envelope: Uint8Array, kind: string): Promise<Uint8Array>;
}

/** A control message (anything that encodes itself). */
export interface EncodesItself {
  encode(): Uint8Array;
}

/** Seal a control message and named payloads as one bundle (`seal_bundle`); the control
 * message is the first part. */
export async function sealBundle(channel: SealingChannel, kind: string, control: EncodesItself,
  parts: ReadonlyMap<string, Uint8Array>): Promise<Uint8Array> {
  const all = new Map<string, Uint8Array>([[PART_CONTROL, control.encode()]]);
  for (const [name, blob] of parts) all.set(name, blob);
  return channel.seal(encodeBundle(all), kind);
}

/** A sealed bundle's plaintext (`open_sealed`); a payload over `limits.maxBytes` (plus the
 * envelope's 64 bytes of header and tag) is refused before it is decrypted. */
export async function openSealed(channel: SealingChannel, sealed: Uint8Array, kind: string,
  limits: Limits = DEFAULT_LIMITS): Promise<Uint8Array> {
  const size = limits.maxBytes;
  if (sealed.length > size + 64) {
    throw new PayloadError(`a sealed ${kind} payload of ${sealed.length} bytes exceeds the cap ${size}`);
  }
  return channel.open(sealed, kind);
}

/** An opened bundle's control message, decoded, and its other parts, still encoded (each is
 * decoded by its own strict decoder): `read_bundle`. */
export function readBundle<T>(plaintext: Uint8Array, kind: string, control: ControlClass<T>): [T, Map<string, Uint8Array>] {
  const size = plaintext.length; // a part is a byte string: its "rows" are bytes
  const parts = decodeBundle(plaintext, new Limits({ maxBytes: Math.max(size, 8), maxRows: Math.max(size, 8) }));
  const raw = parts.get(PART_CONTROL);
  if (raw === undefined) throw new ProtocolError(`a sealed ${kind} bundle has no control part`);
  parts.delete(PART_CONTROL);
  return [control.decode(raw), parts];
}

/** Open a sealed bundle and decode its control message (`open_bundle`: {@link openSealed},
 * then {@link readBundle}). */
export async function openBundle<T>(channel: SealingChannel, sealed: Uint8Array, kind: string, control: ControlClass<T>,
  limits: Limits = DEFAULT_LIMITS): Promise<[T, Map<string, Uint8Array>]> {
  return readBundle(await openSealed(channel, sealed, kind, limits), kind, control);
}

/** The parts of a bundle must be exactly `names` (`expect_parts`). */
export function expectParts(parts: ReadonlyMap<string, unknown> | Iterable<string>, names: readonly string[], what: string): void {
  const got = parts instanceof Map ? [...parts.keys()] : [...(parts as Iterable<string>)];
  const want = new Set(names);
  if (new Set(got).size !== want.size || !got.every((n) => want.has(n))) {
    throw new ProtocolError(`${what}: expected parts ${sortedRepr([...names].sort(compareCodePoints).slice(0, 8))}, got `
      + sortedRepr([...got].sort(compareCodePoints).slice(0, 8)));
  }
}
