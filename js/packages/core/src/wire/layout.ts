/**
 * Which layers of the frozen model are adapted (port of what a node needs from
 * `cola_fed/gl/layout.py`), and what one layer's adaptation data looks like and how it becomes
 * adapter rows (port of `cola_fed/gl/layer_data.py`).
 *
 * Every adapter maps rows `[n, dIn] -> [n, dOut]`. A convolution's data travels compact
 * (`x [B, C_in, H, W]`, `d [B, C_out, H', W']`) and the learner unfolds it itself, in exactly
 * `torch.nn.functional.unfold`'s order.
 */

import type { NdArray } from "../tensor.js";
import { float32, numel } from "../tensor.js";

/** The module types a layer can be (`cola_fed.gl.layout.MODULE_TYPES`). */
export type ModuleType = "linear" | "conv1d" | "conv2d";

/** One adapted layer: its module name, feature sizes and (for a convolution) geometry. */
export interface LayerInfo {
  readonly name: string;
  readonly dIn: number;
  readonly dOut: number;
  readonly moduleType: ModuleType;
  readonly hasBias: boolean;
  readonly kernelSize: readonly [number, number];
  readonly stride: readonly [number, number];
  readonly padding: readonly [number, number];
  readonly dilation: readonly [number, number];
}

/** The ordered adapted layers of one frozen model; what node and server agree on. */
export type Layout = readonly LayerInfo[];

/** A layer with Python's defaults for what is not given (a linear layer with bias). */
export function layerInfo(fields: Pick<LayerInfo, "name" | "dIn" | "dOut"> & Partial<LayerInfo>): LayerInfo {
  return {
    moduleType: "linear", hasBias: true, kernelSize: [1, 1], stride: [1, 1], padding: [0, 0],
    dilation: [1, 1], ...fields,
  };
}

/** Each layer by name (Python's `name in layout`, `layout[name]`). */
export function layoutIndex(layout: Layout): Map<string, LayerInfo> {
  return new Map(layout.map((layer) => [layer.name, layer]));
}

/** Whether a layer is a 2-D convolution (`LayerInfo.is_conv2d`). */
export function isConv2d(info: LayerInfo): boolean {
  return info.moduleType === "conv2d";
}

/** Input channels of a convolution (`dIn` for any other layer); `LayerInfo.in_channels`. */
export function inChannels(info: LayerInfo): number {
  const [kh, kw] = info.kernelSize;
  return isConv2d(info) ? Math.floor(info.dIn / (kh * kw)) : info.dIn;
}

/** Spatial size of a convolution's output for an input of `height x width` (Python's floor
 * division, also for negative sizes). */
export function outputSize(info: LayerInfo, height: number, width: number): [number, number] {
  const size = (n: number, axis: 0 | 1): number =>
    Math.floor((n + 2 * info.padding[axis] - info.dilation[axis] * (info.kernelSize[axis] - 1) - 1) / info.stride[axis]) + 1;
  return [size(height, 0), size(width, 1)];
}

function pyTuple(values: readonly number[]): string {
  return `(${values.join(", ")})`;
}

/**
 * Why `x` and `d` of these shapes are not adaptation data of layer `info`, or null
 * (`shape_error`). `hasRows`: the layer names its rows of a shared `x`, so `x` and `d` may
 * differ in their first dimension.
 */
