"""Auxiliary-model families: Low Rank, Linear, MLP, and any family a plugin registers.

Each family is a torch-free description (:class:`AdapterFamily`, in ``<kind>/family.py``) beside
its torch operations (``<kind>/ops.py``). ``AdapterSpec``, the registry and the descriptions are
torch-free; ``build_adapter`` imports a family's torch operations on first use.
"""

from cola_fed._lazy import lazy_getattr
from cola_fed.adapters.family import AdapterFamily
from cola_fed.adapters.registry import (
    FAMILIES,
    build_adapter,
    family_of,
    infer_spec,
    known_kinds,
    register_adapter,
)
from cola_fed.adapters.spec import AdapterSpec

__all__ = ["FAMILIES", "Adapter", "AdapterFamily", "AdapterSpec", "build_adapter", "family_of",
           "infer_spec", "known_kinds", "register_adapter"]

__getattr__ = lazy_getattr(__name__, {"Adapter": ".base"})
