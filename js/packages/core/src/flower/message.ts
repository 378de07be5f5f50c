/**
 * Flower 1.42's `Message` as a plain value, and the reply a node sends to an instruction.
 *
 * Port of `flwr/app/message/message.py` (`Message(content | error, reply_to=...)`) with the rules
 * the SuperLink checks on every reply (`flwr/server/utils/validator.py`): a reply carries its own
 * object id as `message_id`, the instruction's id as `reply_to_message_id`, its own node as
 * source, the SuperLink (node 1) as destination, the instruction's run, group and type, a
 * `created_at` in unix seconds and a TTL that does not outlive the instruction; and either
 * content or an error, never both.
 */
import { FleetError } from "../errors.js";
import type { RecordDict } from "./records.js";
import { encodeMessage } from "./objects.js";

/** The SuperLink's own node id (`flwr.common.constant.SUPERLINK_NODE_ID`). */
export const SUPERLINK_NODE_ID = 1n;

/** Seconds a reply's TTL may exceed what is left of the instruction's (`MESSAGE_TTL_TOLERANCE`). */
export const MESSAGE_TTL_TOLERANCE = 0.1;

/** Earliest `created_at` the SuperLink accepts: 28 February 2025 00:00 UTC (validator.py). */
export const MIN_CREATED_AT = 1740700800.0;

/** A message's metadata (`flwr.proto.Metadata`); 64-bit ids are `bigint`, times unix seconds. */
export interface FlowerMetadata {
  runId: bigint;
  /** The message's object id (SHA-256 hex of its deflated `Message` object); "" before encoding. */
  messageId: string;
  srcNodeId: bigint;
  dstNodeId: bigint;
  /** The instruction's message id for a reply, "" for an instruction. */
  replyToMessageId: string;
  groupId: string;
  /** Time to live in seconds (double). */
  ttl: number;
  messageType: string;
  /** Unix seconds (double) when the message was created. */
  createdAt: number;
  /** Experimental task ids of Flower 1.42 (`optional uint64`); absent when unset. */
  srcTaskId?: bigint;
  dstTaskId?: bigint;
}

/** An error a message carries instead of content (`flwr.app.Error`). */
export interface MessageError {
  code: bigint;
  reason: string;
}

/** A Flower message: metadata plus either content or an error. */
export interface FlowerMessage {
  metadata: FlowerMetadata;
  content?: RecordDict;
  error?: MessageError;
}

/** What a reply carries: content or an error (exactly one). */
export type ReplyBody = { content: RecordDict; error?: undefined } | { error: MessageError; content?: undefined };

/** Options of {@link makeReply}: the clock (unix seconds) and an explicit TTL. */
export interface ReplyOptions {
  /** Unix seconds now (default: the system clock). */
  now?: number;
  /** Requested TTL in seconds; capped to what is left of the instruction's, as Flower does. */
  ttl?: number;
}

/**
 * The reply to `instruction`, as `Message(content | error, reply_to=instruction)` builds it,
 * with its `message_id` set to the reply's object id (so it can be pushed as is).
 * Throws FleetError when the instruction cannot be replied to (no message id, no run, an
 * expired TTL), so that a node never pushes what the SuperLink's validator would refuse.
 */
export async function makeReply(instruction: FlowerMessage, body: ReplyBody, options: ReplyOptions = {}): Promise<FlowerMessage> {
  const hasContent = body.content !== undefined;
  const hasError = body.error !== undefined;
  if (hasContent === hasError) throw new FleetError("a reply carries content or an error (exactly one)");
  const meta = instruction.metadata;
  if (meta.messageId === "") throw new FleetError("cannot reply to an instruction without a message id");
  const current = options.now ?? Date.now() / 1000;
  const ttl = limitReplyTtl(current, options.ttl, meta);
  if (!(ttl > 0)) {
    throw new FleetError(`the instruction ${meta.messageId} has expired (created ${meta.createdAt}, ttl ${meta.ttl}); no reply can be sent`);
  }
  const metadata: FlowerMetadata = {
    runId: meta.runId,
    messageId: "",
    srcNodeId: meta.dstNodeId,
    dstNodeId: meta.srcNodeId,
    replyToMessageId: meta.messageId,
    groupId: meta.groupId,
    ttl,
    messageType: meta.messageType,
    createdAt: current,
  };
  if (meta.dstTaskId !== undefined) metadata.srcTaskId = meta.dstTaskId;
  if (meta.srcTaskId !== undefined) metadata.dstTaskId = meta.srcTaskId;
  const reply: FlowerMessage = hasContent ? { metadata, content: body.content } : { metadata, error: body.error };
  const encoded = await encodeMessage(reply);
  metadata.messageId = encoded.messageId;
  const problems = validateReply(reply, current);
  if (problems.length > 0) throw new FleetError(`the reply would be refused by the SuperLink: ${problems.join("; ")}`);
  return reply;
}

/**
 * Port of `_limit_reply_ttl`: the instruction's remaining lifetime, or a requested TTL when it
 * does not exceed that by more than {@link MESSAGE_TTL_TOLERANCE} (Python's `reply_ttl or max`).
 */
export function limitReplyTtl(current: number, requested: number | undefined, instruction: FlowerMetadata): number {
  const maxAllowed = instruction.createdAt + instruction.ttl - current;
  if (requested !== undefined && requested - maxAllowed > MESSAGE_TTL_TOLERANCE) return maxAllowed;
  return requested !== undefined && requested !== 0 ? requested : maxAllowed;
}

/**
 * Port of `validate_message(message, is_reply_message=True)`: the list of reasons the SuperLink
 * would refuse this reply (empty when it is acceptable).
 */
export function validateReply(message: FlowerMessage, now: number = Date.now() / 1000): string[] {
  const errors: string[] = [];
  const m = message.metadata;
  if (m.messageId === "") errors.push("empty `metadata.message_id`");
  if (!(m.createdAt >= MIN_CREATED_AT)) {
    errors.push("`metadata.created_at` must be a float that records the unix timestamp in seconds when the message was created.");
  }
  if (!(m.ttl > 0)) errors.push("`metadata.ttl` must be higher than zero");
  if (m.createdAt + m.ttl <= now) errors.push("Message TTL has expired");
  if (m.srcNodeId === 0n) errors.push("`metadata.src_node_id` is not set.");
  if (m.dstNodeId === 0n) errors.push("`metadata.dst_node_id` is not set.");
  if (m.messageType === "") errors.push("`metadata.message_type` MUST be set");
  if ((message.content !== undefined) === (message.error !== undefined)) {
    errors.push("Either message `content` or `error` MUST be set (but not both)");
  }
  if (m.replyToMessageId === "") errors.push("`metadata.reply_to_message_id` MUST be set.");
  if (m.srcNodeId === SUPERLINK_NODE_ID) errors.push(`\`metadata.src_node_id\` is ${SUPERLINK_NODE_ID} (SuperLink node ID)`);
  if (m.dstNodeId !== SUPERLINK_NODE_ID) errors.push(`\`metadata.dst_node_id\` is not ${SUPERLINK_NODE_ID} (SuperLink node ID)`);
  return errors;
}
