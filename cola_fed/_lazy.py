"""Lazy attribute resolution, so that torch-backed names can be exported without importing torch.

Edge clients import :mod:`cola_fed` on machines that have no PyTorch; only code that actually
touches a torch-backed name (``cola_fed.ServerEngine``) pays for, and needs, the import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """Return a module-level ``__getattr__`` resolving ``name`` from ``exports[name]``.

    ``exports`` maps an attribute name to the module (relative to ``package``) defining it.
    """

    def __getattr__(name: str) -> Any:
        try:
            module_name = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module_name, package), name)

    return __getattr__
