/**
 * One error family per concern, named and nested as `cola_fed/errors.py` names them, so that a
 * JavaScript node refuses hostile input with the same class of error as a Python node (the
 * conformance tests compare class names).
 */

/** Base class of every error cola-fed raises on purpose. */
export class ColaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A configuration value is missing, of the wrong type or out of range. */
export class ConfigError extends ColaError {}

/** An adapter state or spec does not fit the layer it is meant for. */
export class AdapterError extends ColaError {}

/** A loss or an adaptation gradient is not finite, or has the wrong shape. */
export class GradientError extends ColaError {}

/** A payload that came over the wire was refused; nothing from it was decoded or applied. */
export class PayloadError extends ColaError {}

/** The payload's structure is invalid: header, dtypes, shapes, names, sizes or values. */
export class MalformedPayloadError extends PayloadError {}

/**
 * The sealed payload failed authentication (tampered, for another node, direction or kind, or
 * sealed under another key or hello), or a hello's signature does not verify.
 */
export class AuthenticationError extends PayloadError {}

/** The sealed payload is authentic but was already received, or arrives out of order. */
export class ReplayError extends PayloadError {}

/** The server's identity key does not match the fingerprint a node pins or remembers. */
export class UntrustedKeyError extends PayloadError {}

/** A batch does not meet its task's input contract (keys, dtypes, shapes, value ranges). */
export class ContractError extends PayloadError {}

/** A shipped ONNX graph is malformed or uses what the exporter never emits. */
export class GraphError extends PayloadError {}

/** A message does not fit the round protocol (wrong kind, missing keys, wrong version). */
export class ProtocolError extends ColaError {}

/**
 * The Flower side failed: the SuperLink refused a call, answered with something that is not
 * Flower's wire, or an object's bytes do not match its id. (No Python counterpart: the Python
 * node leaves this to Flower's own client.)
 */
export class FleetError extends ColaError {}
