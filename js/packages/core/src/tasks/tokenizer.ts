/**
 * The server-shipped `tokenizer.json`, through `@huggingface/tokenizers` (pure JavaScript, no
 * network: the JSON is handed in). Its token ids equal the Python `tokenizers` library's on the
 * demo data (the conformance vectors check ~200 Rotten Tomatoes snippets and hard cases).
 * Padding and truncation are left to the tasks, as `Tokenizer.no_padding()` /
 * `no_truncation()` leave them in Python: the library ignores the file's own settings.
 */

import { Tokenizer } from "@huggingface/tokenizers";
import { ConfigError } from "../errors.js";

/** One text's encoding: token ids and segment (type) ids, special tokens included if asked. */
export interface TextEncoding {
  ids: number[];
  typeIds: number[];
}

/** A tokenizer read from `tokenizer.json` bytes. */
export class TaskTokenizer {
  private readonly tokenizer: Tokenizer;
  /** Special tokens the single-sequence post-processor puts before and after the text. */
  private readonly specials: { before: number; after: number } | null;

  /** Parse `tokenizer.json` (UTF-8 bytes). Throws {@link ConfigError} if it is no tokenizer. */
  constructor(json: Uint8Array) {
    try {
      const parsed: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
      if (typeof parsed !== "object" || parsed === null || !("model" in parsed)) {
        throw new TypeError("no tokenizer model in the file");
      }
      this.tokenizer = new Tokenizer(parsed, {});
      this.specials = specialsAround((parsed as { post_processor?: unknown }).post_processor);
    } catch (err) {
      throw new ConfigError(`tokenizer.json: not a tokenizer the node can read (${String(err).slice(0, 200)})`);
    }
  }

  /** `Tokenizer.encode(text, add_special_tokens=special)` with no padding or truncation. */
  encode(text: string, special = true): TextEncoding {
    try {
      const encoding = this.tokenizer.encode(text, { add_special_tokens: special,
        return_token_type_ids: true });
      return { ids: encoding.ids, typeIds: encoding.token_type_ids ?? encoding.ids.map(() => 0) };
    } catch (err) {
      throw new ConfigError(`the task's tokenizer failed: ${String(err).slice(0, 200)}`);
    }
  }

  /**
   * `enable_truncation(max_length)` (longest first, stride 0, from the right) on one text:
   * the text's tokens cut so that they and the special tokens fit `maxLength`.
   */
  encodeTruncated(text: string, maxLength: number): TextEncoding {
    const full = this.encode(text, true);
    if (full.ids.length <= maxLength) return full;
    if (this.specials === null) {
      throw new ConfigError("tokenizer.json: its post-processor is not one the node can truncate " +
        "around (TemplateProcessing or BertProcessing)");
    }
    const { before, after } = this.specials;
    const keep = maxLength - before - after;
    if (keep < 0) {
      throw new ConfigError(`task.max-length ${maxLength} is shorter than the tokenizer's ` +
        `${before + after} special tokens`);
    }
    const cut = <T>(values: T[]): T[] =>
      values.slice(0, before + keep).concat(values.slice(values.length - after));
    return { ids: cut(full.ids), typeIds: cut(full.typeIds) };
  }

  /** The id of `token`, if the vocabulary has it. */
  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }
}

/** How many special tokens a post-processor adds before and after a single sequence. */
function specialsAround(processor: unknown): { before: number; after: number } | null {
  if (typeof processor !== "object" || processor === null) return { before: 0, after: 0 };
  const spec = processor as { type?: unknown; single?: unknown };
  if (spec.type === "BertProcessing" || spec.type === "RobertaProcessing") return { before: 1, after: 1 };
  if (spec.type !== "TemplateProcessing" || !Array.isArray(spec.single)) return null;
  const at = spec.single.findIndex((piece) => typeof piece === "object" && piece !== null && "Sequence" in piece);
  if (at < 0) return null;
  return { before: at, after: spec.single.length - at - 1 };
}
