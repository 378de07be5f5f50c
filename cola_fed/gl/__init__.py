"""Gradient Learning: capture adaptation data on the server, learn from it on the client.

Torch-free names (``AdaptationData``, ``Layout``, ``LayerInfo``, ``OptimizerSpec``) import
eagerly; ``ServerEngine`` and ``GradientLearner`` import torch on first use.
"""

from cola_fed._lazy import lazy_getattr
from cola_fed.gl.data import AdaptationData
from cola_fed.gl.layout import LayerInfo, Layout, assign_specs
from cola_fed.gl.optim_spec import OptimizerSpec

__all__ = ["AdaptationData", "GradientLearner", "LayerInfo", "Layout", "OptimizerSpec",
           "ServerEngine", "assign_specs"]

__getattr__ = lazy_getattr(__name__, {"ServerEngine": ".engine", "GradientLearner": ".learner"})
