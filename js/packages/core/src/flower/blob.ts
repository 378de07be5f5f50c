/**
 * Sealed blobs in Flower records: port of `cola_fed/federation/records.py`.
 *
 * A sealed payload travels as a 1-D uint8 `Array` (stype "numpy.ndarray", i.e. the bytes of a
 * `.npy` file) alone in an `ArrayRecord` under the name "payload": Flower chunks arrays for
 * transport, while bytes in a `ConfigRecord` are sent whole.
 */
import { MalformedPayloadError } from "../errors.js";
import type { ArrayRecord } from "./records.js";

/** The one name of a sealed blob's ArrayRecord. */
export const PAYLOAD_KEY = "payload";

/** Flower's serialisation type of arrays saved with `np.save`. */
export const NUMPY_STYPE = "numpy.ndarray";

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
const ARRAY_ALIGN = 64;
const GROWTH_AXIS_MAX_DIGITS = 21;
/** numpy's `_MAX_HEADER_SIZE`: longer headers are refused as unsafe to evaluate. */
const MAX_HEADER_SIZE = 10000;

/**
 * `np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
 * "shape": (n,)})`, byte for byte (numpy 2.x: growth padding, then 64-byte alignment).
 */
export function npyHeaderU8(length: number): Uint8Array {
  let header = `{'descr': '|u1', 'fortran_order': False, 'shape': (${length},), }`;
  header += " ".repeat(GROWTH_AXIS_MAX_DIGITS - String(length).length);
  const hlen = header.length + 1;
  const padlen = ARRAY_ALIGN - ((MAGIC.length + 2 + 2 + hlen) % ARRAY_ALIGN);
  const total = hlen + padlen;
  const out = new Uint8Array(MAGIC.length + 2 + 2 + total);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  out[8] = total & 0xff;
  out[9] = total >> 8;
  const text = header + " ".repeat(padlen) + "\n";
  for (let i = 0; i < text.length; i++) out[10 + i] = text.charCodeAt(i);
  return out;
}

/** Wraps a sealed blob for a RecordDict, as `blob_to_record` does. */
export function blobToRecord(blob: Uint8Array): ArrayRecord {
  const header = npyHeaderU8(blob.length);
  const data = new Uint8Array(header.length + blob.length);
  data.set(header, 0);
  data.set(blob, header.length);
  return new Map([[PAYLOAD_KEY, { dtype: "uint8", shape: [blob.length], stype: NUMPY_STYPE, data }]]);
}

/**
 * Unwraps a sealed blob, refusing anything but one 1-D uint8 array under "payload" with a
 * readable `.npy` v1.0/v2.0 header that matches its data (MalformedPayloadError), as
 * `record_to_blob` does. Returns a view into the array's data, no copy.
 *
 * The header is read with a small reader of Python literals instead of `ast.literal_eval`: it
 * accepts what numpy writes and the usual variants (either quotes, any key order and spacing,
 * trailing commas, every spelling of uint8 numpy maps to `np.uint8`), and refuses exotic
 * literals (escapes, underscores or hex in numbers, Python 2 `L` suffixes) that numpy would
 * still read. Nothing it accepts is refused by numpy.
 */
