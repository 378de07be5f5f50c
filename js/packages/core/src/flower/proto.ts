/**
 * Flower's and ONNX's protobuf schemas, loaded from the descriptor set that the build takes
 * from the pinned wheels (`js/scripts/descriptors.py`), never written by hand.
 *
 * Messages are built and read through `@bufbuild/protobuf`'s reflection API: `message(name)`
 * gives a schema for `create`, `toBinary` and `fromBinary`; 64-bit integers are `bigint`.
 */
import { createFileRegistry, fromBinary, type DescMessage, type FileRegistry } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { DESCRIPTOR_SET_BASE64 } from "../generated/descriptors.js";
import { base64Decode } from "../util/bytes.js";

let registry: FileRegistry | undefined;

/** The registry of every schema the node uses (built once). */
export function protoRegistry(): FileRegistry {
  registry ??= createFileRegistry(fromBinary(FileDescriptorSetSchema, base64Decode(DESCRIPTOR_SET_BASE64)));
  return registry;
}

/** The schema of a message by its full name, e.g. `flwr.proto.PullMessagesRequest`. */
export function message(name: string): DescMessage {
  const found = protoRegistry().getMessage(name);
  if (found === undefined) throw new Error(`no protobuf message ${name} in the pinned schemas`);
  return found;
}
