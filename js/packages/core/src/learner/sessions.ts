/**
 * Train-step graphs by name and their ONNX Runtime sessions (`cola_fed/edge/graphs.py` and the
 * session half of `cola_fed/edge/ort_learner.py`): which graph a layer runs for each form of
 * adaptation data, created lazily (a round often needs one form of three, and each session
 * costs memory on a small device), shared by every layer of one shape and family, and checked
 * against the layer's parameter shapes before it ever runs.
 */

import type { InferenceSession } from "onnxruntime-common";
import { AdapterError } from "../errors.js";
import { familyOf } from "./families.js";
import type { AdapterSpecLike, Shapes } from "./types.js";

/** The forms of adaptation data a train-step graph takes. */
export type GraphForm = "rows" | "weight-gradient" | "parameter-gradient";
/** Every form, in the order the learner looks for their graphs. */
export const GRAPH_FORMS: readonly GraphForm[] = ["rows", "weight-gradient", "parameter-gradient"];
/** A graph's name ends in its form's suffix (`FORM_SUFFIX`). */
export const FORM_SUFFIX: Record<GraphForm, string> = { rows: "", "weight-gradient": "-g", "parameter-gradient": "-p" };
/** The scalar inputs of every graph after the optimizer's: `grad_scale` (clipping sets it). */
export const GRAD_SCALE = "grad_scale";

/**
 * The name of the graph for one (family and size, layer shape, optimizer, form)
 * (`GraphKey.name`), e.g. `lowrank-r8-64x64-adamw-p`. A convolution's graph is its rows' graph.
 */
export function graphName(spec: AdapterSpecLike, dIn: number, dOut: number, optimizer: string,
  nesterov: boolean, form: GraphForm): string {
  const size = familyOf(spec.kind).graphTag(spec);
  return `${spec.kind}-${size}-${dIn}x${dOut}-${optimizer}${nesterov ? "-nesterov" : ""}${FORM_SUFFIX[form]}`;
}

/** Makes an ONNX Runtime session from a graph's bytes; the runtime supplies it
 * (onnxruntime-node's or onnxruntime-web's `InferenceSession.create` with its options). */
export type SessionFactory = (model: Uint8Array) => Promise<InferenceSession>;

/** Refuse a graph whose parameter inputs are not the family's shapes for `layer` (`_check_graph`). */
export function checkGraph(layer: string, graph: string, session: InferenceSession, shapes: Shapes): void {
  const metadata = (session as Partial<InferenceSession>).inputMetadata;
  if (metadata === undefined) {
    throw new AdapterError(`graph '${graph}': this ONNX Runtime does not report input shapes, so the graph cannot be checked; use onnxruntime 1.22 or newer`);
  }
  const got = new Map<string, readonly (number | string)[]>();
  for (const input of metadata) {
    if (shapes.has(input.name)) got.set(input.name, input.isTensor ? input.shape : []);
  }
  const same = got.size === shapes.size && [...shapes].every(([name, shape]) => {
    const dims = got.get(name);
    return dims !== undefined && dims.length === shape.length && dims.every((d, i) => d === shape[i]);
  });
  if (!same) {
    const show = (m: Map<string, readonly (number | string)[]> | Shapes): string =>
      `{${[...m].map(([k, v]) => `'${k}': [${v.join(", ")}]`).join(", ")}}`;
    throw new AdapterError(`graph '${graph}': parameter inputs ${show(got)}, layer '${layer}' needs ${show(shapes)}`);
  }
}

/**
 * `(layer, form) -> session` for the graphs a learner has, each created on first use and then
 * shared by every key of its graph. `has` asks whether the graph exists and creates nothing; a
 * session that failed to create or check is not kept, so it fails again next time.
 */
export class LazySessions {
  readonly #graphOf: Map<string, string>;
  readonly #make: (layer: string, graph: string) => Promise<InferenceSession>;
  readonly #byGraph = new Map<string, Promise<InferenceSession>>();

  /** `graphOf`: `layer \0 form` keys (see {@link LazySessions.key}) to graph names. */
  constructor(graphOf: Map<string, string>, make: (layer: string, graph: string) => Promise<InferenceSession>) {
    this.#graphOf = graphOf;
    this.#make = make;
  }

  /** The key of one layer and form. */
  static key(layer: string, form: GraphForm): string {
    return `${layer}\u0000${form}`;
  }

  /** Whether layer `layer` has a graph for `form`. */
  has(layer: string, form: GraphForm): boolean {
    return this.#graphOf.has(LazySessions.key(layer, form));
  }

  /** The session of layer `layer`'s graph for `form` (created and checked on first use). */
  get(layer: string, form: GraphForm): Promise<InferenceSession> {
    const graph = this.#graphOf.get(LazySessions.key(layer, form));
    if (graph === undefined) throw new RangeError(`no graph for layer '${layer}' in form ${form}`);
    let session = this.#byGraph.get(graph);
    if (session === undefined) {
      session = this.#make(layer, graph);
      this.#byGraph.set(graph, session);
      session.catch(() => this.#byGraph.delete(graph));
    }
    return session;
  }

  /** Release every session created so far. */
  async release(): Promise<void> {
    const sessions = [...this.#byGraph.values()];
    this.#byGraph.clear();
    for (const session of sessions) {
      try {
        await (await session).release();
      } catch {
        // a session that never opened has nothing to release
      }
    }
  }
}
