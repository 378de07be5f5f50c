"""One exception family per layer, so callers can catch exactly what they can handle.

Every message says what was expected, what came instead, and what to do about it.
"""

from __future__ import annotations


class ColaError(Exception):
    """Base class of every error cola-fed raises on purpose."""


class ConfigError(ColaError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class AdapterError(ColaError, ValueError):
    """An adapter state or spec does not fit the layer it is meant for."""


class TargetError(ColaError, ValueError):
    """The requested target modules cannot be found or adapted in the model."""


class GradientError(ColaError, FloatingPointError):
    """A loss or an adaptation gradient is not finite, or has the wrong shape."""


class PayloadError(ColaError, ValueError):
    """A payload that came over the wire was refused; nothing from it was decoded or applied."""


class MalformedPayloadError(PayloadError):
    """The payload's structure is invalid: header, dtypes, shapes, names, sizes or values."""


class AuthenticationError(PayloadError):
    """The sealed payload failed authentication (tampered, for another node, direction or kind,
    or sealed under another key or hello), or a hello's signature does not verify."""


class ReplayError(PayloadError):
    """The sealed payload is authentic but was already received, or arrives out of order."""


class UntrustedKeyError(PayloadError):
    """The server's identity key does not match the fingerprint a node pins or remembers."""


class ProtocolError(ColaError, RuntimeError):
    """A message does not fit the round protocol (wrong kind, missing keys, wrong version)."""


class ContractError(PayloadError):
    """A batch does not meet its task's input contract (keys, dtypes, shapes, value ranges)."""


class GraphError(PayloadError):
    """A shipped ONNX graph is malformed or uses what the exporter never emits (an operator
    outside the allow-list, external data, a subgraph)."""


class AdapterBoundsError(PayloadError):
    """An adapter state from a node is finite but outside the configured bounds (its norm)."""


class RunStopped(ColaError):
    """The run cannot go on (fewer than the minimum nodes remain); results so far are kept."""
