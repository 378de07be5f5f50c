/**
 * The task part of a plan (`cola_fed.config.TaskConfig`, the fields a plan carries), with
 * every check its constructor makes, and the task-name rules of `cola_fed/tasks/registry.py`.
 * Node-local settings (`model`, `data_path`) never travel in a plan.
 */

import { ConfigError } from "../errors.js";
import { PARTITIONERS } from "./constants.js";

/** What is learned, from which local data: the plan's view of the run's task config. */
export interface TaskConfig {
  readonly name: string;
  readonly textColumn: string;
  readonly labelColumn: string;
  readonly promptColumn: string;
  readonly responseColumn: string;
  readonly template: string;
  readonly labelNames: string;
  readonly numLabels: number;
  readonly padId: number;
  readonly eosId: number;
  readonly decoderStartId: number;
  readonly batchSize: number;
  readonly maxLength: number;
  readonly evalBatches: number;
  readonly partitioner: string;
  readonly partitionBy: string;
  readonly dirichletAlpha: number;
  readonly serverTestSize: number;
  readonly seed: number;
}

/** The plan's task fields: wire (Python) name, kind, and the TaskConfig property. */
export const TASK_FIELDS = [
  ["name", "str", "name"], ["text_column", "str", "textColumn"], ["label_column", "str", "labelColumn"],
  ["prompt_column", "str", "promptColumn"], ["response_column", "str", "responseColumn"],
  ["template", "str", "template"], ["label_names", "str", "labelNames"], ["num_labels", "int", "numLabels"],
  ["pad_id", "int", "padId"], ["eos_id", "int", "eosId"], ["decoder_start_id", "int", "decoderStartId"],
  ["batch_size", "int", "batchSize"], ["max_length", "int", "maxLength"], ["eval_batches", "int", "evalBatches"],
  ["partitioner", "str", "partitioner"], ["partition_by", "str", "partitionBy"],
  ["dirichlet_alpha", "float", "dirichletAlpha"], ["server_test_size", "int", "serverTestSize"],
  ["seed", "int", "seed"],
] as const satisfies readonly (readonly [string, "str" | "int" | "float", keyof TaskConfig])[];

/** The task names a Python node registers (`known_tasks()` of cola-fed's built-ins). */
export const BUILT_IN_TASKS: readonly string[] = [
  "byte-lm", "causal-lm", "digits", "mnist", "seq2seq", "sequence-classification", "text-classification",
];

// Python's `\w` on str is Unicode-aware: letters, digits (all numeric characters) and `_`.
const PATH = /^[\p{L}_][\p{L}\p{N}_]*(\.[\p{L}_][\p{L}\p{N}_]*)*:[\p{L}_][\p{L}\p{N}_]*$/u;
const PATH_START_ASCII = /^[A-Za-z_]/;
const NAME = /^[a-z0-9][a-z0-9_-]*$/;

/** Whether `name` is a `package.module:Class` path (`_PATH.fullmatch`). Each dotted part and
 * the class start with an ASCII letter or `_`, as Python's `[A-Za-z_]`. */
export function isTaskPath(name: string): boolean {
  if (!PATH.test(name)) return false;
  const [modules, cls] = name.split(":") as [string, string];
  return [...modules.split("."), cls].every((part) => PATH_START_ASCII.test(part));
}

/** Whether `name` has the form of a task name or a path (`is_task_name`). */
export function isTaskName(name: unknown): boolean {
  return typeof name === "string" && (NAME.test(name) || isTaskPath(name));
}

/**
 * A checked task config (`TaskConfig.__post_init__` for the plan's fields; `rouge_prompts` and
 * `max_new_tokens` keep their defaults 0 and 32, which pass). `knownTasks`: the names this node
 * knows (`check_task_name`: a known name or a path). Throws ConfigError naming the key.
 */
export function taskConfig(task: TaskConfig, knownTasks: readonly string[] = BUILT_IN_TASKS): TaskConfig {
  if (!(isTaskPath(task.name) || knownTasks.includes(task.name))) {
    throw new ConfigError(`task.name: unknown task '${task.name}'; known: ${knownTasks.join(", ")}, or a `
      + "'package.module:Class' path");
  }
  if (!PARTITIONERS.includes(task.partitioner)) {
    throw new ConfigError(`task.partitioner: expected one of ${PARTITIONERS.join(", ")}, got '${task.partitioner}'`);
  }
  for (const [key, value] of [["batch-size", task.batchSize], ["max-length", task.maxLength],
    ["eval-batches", task.evalBatches], ["num-labels", task.numLabels]] as const) {
    if (!Number.isSafeInteger(value) || value < 1) throw new ConfigError(`task.${key}: expected a positive integer, got ${value}`);
  }
  if (!Number.isSafeInteger(task.serverTestSize) || task.serverTestSize < 0) {
    throw new ConfigError(`task.server-test-size: expected an integer >= 0, got ${task.serverTestSize}`);
  }
  for (const [key, value] of [["pad-id", task.padId], ["eos-id", task.eosId],
    ["decoder-start-id", task.decoderStartId]] as const) {
    if (!Number.isSafeInteger(value) || value < -1) {
      throw new ConfigError(`task.${key}: expected a token id >= 0, or -1 for the model's own, got ${value}`);
    }
  }
  if (task.dirichletAlpha <= 0) throw new ConfigError(`task.dirichlet-alpha: must be > 0, got ${task.dirichletAlpha}`);
  return task;
}
