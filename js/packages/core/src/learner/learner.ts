/**
 * The client side of ColA on ONNX Runtime: a port of `cola_fed/edge/ort_learner.py` and of
 * `cola_fed/gl/learner_base.py`. Each adapted layer steps with the exported train-step graph of
 * its family, layer shape, optimizer and form of adaptation data; everything else (seeded
 * initial adapters, checks of incoming chunks, interval buffering, unfolding convolutions,
 * global-norm clipping, the hyper-parameter schedule, the state and its byte format) follows
 * the Python code operation for operation, so that on the same ONNX Runtime CPU kernels a
 * JavaScript node and a Python node hold the same adapters bit for bit.
 *
 * A graph both computes a layer's gradient and steps, so clipping (which needs the global norm
 * before any layer steps) runs every graph at `grad_scale = 1`, which also returns each layer's
 * norm, and runs them again at the clipping coefficient only on the steps that clip.
 */

import { Tensor } from "onnxruntime-common";
import { AdapterError, ConfigError, GradientError } from "../errors.js";
import { numel } from "../tensor.js";
import type { NdArray } from "../tensor.js";
import { fromHex, toHex } from "../util/bytes.js";
import { layerNames, layerRows, rowLayers } from "../wire/adaptation.js";
import type { AdaptationData } from "../wire/adaptation.js";
import { layoutIndex, shapeError, toRows } from "../wire/layout.js";
import type { LayerInfo, Layout } from "../wire/layout.js";
import { countNonFinite, isIntegerArray, pyShape, sameShape, toFloat32, toNumbers, zerosF32 } from "./arrays.js";
import { assignSpecs } from "./assign.js";
import { parameterDigest } from "./digest.js";
import { familyOf, initialState, stateShapes } from "./families.js";
import { HYPER_PARAMETERS, checkOptimizer, clipCoefficient, hyperAt, slotNames } from "./optimizer.js";
import type { Hyper } from "./optimizer.js";
import { GRAD_SCALE, GRAPH_FORMS, LazySessions, checkGraph, graphName } from "./sessions.js";
import type { GraphForm, SessionFactory } from "./sessions.js";
import { PARAM_PREFIX, stateFromBytes, stateToBytes } from "./state-bytes.js";
import type { LearnerStateDict } from "./state-bytes.js";
import type { AdapterSpecLike, AdapterStateMap, OptimizerSpecLike, Shapes, SlotStateMap } from "./types.js";

type F32 = NdArray<"float32">;

/** A layer's adaptation data for one step, in the form its graph takes. */
type LayerInputs =
  | { form: "rows"; x: F32; d: F32 }
  | { form: "weight-gradient"; g: F32; gBias: F32 }
  | { form: "parameter-gradient"; grads: Map<string, F32> };

/** What one layer's graph returns: new parameters and slots, and its unscaled gradient norm. */
interface LayerStep {
  params: Map<string, F32>;
  slots: Map<string, Map<string, F32>>;
  norm: number;
}

/** Options of an {@link OrtLearner}. */
export interface OrtLearnerOptions {
  /** Makes a session from graph bytes (onnxruntime-node's or -web's); one per graph used. */
  sessionFactory: SessionFactory;
  /** Seeds the initial adapters exactly as the Python learners' seed does (default 0); null
   * starts from zeros, for a learner whose state is loaded right after (`loadBytes`). */
  seed?: number | bigint | null;
  /** Adaptation interval I: buffer I chunks, then one step on all of them (default 1). */
  interval?: number;
  /** `{layer: {param: array}}` to start from instead of the seeded adapters. */
  initialState?: ReadonlyMap<string, ReadonlyMap<string, NdArray>>;
}

/** Metrics of one `fit`: `stepped`, `rows`, `loss`, and when it stepped `grad_norm` and `lr`. */
export type FitMetrics = Record<string, number>;

