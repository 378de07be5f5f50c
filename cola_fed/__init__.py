"""cola-fed: Collaborative Adaptation with Gradient Learning (ColA) as a federated system.

A server holds a frozen base model and computes, for each client's batch, the gradient of the
loss at the adapted layers' outputs (``ServerEngine``); each client trains its own small
auxiliary models from that adaptation data (``GradientLearner``) and returns only their weights.

``import cola_fed`` does not import torch: edge clients use the package without it. The
torch-backed names resolve on first access.
"""

from cola_fed._lazy import lazy_getattr
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.errors import (
    AdapterError,
    ColaError,
    ConfigError,
    GradientError,
    TargetError,
)
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.gl.optim_spec import OptimizerSpec

__version__ = "0.1.0"

__all__ = [
    "AdaptationData",
    "AdapterError",
    "AdapterSpec",
    "ColaError",
    "ConfigError",
    "GradientError",
    "GradientLearner",
    "LayerInfo",
    "Layout",
    "OptimizerSpec",
    "ServerEngine",
    "TargetError",
    "__version__",
]

__getattr__ = lazy_getattr(
    __name__, {"ServerEngine": ".gl.engine", "GradientLearner": ".gl.learner"}
)
