/**
 * Names and keys of the exported train-step graphs (port of `cola_fed/edge/graphs.py`): which
 * graph each adapted layer trains with, for each form of adaptation data the server may send,
 * and the content hash graphs are listed and cached under.
 */

import { defaultCryptoProvider } from "../crypto/provider.js";
import { compareCodePoints } from "../json/python-json.js";
import { assignSpecs } from "../learner/assign.js";
import { familyOf } from "../learner/families.js";
import { graphName, type GraphForm } from "../learner/sessions.js";
import { toHex } from "../util/bytes.js";
import type { Layout } from "../wire/layout.js";
import { layoutIndex } from "../wire/layout.js";
import { sameSpec, type AdapterSpec } from "../protocol/adapter-spec.js";
import type { OptimizerSpec } from "../protocol/optimizer-spec.js";

/** What one graph is specialised for: adapter family and size, layer shape, optimizer, form. */
export interface GraphKey {
  readonly spec: AdapterSpec;
  readonly dIn: number;
  readonly dOut: number;
  /** "adamw" or "sgd" */
  readonly optimizer: string;
  readonly nesterov: boolean;
  readonly form: GraphForm;
  /** e.g. `lowrank-r8-64x64-adamw-p` (`GraphKey.name`) */
  readonly name: string;
}

/** Which forms of adaptation data `graph_keys` is asked about: `wire.form`, or "all". */
export type FormRequest = "rows" | "auto" | "weight-gradient" | "parameter-gradient" | "all";

/**
 * `name -> key` of every graph needed to train `layout` under any of `specs` (one per kind of
 * node) from the forms that `form` may send: rows always; the parameter gradient under `auto`,
 * `parameter-gradient` and `all`; the weight-space gradient under `weight-gradient` and `all`,
 * and under `auto` where it is smaller than the parameters (families that learn from it).
 * Sorted by name. Two different keys with one name throw (Python's ValueError: a family's
 * graph tag must tell its specs apart).
 */
export function graphKeys(layout: Layout, specs: Iterable<ReadonlyMap<string, AdapterSpec>>, optimizer: OptimizerSpec,
  form: FormRequest = "rows"): Map<string, GraphKey> {
  const keys = new Map<string, GraphKey>();
  const index = layoutIndex(layout);
  for (const spec of specs) {
    for (const [layer, layerSpec] of assignSpecs(layout, spec)) {
      const info = index.get(layer)!;
      for (const keyForm of graphForms(form, layerSpec, info.dIn, info.dOut)) {
        const key: GraphKey = {
          spec: layerSpec, dIn: info.dIn, dOut: info.dOut, optimizer: optimizer.name, nesterov: optimizer.nesterov,
          form: keyForm, name: graphName(layerSpec, info.dIn, info.dOut, optimizer.name, optimizer.nesterov, keyForm),
        };
        const known = keys.get(key.name);
        if (known === undefined) keys.set(key.name, key);
        else if (!sameKey(known, key)) {
          throw new Error(`adapter family '${layerSpec.kind}': two specs share the graph name '${key.name}'; its `
            + "graph_tag must tell them apart");
        }
      }
    }
  }
  return new Map([...keys].sort((a, b) => compareCodePoints(a[0], b[0])));
}

function sameKey(a: GraphKey, b: GraphKey): boolean {
  return sameSpec(a.spec, b.spec) && a.dIn === b.dIn && a.dOut === b.dOut && a.optimizer === b.optimizer
    && a.nesterov === b.nesterov && a.form === b.form;
}

/** `_graph_forms`: the forms one layer may receive under `form`. */
function graphForms(form: FormRequest, spec: AdapterSpec, dIn: number, dOut: number): GraphForm[] {
  const family = familyOf(spec.kind);
  const forms: GraphForm[] = ["rows"];
  if (form === "auto" || form === "parameter-gradient" || form === "all") forms.push("parameter-gradient");
  if (family.weightGradient) {
    let parameters = 0n;
    for (const shape of family.paramShapes(spec, dIn, dOut).values()) {
      parameters += shape.reduce((n, d) => n * BigInt(d), 1n);
    }
    if (form === "weight-gradient" || form === "all"
      || (form === "auto" && BigInt(dOut) * BigInt(dIn + 1) < parameters)) forms.push("weight-gradient");
  }
  return forms;
}

/** SHA-256 of a graph's (or a task file's) bytes, lower-case hex (`content_hash`): how graphs
 * are named in plans and caches. */
export async function contentHash(data: Uint8Array): Promise<string> {
  return toHex(await defaultCryptoProvider().sha256(data));
}