/** Zero float32 parameters of the given shapes: a placeholder state, replaced by a load. */
function zeroState(shapes: ReadonlyMap<string, Shapes>): Map<string, Map<string, NdArray>> {
  return new Map([...shapes].map(([layer, params]) => [layer, new Map([...params].map(([p, shape]) => [p, {
    dtype: "float32" as const, shape, data: new Float32Array(shape.reduce((n, d) => n * d, 1)),
  }]))]));
}

function copyF32(array: F32): F32 {
  return { dtype: "float32", shape: [...array.shape], data: array.data.slice() };
}

function describeShapes(shapes: ReadonlyMap<string, readonly number[]>): string {
  return `{${[...shapes].map(([k, v]) => `'${k}': ${pyShape(v)}`).join(", ")}}`;
}

/**
 * A client's adapters trained by exported train-step graphs in ONNX Runtime
 * (`cola_fed.edge.ort_learner.OrtLearner`).
 *
 * `graphs` maps graph names (`lowrank-r8-64x64-adamw`, `...-g`, `...-p`) to ONNX bytes; every
 * layer needs its rows graph, and takes the weight-space or parameter-gradient forms only where
 * their graphs are given. Methods that change the learner run one at a time, in call order.
 */
export class OrtLearner<S extends AdapterSpecLike = AdapterSpecLike> {
  readonly layout: Layout;
  readonly specs: Map<string, S>;
  readonly optimizer: OptimizerSpecLike;
  readonly interval: number;
  #step = 0;
  readonly #layers: Map<string, LayerInfo>;
  readonly #shapes: Map<string, Shapes>;
  #params: AdapterStateMap;
  #slots: SlotStateMap;
  #buffer: AdaptationData[] = [];
  readonly #sessions: LazySessions;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(layout: Layout, spec: S | ReadonlyMap<string, S>, optimizer: OptimizerSpecLike,
    graphs: ReadonlyMap<string, Uint8Array>, options: OrtLearnerOptions) {
    const interval = options.interval ?? 1;
    if (!Number.isSafeInteger(interval) || interval < 1) {
      throw new ConfigError(`interval: expected a positive integer, got ${interval}`);
    }
    checkOptimizer(optimizer);
    this.layout = layout;
    this.optimizer = optimizer;
    this.interval = interval;
    this.#layers = layoutIndex(layout);
    this.specs = assignSpecs(layout, spec);
    this.#shapes = stateShapes(this.#layers, this.specs);
    const initial = options.initialState ?? (options.seed === null ? zeroState(this.#shapes)
      : new Map([...initialState(this.#layers, this.specs, options.seed ?? 0)].map(
        ([layer, params]) => [layer, new Map([...params].map(([p, v]) => [p, {
          dtype: "float64" as const, shape: this.#shapes.get(layer)!.get(p)!, data: v,
        }]))],
      )));
    this.#params = this.#checkedParams(initial);
    const slots = slotNames(optimizer.name);
    this.#slots = new Map([...this.#params].map(([layer, params]) => [layer, new Map([...params].map(
      ([p, v]) => [p, new Map(slots.map((s) => [s, zerosF32(v.shape)]))],
    ))]));
    const graphOf = new Map<string, string>();
    for (const [name, layerSpec] of this.specs) {
      const info = this.#layers.get(name)!;
      for (const form of GRAPH_FORMS) {
        const graph = graphName(layerSpec, info.dIn, info.dOut, optimizer.name, optimizer.nesterov, form);
        if (!graphs.has(graph)) {
          if (form === "rows") throw new ConfigError(`no train-step graph '${graph}' for layer '${name}'`);
          continue; // this node then takes rows (or G) for the layer
        }
        graphOf.set(LazySessions.key(name, form), graph);
      }
    }
    const used = new Map([...graphOf.values()].map((graph) => [graph, graphs.get(graph)!]));
    const shapes = this.#shapes;
    const factory = options.sessionFactory;
    this.#sessions = new LazySessions(graphOf, async (layer, graph) => {
      const session = await factory(used.get(graph)!);
      try {
        checkGraph(layer, graph, session, shapes.get(layer)!); // before the graph ever runs
      } catch (err) {
        await session.release().catch(() => undefined);
        throw err;
      }
      return session;
    });
  }

  /** Optimizer steps taken. */
  get step(): number {
    return this.#step;
  }

  /** Chunks buffered towards the next step. */
  get buffered(): number {
    return this.#buffer.length;
  }

  /** `{layer: {param: float32 array}}` (copies): the only thing a client ever returns. */
  adapterState(): AdapterStateMap {
    return new Map([...this.#params].map(([n, ps]) => [n, new Map([...ps].map(([p, v]) => [p, copyF32(v)]))]));
  }

  /** Run `action` after every earlier call that changes the learner. */
  #serial<T>(action: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(action, action);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Buffer one chunk of adaptation data; every `interval` chunks, take one step. A chunk is
   * refused whole (unknown layer: AdapterError; wrong shape, bad row index, non-finite value,
   * stale parameter gradient: GradientError) before anything is kept; a failed step changes
   * nothing. The chunk's arrays are kept while buffered: do not change them.
   */
  fit(data: AdaptationData): Promise<FitMetrics> {
    return this.#serial(async () => {
      await this.#checkChunk(data);
      this.#checkIntervalForms(data);
      const buffered = [...this.#buffer, data];
      let rows = 0;
      for (const name of rowLayers(data)) rows += Math.floor(numel(data.grads.get(name)!.shape) / this.#layers.get(name)!.dOut);
      const metrics: FitMetrics = { stepped: 0.0, rows, loss: Number(data.loss) };
      if (buffered.length < this.interval) {
        this.#buffer = buffered;
        return metrics;
      }
      Object.assign(metrics, await this.#takeStep(buffered)); // changes nothing if it throws
      this.#buffer = [];
      return metrics;
    });
  }

  /** Replace the adapters' weights (shapes checked); optimizer state is kept. Refused while a
   * buffered parameter gradient was computed at other weights. */
  loadAdapterState(state: ReadonlyMap<string, ReadonlyMap<string, NdArray>>): Promise<void> {
    return this.#serial(async () => {
      const params = this.#checkedParams(state);
      for (const chunk of this.#buffer) await this.#checkChunk(chunk, params);
      this.#params = params;
    });
  }

  /** Weights, optimizer slots, step and buffered chunks (copies of the learner's own arrays). */
  stateDict(): LearnerStateDict {
    return {
      step: this.#step,
      params: this.adapterState(),
      slots: new Map([...this.#slots].map(([n, ps]) => [n, new Map([...ps].map(([p, ss]) => [p,
        new Map([...ss].map(([s, v]) => [s, copyF32(v)]))]))])),
      buffer: this.#buffer.map(bufferedParts),
    };
  }

  /** Restore a {@link stateDict} of either backend; checked before anything changes
   * (AdapterError). */
  loadStateDict(state: LearnerStateDict): Promise<void> {
    return this.#serial(() => this.#loadStateDict(state));
  }

  /** The state as one safetensors blob, the Python learners' format (`to_bytes`). */
  toBytes(): Uint8Array {
    return stateToBytes(this.stateDict());
  }

  /** Restore a {@link toBytes} blob of either backend, the Python node's included (AdapterError). */
  loadBytes(blob: Uint8Array): Promise<void> {
    return this.#serial(() => this.#loadStateDict(stateFromBytes(blob)));
  }

  /** Release the ONNX Runtime sessions (a later step creates them again). */
  release(): Promise<void> {
    return this.#serial(() => this.#sessions.release());
  }

  // ------------------------------------------------------------------------------------------
  // one step

  async #takeStep(buffered: AdaptationData[]): Promise<FitMetrics> {
    const hyper = hyperAt(this.optimizer, this.#step + 1);
    const layers = [...this.#params.keys()].filter((n) => buffered.some((c) => layerNames(c).includes(n)));
    const run = async (scale: number): Promise<Map<string, LayerStep>> => {
      const results = new Map<string, LayerStep>();
      for (const name of layers) results.set(name, await this.#stepLayer(name, this.#inputs(name, buffered), hyper, scale));
      return results;
    };
    let results = await run(1.0);
    let squares = 0;
    for (const result of results.values()) squares += result.norm * result.norm;
    const norm = Math.sqrt(squares);
    const coef = clipCoefficient(this.optimizer, norm);
    if (coef < 1.0) results = await run(coef);
    for (const [name, { params, slots }] of results) {
      this.#params.set(name, params);
      this.#slots.set(name, slots);
    }
    this.#step += 1;
    return { stepped: 1.0, grad_norm: norm, lr: hyper.lr };
  }

  /** One optimizer step of layer `name` through its graph, gradient scaled by `gradScale`. */
  async #stepLayer(name: string, inputs: LayerInputs, hyper: Hyper, gradScale: number): Promise<LayerStep> {
    const scalar = (v: number): Tensor => new Tensor("float32", Float32Array.of(v), []);
    const tensor = (a: F32): Tensor => new Tensor("float32", a.data, [...a.shape]);
    const feeds: Record<string, Tensor> = {};
    for (const key of HYPER_PARAMETERS) feeds[key] = scalar(hyper[key]);
    feeds[GRAD_SCALE] = scalar(gradScale);
    if (inputs.form === "parameter-gradient") {
      for (const [p, g] of inputs.grads) feeds[`grad.${p}`] = tensor(g);
    } else if (inputs.form === "weight-gradient") {
      feeds.g = tensor(inputs.g);
      feeds.g_bias = tensor(inputs.gBias);
    } else {
      feeds.x = tensor(inputs.x);
      feeds.d = tensor(inputs.d);
    }
    const params = this.#params.get(name)!;
    const slots = this.#slots.get(name)!;
    for (const [p, value] of params) {
      feeds[p] = tensor(value);
      for (const [s, slot] of slots.get(p)!) feeds[`${p}.${s}`] = tensor(slot);
    }
    const session = await this.#sessions.get(name, inputs.form);
    const out = await session.run(feeds);
    const read = (key: string, shape: readonly number[]): F32 => {
      const value = out[key];
      if (value === undefined || value.type !== "float32" || !sameShape(value.dims, shape)) {
        throw new AdapterError(`graph of layer '${name}': output '${key}' is not float32 ${pyShape(shape)}`);
      }
      return { dtype: "float32", shape: [...shape], data: Float32Array.from(value.data as Float32Array) };
    };
    const newParams = new Map<string, F32>();
    const newSlots = new Map<string, Map<string, F32>>();
    for (const [p, value] of params) {
      newParams.set(p, read(`new.${p}`, value.shape));
      newSlots.set(p, new Map([...slots.get(p)!.keys()].map((s) => [s, read(`new.${p}.${s}`, value.shape)])));
    }
    const norm = read("grad_norm", []).data[0]!;
    return { params: newParams, slots: newSlots, norm };
  }

  /**
   * Layer `name`'s data in `chunks` for one step (`_inputs`): the sum of its parameter
   * gradients (float64, then float32); else, when no chunk carries it in weight-space form, its
   * rows gathered and (convolutions) unfolded; else the float64 sum of every chunk's `G` and
   * `g_bias` (rows turned into theirs), rounded once to float32.
   */
  #inputs(name: string, chunks: AdaptationData[]): LayerInputs {
    if (chunks.some((c) => c.paramGrads.has(name))) {
      const grads = chunks.filter((c) => c.paramGrads.has(name)).map((c) => c.paramGrads.get(name)!);
      const out = new Map<string, F32>();
      for (const [p, shape] of this.#shapes.get(name)!) {
        const sum = new Float64Array(numel(shape));
        for (const g of grads) {
          const values = toNumbers(g.get(p)!);
          for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + values[i]!;
        }
        out.set(p, { dtype: "float32", shape: [...shape], data: Float32Array.from(sum) });
      }
      return { form: "parameter-gradient", grads: out };
    }
    const info = this.#layers.get(name)!;
    if (!chunks.some((c) => c.weightGrads.has(name))) {
      const parts = chunks.filter((c) => c.grads.has(name)).map((c) => toRows(info, ...layerRows(c, name)));
      return { form: "rows", x: concatRows(parts.map((p) => p[0])), d: concatRows(parts.map((p) => p[1])) };
    }
    const g = new Float64Array(info.dOut * info.dIn);
    const gBias = new Float64Array(info.dOut);
    for (const chunk of chunks) {
      let part: [Float64Array, Float64Array];
      const pair = chunk.weightGrads.get(name);
      if (pair !== undefined) {
        part = [toNumbers(pair[0]), toNumbers(pair[1])];
      } else if (chunk.grads.has(name)) {
        part = weightGradient(info, ...toRows(info, ...layerRows(chunk, name)));
      } else {
        continue;
      }
      for (let i = 0; i < g.length; i++) g[i] = g[i]! + part[0][i]!;
      for (let i = 0; i < gBias.length; i++) gBias[i] = gBias[i]! + part[1][i]!;
    }
    return {
      form: "weight-gradient",
      g: { dtype: "float32", shape: [info.dOut, info.dIn], data: Float32Array.from(g) },
      gBias: { dtype: "float32", shape: [info.dOut], data: Float32Array.from(gBias) },
    };
  }

  // ------------------------------------------------------------------------------------------
  // checks

  /** Refuse a chunk with unknown layers, wrong shapes, bad row indices or non-finite values,
   * before anything is kept; a parameter gradient must have been computed at `params`
   * (default: the current parameters). (`_check_chunk`) */
  async #checkChunk(data: AdaptationData, params?: AdapterStateMap): Promise<void> {
    const names = layerNames(data);
    for (const name of names) {
      if (!this.#params.has(name)) {
        throw new AdapterError(`adaptation data for '${name}', which this learner does not adapt; it adapts ${JSON.stringify([...this.#params.keys()].sort())}`);
      }
    }
    if (names.length !== new Set(names).size) throw new GradientError("a layer is carried in more than one form");
    for (const [name, pair] of data.weightGrads) this.#checkWeightGradient(name, pair);
    for (const [name, grads] of data.paramGrads) {
      await this.#checkParameterGradient(name, grads, data.paramAt.get(name), (params ?? this.#params).get(name)!);
    }
    for (const name of rowLayers(data)) {
      const source = data.inputOf.get(name);
      const x = source === undefined ? undefined : data.inputs.get(source);
      if (x === undefined) throw new GradientError(`layer '${name}': its input rows are missing`);
      const d = data.grads.get(name)!;
      const rows = data.rows.get(name) ?? null;
      const error = shapeError(this.#layers.get(name)!, x.shape, d.shape, rows !== null);
      if (error !== null) throw new GradientError(error);
      if (rows !== null) {
        const n = d.shape[0]!;
        let bad = !(rows.shape.length === 1 && rows.shape[0] === n) || !isIntegerArray(rows);
        if (!bad && n > 0) {
          const values = toNumbers(rows);
          bad = values.some((r) => r < 0 || r >= x.shape[0]!);
        }
        if (bad) throw new GradientError(`layer '${name}': row indices do not fit the shared rows`);
      }
    }
    // values last, each array once (layers that share their input share the check)
    const firstReader = new Map<string, string>();
    for (const name of [...rowLayers(data)].reverse()) firstReader.set(data.inputOf.get(name)!, name);
    const checks: [string, string, NdArray][] = [];
    for (const [group, name] of firstReader) checks.push(["x", name, data.inputs.get(group)!]);
    for (const name of rowLayers(data)) checks.push(["d", name, data.grads.get(name)!]);
    for (const [name, pair] of data.weightGrads) {
      checks.push(["G", name, pair[0]], ["g_bias", name, pair[1]]);
    }
    for (const [name, grads] of data.paramGrads) {
      for (const [p, value] of grads) checks.push([`the gradient of ${p}`, name, value]);
    }
    for (const [label, name, value] of checks) {
      if (value.dtype !== "float32") {
        // the wire decodes float32 only; Python would take float64 too (its own tests do)
        throw new GradientError(`layer '${name}': ${label} is ${value.dtype}, expected float32`);
      }
      const bad = countNonFinite(value);
      if (bad) {
        throw new GradientError(`layer '${name}': ${bad} non-finite values in ${label}; the chunk was rejected and the learner is unchanged`);
      }
    }
  }

  /** A layer's parameter gradient sums only with other parameter gradients: within one
   * interval a layer comes in that form in every chunk that carries it, or in none. */
  #checkIntervalForms(data: AdaptationData, buffer: AdaptationData[] = this.#buffer): void {
    const names = layerNames(data);
    for (const chunk of buffer) {
      const carried = new Set(layerNames(chunk));
      for (const name of names) {
        if (carried.has(name) && chunk.paramGrads.has(name) !== data.paramGrads.has(name)) {
          throw new GradientError(`layer '${name}': its parameter gradient and another form of its adaptation data in one interval; the chunk was rejected and the learner is unchanged`);
        }
      }
    }
  }

  async #checkParameterGradient(name: string, grads: ReadonlyMap<string, NdArray>, at: string | undefined,
    params: ReadonlyMap<string, F32>): Promise<void> {
    if (!this.#sessions.has(name, "parameter-gradient")) {
      throw new GradientError(`layer '${name}': this learner cannot step from a parameter gradient (no graph for it); it needs rows`);
    }
    const expected = this.#shapes.get(name)!;
    const fits = grads instanceof Map && grads.size === expected.size
      && [...expected].every(([p, shape]) => grads.has(p) && sameShape(grads.get(p)!.shape, shape));
    if (!fits) throw new GradientError(`layer '${name}': expected the gradient of parameters ${describeShapes(expected)}`);
    const held = await parameterDigest(params);
    if (at !== held) {
      throw new GradientError(
        `layer '${name}': the parameter gradient was computed at other adapters (${String(at).slice(0, 12)}...) than ` +
        `this learner holds (${held.slice(0, 12)}...): a stale or replayed gradient, or the server and this node disagree ` +
        "about its state. The chunk was rejected and the learner is unchanged; a server that sends rows " +
        '(wire.form = "rows") avoids the question',
      );
    }
  }

  #checkWeightGradient(name: string, pair: readonly NdArray[]): void {
    if (!this.#sessions.has(name, "weight-gradient")) {
      throw new GradientError(`layer '${name}': this learner does not learn its '${this.specs.get(name)!.kind}' adapter from the weight-space gradient; it needs rows`);
    }
    const info = this.#layers.get(name)!;
    if (!Array.isArray(pair) || pair.length !== 2 || !sameShape(pair[0]!.shape, [info.dOut, info.dIn])
      || !sameShape(pair[1]!.shape, [info.dOut])) {
      throw new GradientError(`layer '${name}': expected G [${info.dOut}, ${info.dIn}] and g_bias [${info.dOut}]`);
    }
  }

  /** `state` in float32, refused unless it has exactly this learner's layers and each family's
   * parameter shapes, all finite (`_checked_params`). */
  #checkedParams(state: ReadonlyMap<string, ReadonlyMap<string, NdArray>>): AdapterStateMap {
    const layers = [...this.#shapes.keys()];
    if (!(state instanceof Map) || state.size !== layers.length || !layers.every((n) => state.has(n))) {
      const got = state instanceof Map ? JSON.stringify([...state.keys()].sort()) : typeof state;
      throw new AdapterError(`adapter state has layers ${got}, this learner adapts ${JSON.stringify(layers.slice().sort())}`);
    }
    const checked: AdapterStateMap = new Map();
    for (const [name, expected] of this.#shapes) {
      const raw = state.get(name);
      if (!(raw instanceof Map)) {
        throw new AdapterError(`layer '${name}': the adapter state is not a mapping of parameter names to numeric arrays`);
      }
      const params = new Map([...raw].map(([p, v]) => [p, toFloat32(v as NdArray)]));
      const same = params.size === expected.size && [...expected].every(([p, shape]) => params.has(p) && sameShape(params.get(p)!.shape, shape));
      if (!same) {
        const got = new Map([...params].map(([p, v]) => [p, v.shape]));
        throw new AdapterError(`layer '${name}': a '${this.specs.get(name)!.kind}' adapter has parameters ${describeShapes(expected)}, got ${describeShapes(got)}`);
      }
      if ([...params.values()].some((v) => countNonFinite(v) > 0)) {
        throw new AdapterError(`layer '${name}': the adapter state is not finite`);
      }
      // the family's order, as Python's dict comprehension over the state keeps the state's
      checked.set(name, new Map([...expected.keys()].map((p) => [p, params.get(p)!])));
    }
    return checked;
  }

  /** Optimizer state for every parameter, with exactly the optimizer's slots of its shape, finite
   * and with no negative second moment (`_checked_slots`). */
  #checkedSlots(slots: LearnerStateDict["slots"]): SlotStateMap {
    const names = slotNames(this.optimizer.name);
    const checked: SlotStateMap = new Map();
    for (const [layer, shapes] of this.#shapes) {
      const perParam = new Map<string, Map<string, F32>>();
      for (const [param, shape] of shapes) {
        let got: Map<string, NdArray> = new Map(slots.get(layer)?.get(param) ?? []);
        if (got.size === 0 && this.optimizer.name === "sgd" && this.optimizer.momentum === 0) {
          got = new Map([["momentum_buffer", zerosF32(shape)]]);
        }
        const values = new Map([...got].map(([s, v]) => [s, toFloat32(v)]));
        if (values.size !== names.length || !names.every((s) => values.has(s)) || [...values.values()].some((v) => !sameShape(v.shape, shape))) {
          throw new AdapterError(`learner state: optimizer slots of '${layer}'/'${param}' do not match a '${this.optimizer.name}' optimizer`);
        }
        const negative = values.get("exp_avg_sq")?.data.some((v) => v < 0) ?? false;
        if ([...values.values()].some((v) => countNonFinite(v) > 0) || negative) {
          throw new AdapterError(`learner state: optimizer slots of '${layer}'/'${param}' are not finite, or a second moment is negative`);
        }
        perParam.set(param, new Map(names.map((s) => [s, values.get(s)!])));
      }
      checked.set(layer, perParam);
    }
    return checked;
  }

  async #loadStateDict(state: LearnerStateDict): Promise<void> {
    const params = this.#checkedParams(state.params);
    const slots = this.#checkedSlots(state.slots);
    const step = state.step;
    if (!Number.isSafeInteger(step) || step < 0 || step >= 2 ** 53) {
      throw new AdapterError(`learner state: step must be an integer in [0, 2^53), got ${String(step).slice(0, 40)}`);
    }
    const buffer = state.buffer.map(chunkFromParts);
    if (buffer.length >= this.interval) {
      throw new AdapterError(`learner state: ${buffer.length} buffered chunks, but this learner steps every ${this.interval}`);
    }
    for (let i = 0; i < buffer.length; i++) {
      try {
        await this.#checkChunk(buffer[i]!, params);
        this.#checkIntervalForms(buffer[i]!, buffer.slice(0, i));
      } catch (err) {
        if (err instanceof GradientError) {
          throw new AdapterError(`learner state: buffered chunk ${i} does not fit the saved adapters (${err.message})`);
        }
        throw err;
      }
    }
    this.#params = params;
    this.#slots = slots;
    this.#step = step;
    this.#buffer = buffer;
  }
}

