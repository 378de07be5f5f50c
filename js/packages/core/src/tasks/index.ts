/**
 * The node side of the tasks: a node's own data file in, {@link ClientData} out, exactly as the
 * Python node builds it for a node with a `data-path` (`cola_fed/federation/client.py`
 * `_client_data`: the whole file is partition 0 of 1).
 */

import { ConfigError } from "../errors.js";
import { type ClientData } from "./client-data.js";
import { DIGITS, MNIST, numericClientData } from "./numeric.js";
import { sequenceClassificationClientData, textClassificationClientData, type TextTaskConfig } from "./text.js";
import { TaskTokenizer } from "./tokenizer.js";

/** The plan's task settings the node side reads (camelCase of `cola_fed.config.TaskConfig`). */
export interface TaskConfigLike extends Omit<TextTaskConfig, "maxLength"> {
  name: string;
  maxLength?: number;
}

/** Options of {@link clientDataFor}. */
export interface ClientDataOptions {
  /** The data file's name or path, for errors (default: `data-path`). */
  dataName?: string;
}

function checkSplitConfig(task: TaskConfigLike): void {
  for (const [key, value, min] of [["task.batch-size", task.batchSize, 1],
    ["task.eval-batches", task.evalBatches, 1], ["task.server-test-size", task.serverTestSize, 0],
    ["task.seed", task.seed, 0]] as const) {
    if (!Number.isSafeInteger(value) || value < min) {
      throw new ConfigError(`${key}: expected an integer >= ${min}, got ${value}`);
    }
  }
}

/**
 * This node's data for the plan's task: `dataText` is the node's own file (CSV), `files` the
 * verified node files the server shipped (e.g. `tokenizer.json`). Throws {@link ConfigError}
 * for a task the JavaScript node does not run or data that does not fit it.
 */
export function clientDataFor(task: TaskConfigLike, files: Map<string, Uint8Array>, dataText: string,
  options: ClientDataOptions = {}): ClientData {
  checkSplitConfig(task);
  const what = `task.data-path ${options.dataName ?? "data-path"}`;
  const tokenizer = (): TaskTokenizer => {
    const json = files.get("tokenizer.json");
    if (json === undefined) {
      throw new ConfigError(`task '${task.name}': the node file 'tokenizer.json' is missing (the ` +
        "server ships it at hello)");
    }
    return new TaskTokenizer(json);
  };
  const text = (): TextTaskConfig => {
    if (!Number.isSafeInteger(task.maxLength) || (task.maxLength ?? 0) < 1) {
      throw new ConfigError(`task.max-length: expected an integer >= 1, got ${task.maxLength}`);
    }
    return { ...task, maxLength: task.maxLength as number };
  };
  switch (task.name) {
    case "text-classification":
      return textClassificationClientData(dataText, tokenizer(), text(), what);
    case "sequence-classification":
      return sequenceClassificationClientData(dataText, tokenizer(), text(), what);
    case "digits":
      return numericClientData(DIGITS, dataText, task, what);
    case "mnist":
      return numericClientData(MNIST, dataText, task, what);
    default:
      throw new ConfigError(`task.name: the JavaScript node runs the tasks digits, mnist, ` +
        `text-classification and sequence-classification, not ${JSON.stringify(task.name)}`);
  }
}

export * from "./client-data.js";
export * from "./csv.js";
export * from "./features.js";
export * from "./numeric.js";
export * from "./text.js";
export * from "./tokenizer.js";
