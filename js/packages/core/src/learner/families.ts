/**
 * The built-in adapter families' torch-free descriptions (`cola_fed/adapters/<kind>/family.py`):
 * parameter shapes, the seeded initial values (only `rng.random` is drawn, in the same order as
 * numpy, so a seed gives the same adapters bit for bit), graph-name tags and whether a family
 * learns from the weight-space gradient. A plugin family of the Python node is not known here:
 * its kind is refused with ConfigError, as Python refuses an unregistered kind.
 */

import { ConfigError } from "../errors.js";
import { NumpyGenerator } from "../random/numpy.js";
import { numel } from "../tensor.js";
import type { LayerInfo } from "../wire/layout.js";
import type { AdapterSpecLike, Shapes } from "./types.js";

/** What the learner needs of one family. */
export interface AdapterFamilyInfo {
  readonly kind: string;
  /** learns from `(G, sum of d)` alone (`AdapterFamily.weight_gradient`) */
  readonly weightGradient: boolean;
  paramShapes(spec: AdapterSpecLike, dIn: number, dOut: number): Shapes;
  /** fresh float64 parameters whose output is zero, drawn from `rng` only */
  init(spec: AdapterSpecLike, dIn: number, dOut: number, rng: NumpyGenerator): Map<string, Float64Array>;
  /** the size part of graph names (`r8` in `lowrank-r8-64x64-adamw`) */
  graphTag(spec: AdapterSpecLike): string;
}

/**
 * `uniform(rng, shape, fan_in)`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in float64, as
 * `(rng.random(shape) * 2.0 - 1.0) * bound`. Python computes the bound as `1.0 / fan_in**0.5`
 * (libm pow); sqrt is correctly rounded and agrees on the fan-ins the vectors cover.
 */
function uniform(rng: NumpyGenerator, count: number, fanIn: number): Float64Array {
  const bound = 1.0 / Math.sqrt(fanIn);
  const values = rng.randomArray(count);
  for (let i = 0; i < count; i++) values[i] = (values[i]! * 2.0 - 1.0) * bound;
  return values;
}

function zeros(shapes: Shapes): Map<string, Float64Array> {
  return new Map([...shapes].map(([name, shape]) => [name, new Float64Array(numel(shape))]));
}

/** Widths of an MLP adapter's hidden layers (`AdapterSpec.hidden_sizes`). */
export function hiddenSizes(spec: AdapterSpecLike): number[] {
  return Array.from({ length: spec.depth }, (_, i) => spec.hidden * spec.growth ** i);
}

const LOW_RANK: AdapterFamilyInfo = {
  kind: "lowrank",
  weightGradient: true,
  paramShapes: (spec, dIn, dOut) => new Map([["A", [spec.rank, dIn]], ["B", [dOut, spec.rank]]]),
  init: (spec, dIn, dOut, rng) => new Map([
    ["A", uniform(rng, spec.rank * dIn, dIn)],
    ["B", new Float64Array(dOut * spec.rank)],
  ]),
  graphTag: (spec) => `r${spec.rank}`,
};

const LINEAR: AdapterFamilyInfo = {
  kind: "linear",
  weightGradient: true,
  paramShapes: (spec, dIn, dOut) => new Map<string, number[]>([
    ["weight", [dOut, dIn]], ...(spec.bias ? [["bias", [dOut]] as [string, number[]]] : []),
  ]),
  init: (spec, dIn, dOut) => zeros(LINEAR.paramShapes(spec, dIn, dOut)),
  graphTag: (spec) => (spec.bias ? "bias" : "nobias"),
};

const MLP: AdapterFamilyInfo = {
  kind: "mlp",
  weightGradient: false,
  paramShapes: (spec, dIn, dOut) => {
    const widths = [dIn, ...hiddenSizes(spec), dOut];
    const shapes: Shapes = new Map();
    for (let i = 0; i + 1 < widths.length; i++) {
      shapes.set(`fc${i}.weight`, [widths[i + 1]!, widths[i]!]);
      shapes.set(`fc${i}.bias`, [widths[i + 1]!]);
    }
    return shapes;
  },
  /** `nn.Linear`-style hidden layers (weight, then bias, layer by layer); the last is zero. */
  init: (spec, dIn, dOut, rng) => {
    const shapes = MLP.paramShapes(spec, dIn, dOut);
    const params = zeros(shapes);
    for (let i = 0; i < spec.depth; i++) {
      const weight = shapes.get(`fc${i}.weight`)!;
      const fanIn = weight[1]!;
      params.set(`fc${i}.weight`, uniform(rng, numel(weight), fanIn));
      params.set(`fc${i}.bias`, uniform(rng, numel(shapes.get(`fc${i}.bias`)!), fanIn));
    }
    return params;
  },
  graphTag: (spec) => `h${spec.hidden}x${spec.depth}g${spec.growth}${spec.activation}`,
};

const FAMILIES: ReadonlyMap<string, AdapterFamilyInfo> = new Map(
  [LOW_RANK, LINEAR, MLP].map((family) => [family.kind, family]),
);

/** The family of `kind`, or ConfigError naming the known ones. */
export function familyOf(kind: string): AdapterFamilyInfo {
  const family = FAMILIES.get(kind);
  if (family === undefined) {
    throw new ConfigError(
      `adapter.kind: no adapter family ${JSON.stringify(String(kind).slice(0, 40))} is known to ` +
        `this node; known: ${[...FAMILIES.keys()].join(", ")}. Plugin families run only on the ` +
        "Python node",
    );
  }
  return family;
}

/** `{layer: {param: shape}}` of `specs` on `layout` (`state_shapes`). */
export function stateShapes(
  layout: ReadonlyMap<string, LayerInfo>,
  specs: ReadonlyMap<string, AdapterSpecLike>,
): Map<string, Shapes> {
  const out = new Map<string, Shapes>();
  for (const [name, spec] of specs) {
    const info = layout.get(name)!;
    out.set(name, familyOf(spec.kind).paramShapes(spec, info.dIn, info.dOut));
  }
  return out;
}

/**
 * The seeded initial adapters (`cola_fed.adapters.init.initial_state`): one
 * `default_rng(seed)` stream drawn layer by layer in the order of `specs` (the layout's order),
 * each family's float64 values checked against its shapes.
 */
export function initialState(
  layout: ReadonlyMap<string, LayerInfo>,
  specs: ReadonlyMap<string, AdapterSpecLike>,
  seed: number | bigint,
): Map<string, Map<string, Float64Array>> {
  const rng = NumpyGenerator.fromSeed(seed);
  const out = new Map<string, Map<string, Float64Array>>();
  for (const [name, spec] of specs) {
    const info = layout.get(name)!;
    const family = familyOf(spec.kind);
    const params = family.init(spec, info.dIn, info.dOut, rng);
    const shapes = family.paramShapes(spec, info.dIn, info.dOut);
    for (const [param, shape] of shapes) {
      if (params.get(param)?.length !== numel(shape)) {
        throw new Error(`adapter family ${spec.kind}: init does not fit its shapes (${param})`);
      }
    }
    out.set(name, params);
  }
  return out;
}