/** Rows of several parts, one after the other (`np.concatenate`). */
function concatRows(parts: F32[]): F32 {
  if (parts.length === 1) return parts[0]!;
  const width = parts[0]!.shape[1]!;
  const data = new Float32Array(parts.reduce((n, p) => n + p.data.length, 0));
  let at = 0;
  for (const part of parts) {
    data.set(part.data, at);
    at += part.data.length;
  }
  return { dtype: "float32", shape: [data.length / width, width], data };
}

/** `(G = d^T x, sum of d's rows)` of rows, in float64 (`weight_gradient` on float64 data). */
function weightGradient(info: LayerInfo, x: F32, d: F32): [Float64Array, Float64Array] {
  const n = d.shape[0]!;
  const g = new Float64Array(info.dOut * info.dIn);
  const gBias = new Float64Array(info.dOut);
  for (let r = 0; r < n; r++) {
    const xRow = r * info.dIn;
    const dRow = r * info.dOut;
    for (let o = 0; o < info.dOut; o++) {
      const dv = d.data[dRow + o]!;
      gBias[o] = gBias[o]! + dv;
      if (dv === 0) continue; // adds exact zeros (x is finite: checked)
      const at = o * info.dIn;
      for (let i = 0; i < info.dIn; i++) g[at + i] = g[at + i]! + dv * x.data[xRow + i]!;
    }
  }
  return [g, gBias];
}

