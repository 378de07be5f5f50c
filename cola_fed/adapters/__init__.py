"""Auxiliary-model families: Low Rank, Linear and MLP.

``AdapterSpec`` is torch-free; the families themselves (``build_adapter`` and friends) import
torch on first use.
"""

from cola_fed._lazy import lazy_getattr
from cola_fed.adapters.spec import ADAPTER_KINDS, AdapterSpec

__all__ = ["ADAPTERS", "ADAPTER_KINDS", "AdapterSpec", "build_adapter", "infer_spec",
           "register_adapter"]

__getattr__ = lazy_getattr(
    __name__,
    {name: ".registry" for name in ("ADAPTERS", "build_adapter", "infer_spec", "register_adapter")},
)
