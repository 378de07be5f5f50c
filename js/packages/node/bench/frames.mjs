/**
 * The frames the benchmarks' node drivers read from and write to the Python side
 * (benchmarks/js_node.py, benchmarks/browser_node.py): a 4-byte big-endian length, then the
 * bytes. Shared by the Node.js driver (node-process.mjs) and the browser's (drive-bench.mjs).
 */

/** Frames from a readable stream, one at a time. */
export class FrameReader {
  #chunks = [];
  #length = 0;
  #waiting = undefined;
  #ended = false;

  constructor(stream) {
    stream.on("data", (chunk) => { this.#chunks.push(chunk); this.#length += chunk.length; this.#wake(); });
    stream.on("end", () => { this.#ended = true; this.#wake(); });
  }

  #wake() {
    const resolve = this.#waiting;
    this.#waiting = undefined;
    resolve?.();
  }

  async #take(count) {
    while (this.#length < count) {
      if (this.#ended) return undefined;
      await new Promise((resolve) => { this.#waiting = resolve; });
    }
    const all = Buffer.concat(this.#chunks, this.#length);
    this.#chunks = all.length > count ? [all.subarray(count)] : [];
    this.#length = all.length - count;
    return new Uint8Array(all.buffer, all.byteOffset, count);
  }

  /** The next frame's bytes, or undefined at the end of the input. */
  async next() {
    const head = await this.#take(4);
    if (head === undefined) return undefined;
    const size = new DataView(head.buffer, head.byteOffset, 4).getUint32(0);
    const body = await this.#take(size);
    if (body === undefined) throw new Error(`the input ended inside a frame of ${size} bytes`);
    return body;
  }
}

/** `data` as one frame: its length, then its bytes. */
export function frame(data) {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(data.length);
  return Buffer.concat([head, data]);
}

/** Write `data` to stdout as one frame. */
export function writeFrame(data) {
  process.stdout.write(frame(data));
}