export function recordToBlob(record: ArrayRecord): Uint8Array {
  const keys = [...record.keys()];
  if (keys.length !== 1 || keys[0] !== PAYLOAD_KEY) {
    throw new MalformedPayloadError(`expected an ArrayRecord holding only '${PAYLOAD_KEY}', got [${keys.map((k) => JSON.stringify(k.slice(0, 60))).join(", ")}]`);
  }
  const array = record.get(PAYLOAD_KEY)!;
  if (array.dtype !== "uint8" || array.shape.length !== 1 || array.stype !== NUMPY_STYPE) {
    throw new MalformedPayloadError(`a sealed payload must be a 1-D uint8 array, got ${array.dtype.slice(0, 40)} [${array.shape.join(", ")}] (${array.stype.slice(0, 40)})`);
  }
  const data = array.data;
  let start: number;
  let shape: bigint[];
  let uint8: boolean;
  try {
    ({ start, shape, uint8 } = readNpyHeader(data));
  } catch (err) {
    throw new MalformedPayloadError(`the sealed payload's array is unreadable: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!uint8 || shape.length !== 1 || shape[0] !== BigInt(data.length - start)) {
    throw new MalformedPayloadError("the sealed payload's array header does not match its data");
  }
  return data.subarray(start);
}

/** `read_magic` + `_read_array_header`: the data offset, shape and whether the dtype is uint8. */
function readNpyHeader(data: Uint8Array): { start: number; shape: bigint[]; uint8: boolean } {
  if (data.length < 8) throw new Error("EOF: reading magic string");
  if (!MAGIC.every((b, i) => data[i] === b)) throw new Error("the magic string is not correct");
  const version = `${data[6]}.${data[7]}`;
  const lengthBytes = version === "1.0" ? 2 : version === "2.0" ? 4 : 0;
  if (lengthBytes === 0) throw new Error(`unsupported .npy version ${version}`);
  if (data.length < 8 + lengthBytes) throw new Error("EOF: reading array header length");
  let headerLength = 0;
  for (let i = lengthBytes - 1; i >= 0; i--) headerLength = headerLength * 256 + data[8 + i]!;
  const start = 8 + lengthBytes + headerLength;
  if (start > data.length) throw new Error("EOF: reading array header");
  if (headerLength > MAX_HEADER_SIZE) throw new Error(`header info length (${headerLength}) is large and may not be safe to load securely`);
  let text = "";
  for (let i = 8 + lengthBytes; i < start; i++) text += String.fromCharCode(data[i]!); // latin1
  const d = new PyLiteralReader(text).document();
  if (!(d instanceof Map)) throw new Error("header is not a dictionary");
  const keys = [...d.keys()].sort();
  if (keys.length !== 3 || keys.join(",") !== "descr,fortran_order,shape") throw new Error(`header does not contain the correct keys: ${keys.join(", ").slice(0, 100)}`);
  const shape = d.get("shape");
  if (!(shape instanceof PyTuple) || !shape.items.every((x) => typeof x === "bigint")) throw new Error("shape is not valid");
  if (typeof d.get("fortran_order") !== "boolean") throw new Error("fortran_order is not a valid bool");
  const descr = d.get("descr");
  if (typeof descr !== "string") throw new Error("descr is not a dtype numpy maps to uint8");
  const uint8 = /^[|<>=]?(u1|B)$/.test(descr) || descr === "uint8" || descr === "ubyte";
  return { start, shape: shape.items as bigint[], uint8 };
}

class PyTuple {
  constructor(readonly items: PyValue[]) {}
}
type PyValue = string | bigint | boolean | null | PyTuple | PyValue[] | Map<string, PyValue>;

/** Reads the Python literals a `.npy` header holds: dict, tuple, list, str, int, bool, None. */
class PyLiteralReader {
  private at = 0;
  constructor(private readonly text: string) {}

  document(): PyValue {
    const v = this.value(0);
    this.ws();
    if (this.at !== this.text.length) throw new Error("cannot parse header: trailing data");
    return v;
  }

  private ws(): void {
    while (this.at < this.text.length && " \t\n\r\f\v".includes(this.text[this.at]!)) this.at++;
  }

  private value(depth: number): PyValue {
    if (depth > 8) throw new Error("cannot parse header: nested too deeply");
    this.ws();
    const c = this.text[this.at];
    if (c === "{") return this.dict(depth);
    if (c === "(" || c === "[") return this.sequence(depth, c);
    if (c === "'" || c === '"') return this.string();
    const m = /^(True|False|None|[+-]?[0-9]+)/.exec(this.text.slice(this.at, this.at + 40));
    if (m === null) throw new Error(`cannot parse header at ${this.at}`);
    const token = m[0];
    const next = this.text[this.at + token.length];
    if (next !== undefined && /[A-Za-z0-9_.]/.test(next)) throw new Error(`cannot parse header at ${this.at}`);
    this.at += token.length;
    if (token === "True") return true;
    if (token === "False") return false;
    if (token === "None") return null;
    if (/^[+-]?0[0-9]/.test(token)) throw new Error("cannot parse header: leading zeros"); // a SyntaxError in Python 3
    return BigInt(token);
  }

  private string(): string {
    const quote = this.text[this.at]!;
    const end = this.text.indexOf(quote, this.at + 1);
    if (end === -1) throw new Error("cannot parse header: unterminated string");
    const s = this.text.slice(this.at + 1, end);
    if (s.includes("\\") || s.includes("\n")) throw new Error("cannot parse header: escapes in a string");
    this.at = end + 1;
    return s;
  }

  private dict(depth: number): Map<string, PyValue> {
    this.at++;
    const out = new Map<string, PyValue>();
    for (;;) {
      this.ws();
      if (this.text[this.at] === "}") {
        this.at++;
        return out;
      }
      const key = this.value(depth + 1);
      if (typeof key !== "string") throw new Error("cannot parse header: a key that is not a string");
      this.ws();
      if (this.text[this.at] !== ":") throw new Error("cannot parse header: expected ':'");
      this.at++;
      out.set(key, this.value(depth + 1)); // a repeated key keeps the last value, as in Python
      this.ws();
      if (this.text[this.at] === ",") this.at++;
      else if (this.text[this.at] !== "}") throw new Error("cannot parse header: expected ',' or '}'");
    }
  }

  private sequence(depth: number, open: string): PyValue {
    const close = open === "(" ? ")" : "]";
    this.at++;
    const items: PyValue[] = [];
    let comma = false;
    for (;;) {
      this.ws();
      if (this.text[this.at] === close) {
        this.at++;
        break;
      }
      items.push(this.value(depth + 1));
      this.ws();
      if (this.text[this.at] === ",") {
        this.at++;
        comma = true;
      } else if (this.text[this.at] !== close) throw new Error(`cannot parse header: expected ',' or '${close}'`);
    }
    if (open === "[") return items;
    if (items.length === 1 && !comma) return items[0]!; // "(5)" is 5, not a tuple
    return new PyTuple(items);
  }
}
