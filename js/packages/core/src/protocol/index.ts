/** The round protocol (protocol v4): every message, part name and field, typed and checked as
 * `cola_fed/federation/protocol.py` checks them. */
export {
  ACTIVATIONS, adaptationPart, BACKENDS, batchPart, CLEAR, DATA_MODES, evalPart, FILES, GRAPHS, KIND_HELLO, KIND_TRAIN,
  MAX_CONTROL_BYTES, MAX_GRAPHS, MAX_PARTITION_ID, MAX_TASK_FILE_BYTES, MAX_TRANSCRIPT_BYTES, MODULE_TYPES, OPTIMIZERS,
  PART_ADAPTERS, PART_CONTROL, PART_TRAIN, PARTITIONERS, PROTOCOL, SEALED, TASK_FILES,
} from "./constants.js";
export * from "./adapter-spec.js";
export * from "./optimizer-spec.js";
export * from "./task-config.js";
export * from "./plan.js";
export * from "./hello.js";
export * from "./control.js";
export * from "./caps.js";
export * from "./bundle.js";
export {
  acceptHello, checkHello, checkNotReplayed, graphsNeeded, receiveFiles, receiveGraphs, type AcceptedHello,
  type AcceptedHelloResult, type HelloAcceptContext, type HelloCheckOptions, type HelloHistory,
} from "./hello-check.js";
