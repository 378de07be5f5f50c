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