export function shapeError(info: LayerInfo, xShape: readonly number[], dShape: readonly number[], hasRows: boolean): string | null {
  let expected: string;
  let ok: boolean;
  if (isConv2d(info)) {
    expected = `x [B, ${inChannels(info)}, H, W] and d [B, ${info.dOut}, H', W'] (kernel ${pyTuple(info.kernelSize)}, `
      + `stride ${pyTuple(info.stride)}, padding ${pyTuple(info.padding)}, dilation ${pyTuple(info.dilation)})`;
    ok = xShape.length === 4 && dShape.length === 4 && xShape[1] === inChannels(info) && dShape[1] === info.dOut;
    if (ok) {
      const [h, w] = outputSize(info, xShape[2] as number, xShape[3] as number);
      ok = dShape[2] === h && dShape[3] === w && Math.min(dShape[2] as number, dShape[3] as number) >= 1;
    }
  } else {
    expected = `x [n, ${info.dIn}] and d [n, ${info.dOut}]`;
    ok = xShape.length === 2 && dShape.length === 2 && xShape[1] === info.dIn && dShape[1] === info.dOut;
  }
  if (ok && !hasRows && xShape[0] !== dShape[0]) ok = false;
  if (ok) return null;
  return `layer '${info.name}': expected ${expected}, got [${xShape.join(", ")}] and [${dShape.join(", ")}]`;
}

/**
 * How many values unfolding a convolution input of `xShape` materialises: the padded copy and
 * the rows (`unfolded_values`). Exact (bigint): a node bounds it before it unfolds.
 */
export function unfoldedValues(info: LayerInfo, xShape: readonly [number, number, number, number]): bigint {
  const [b, c, h, w] = xShape.map(BigInt) as [bigint, bigint, bigint, bigint];
  const [ph, pw] = info.padding.map(BigInt) as [bigint, bigint];
  const [hOut, wOut] = outputSize(info, xShape[2], xShape[3]).map((n) => BigInt(Math.max(n, 0))) as [bigint, bigint];
  return b * c * (h + 2n * ph) * (w + 2n * pw) + b * hOut * wOut * BigInt(info.dIn);
}

/**
 * The receptive field of every output position of a convolution, as rows
 * `[B * H' * W', C_in * kh * kw]` (sample, then output row, then output column; each row
 * channel-major, then kernel row, then kernel column), zero padding outside the input.
 */
export function unfold(x: NdArray<"float32">, info: LayerInfo): NdArray<"float32"> {
  const [b, c, h, w] = x.shape as [number, number, number, number];
  const [kh, kw] = info.kernelSize;
  const [sh, sw] = info.stride;
  const [ph, pw] = info.padding;
  const [dh, dw] = info.dilation;
  const [hOut, wOut] = outputSize(info, h, w);
  const width = c * kh * kw;
  const out = new Float32Array(b * hOut * wOut * width);
  let at = 0;
  for (let n = 0; n < b; n++) {
    for (let oy = 0; oy < hOut; oy++) {
      for (let ox = 0; ox < wOut; ox++) {
        for (let ch = 0; ch < c; ch++) {
          const plane = (n * c + ch) * h * w;
          for (let ky = 0; ky < kh; ky++) {
            const y = oy * sh + ky * dh - ph;
            for (let kx = 0; kx < kw; kx++) {
              const xx = ox * sw + kx * dw - pw;
              out[at++] = y >= 0 && y < h && xx >= 0 && xx < w ? (x.data[plane + y * w + xx] as number) : 0;
            }
          }
        }
      }
    }
  }
  return float32([b * hOut * wOut, width], out);
}

/** `(x, d)` of one layer as adapter rows `[n, dIn]` and `[n, dOut]` (`to_rows`): a linear
 * layer's data as it is, a convolution's unfolded and its `d` moved channels-last. */
export function toRows(info: LayerInfo, x: NdArray<"float32">, d: NdArray<"float32">): [NdArray<"float32">, NdArray<"float32">] {
  if (!isConv2d(info)) return [x, d];
  const [b, cOut, h, w] = d.shape as [number, number, number, number];
  const rows = new Float32Array(numel(d.shape));
  let at = 0;
  for (let n = 0; n < b; n++) {
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < w; xx++) {
        for (let ch = 0; ch < cOut; ch++) rows[at++] = d.data[((n * cOut + ch) * h + y) * w + xx] as number;
      }
    }
  }
  return [unfold(x, info), float32([b * h * w, info.dOut], rows)];
}
