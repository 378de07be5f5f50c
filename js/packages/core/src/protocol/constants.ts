/**
 * The round protocol's names and bounds (protocol v4; `cola_fed/federation/protocol.py`):
 * record names of a Flower RecordDict, the message kinds bound into every seal, the parts of
 * a sealed bundle and the caps every decoder checks.
 */

/** ConfigRecord: what travels in the clear. */
export const CLEAR = "cola";
/** ConfigRecord: train-step graphs by name (hello only). */
export const GRAPHS = "graphs";
/** ConfigRecord: the task's node files by name (hello only). */
export const FILES = "files";
/** ArrayRecord: one sealed blob. */
export const SEALED = "sealed";

/** Files a task's node side may need from the server (`Task.node_files`). */
export const TASK_FILES: readonly string[] = ["tokenizer.json"];
export const MAX_TASK_FILE_BYTES = 64 * 2 ** 20;

/** Message kinds, bound into every seal. */
export const KIND_HELLO = "hello";
export const KIND_TRAIN = "train";

/** Parts of a sealed bundle. */
export const PART_CONTROL = "control";
export const PART_ADAPTERS = "adapters";
/** Upload mode: the node's whole training split. */
export const PART_TRAIN = "train";

/** The name of the `i`-th batch part (`batch_part`). */
export function batchPart(i: number): string {
  return `batch${i}`;
}

/** The name of the `i`-th held-out batch part (`eval_part`). */
export function evalPart(i: number): string {
  return `eval${i}`;
}

/** The name of the `i`-th adaptation-data part (`adaptation_part`). */
export function adaptationPart(i: number): string {
  return `adaptation${i}`;
}

export const MAX_TRANSCRIPT_BYTES = 2 ** 20;
export const MAX_CONTROL_BYTES = 2 ** 14;
export const MAX_GRAPHS = 64;
export const MAX_PARTITION_ID = 2 ** 31 - 1;
/** Learner states a node keeps (the server holds one of the newest few). */
export const MAX_NODE_STATES = 16;
/** The protocol version this node speaks (`cola_fed.wire.crypto.PROTOCOL_VERSION`). */
export const PROTOCOL = 4;
/** Bytes of an Ed25519 signature (`SIGNATURE_BYTES`). */
export const SIGNATURE_BYTES = 64;

/** The run's training backends (`cola_fed.config.BACKENDS`). */
export const BACKENDS: readonly string[] = ["torch", "onnx"];
/** How a node's data travels (`cola_fed.config.DATA_MODES`). */
export const DATA_MODES: readonly string[] = ["stream", "upload"];
/** How the task's data is split (`cola_fed.config.PARTITIONERS`). */
export const PARTITIONERS: readonly string[] = ["iid", "dirichlet"];
/** The module types a layer can be (`cola_fed.gl.layout.MODULE_TYPES`). */
export const MODULE_TYPES: readonly string[] = ["linear", "conv1d", "conv2d"];
/** Hidden activations of an MLP adapter (`cola_fed.adapters.spec.ACTIVATIONS`). */
export const ACTIVATIONS: readonly string[] = ["relu", "gelu", "tanh", "silu"];
/** Optimizers (`cola_fed.gl.optim_spec.OPTIMIZERS`). */
export const OPTIMIZERS: readonly string[] = ["adamw", "sgd"];