/** One buffered chunk as saved (`_buffered`): per layer its rows (`x`, `d`), `g`, `gb`, or its
 * parameter gradient (`pg.<param>`) and the digest it was computed at (`at`, 32 bytes). */
function bufferedParts(chunk: AdaptationData): Map<string, Map<string, NdArray>> {
  const saved = new Map<string, Map<string, NdArray>>();
  for (const name of rowLayers(chunk)) {
    const [x, d] = layerRows(chunk, name);
    saved.set(name, new Map([["x", x], ["d", d]]));
  }
  for (const [name, [g, gb]] of chunk.weightGrads) saved.set(name, new Map([["g", g], ["gb", gb]]));
  for (const [name, grads] of chunk.paramGrads) {
    const at = fromHex(chunk.paramAt.get(name)!);
    const parts = new Map<string, NdArray>([["at", { dtype: "uint8", shape: [at.length], data: at }]]);
    for (const [p, v] of grads) parts.set(`${PARAM_PREFIX}${p}`, v);
    saved.set(name, parts);
  }
  return saved;
}

/** The chunk {@link bufferedParts} saved (`_chunk`); float32 arrays only (what both learners
 * save), else AdapterError. */
function chunkFromParts(saved: Map<string, Map<string, NdArray>>): AdaptationData {
  const f32 = (value: NdArray | undefined): F32 => {
    if (value === undefined || value.dtype !== "float32") throw new AdapterError("learner state: a buffered chunk is malformed");
    return value as F32;
  };
  const data: AdaptationData = {
    inputs: new Map(), grads: new Map(), inputOf: new Map(), rows: new Map(), loss: NaN, numSamples: 0,
    weightGrads: new Map(), paramGrads: new Map(), paramAt: new Map(),
  };
  for (const [name, parts] of saved) {
    if (parts.has("x")) {
      data.inputs.set(name, f32(parts.get("x")));
      data.grads.set(name, f32(parts.get("d")));
      data.inputOf.set(name, name);
    }
  }
  for (const [name, parts] of saved) {
    if (parts.has("g")) data.weightGrads.set(name, [f32(parts.get("g")), f32(parts.get("gb"))]);
  }
  for (const [name, parts] of saved) {
    if (!parts.has("at")) continue;
    const grads = new Map<string, F32>();
    for (const [key, value] of parts) if (key !== "at") grads.set(key.slice(PARAM_PREFIX.length), f32(value));
    data.paramGrads.set(name, grads);
    data.paramAt.set(name, toHex(parts.get("at")!.data as Uint8Array));
  }
  return data;
}

