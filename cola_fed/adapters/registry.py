"""Adapter families by kind: register once, build from a spec, recognise from a state. Torch-free.

Built-in families register themselves below, one call each. A plugin family registers with
:func:`register_adapter` in code, or by an entry point in the ``cola_fed.adapters`` group (the
value names its :class:`AdapterFamily` class), so that a node that never imported the plugin
still finds the kind a plan names.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from cola_fed.adapters.family import AdapterFamily
from cola_fed.errors import AdapterError, ConfigError

if TYPE_CHECKING:
    from cola_fed.adapters.base import Adapter
    from cola_fed.adapters.spec import AdapterSpec

ENTRY_POINT_GROUP = "cola_fed.adapters"
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")

FAMILIES: dict[str, AdapterFamily] = {}


def register_adapter(family: AdapterFamily | type[AdapterFamily]) -> AdapterFamily:
    """Make a family available under its ``kind``; returns the registered instance.

    Registering a kind again replaces it (a plugin may override a built-in on purpose).
    """
    if isinstance(family, type):
        family = family()
    if not isinstance(family, AdapterFamily):
        raise ConfigError(f"register_adapter: expected an AdapterFamily, got {family!r:.60}")
    kind = getattr(family, "kind", None)
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ConfigError(f"register_adapter: kind must be lower case letters, digits, '-' or "
                          f"'_' (at most 32), got {kind!r:.40}")
    if not isinstance(getattr(family, "ops", None), str) or ":" not in family.ops:
        raise ConfigError(f"register_adapter: {kind!r} needs ops = 'module:Class' of its torch "
                          "operations")
    FAMILIES[kind] = family
    return family


def family_of(kind: str) -> AdapterFamily:
    """The family registered as ``kind`` (entry points are looked up on first miss)."""
    family = FAMILIES.get(kind)
    if family is None:
        _load_entry_point(kind)
        family = FAMILIES.get(kind)
    if family is None:
        raise ConfigError(f"adapter.kind: no adapter family {kind!r:.40} is registered; known: "
                          f"{', '.join(known_kinds())}. A plugin family must be installed in "
                          f"this environment, declared in the {ENTRY_POINT_GROUP!r} entry-point "
                          "group, for simulations and nodes to find it (docs/adapters.md)")
    return family


def known_kinds() -> list[str]:
    """Every registered kind, built-ins first."""
    return list(FAMILIES)


def is_known_kind(kind: Any) -> bool:
    """Whether ``kind`` names a registered family (without raising)."""
    if not isinstance(kind, str):
        return False
    try:
        family_of(kind)
    except ConfigError:
        return False
    return True


def build_adapter(spec: AdapterSpec) -> Adapter:
    """The torch operations of ``spec``'s family, configured by ``spec`` (imports torch)."""
    family = family_of(spec.kind)
    module_name, _, class_name = family.ops.partition(":")
    try:
        ops = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise AdapterError(f"adapter family {spec.kind!r}: cannot load its torch operations "
                           f"{family.ops!r}: {err}") from None
    return ops(spec)


def infer_spec(params: Mapping[str, Any], activation: str = "relu") -> AdapterSpec:
    """Recover the :class:`AdapterSpec` of an adapter state from its parameter names and shapes.

    The first registered family that recognises the shapes wins; an MLP's activation is not
    visible in a state, it is ``activation``.
    """
    shapes = {name: tuple(int(s) for s in value.shape) for name, value in params.items()}
    for family in FAMILIES.values():
        spec = family.infer(shapes, activation)
        if spec is not None:
            return spec
    raise AdapterError(
        f"cannot tell which adapter family has parameters {sorted(shapes)}; expected "
        "{'A', 'B'} (lowrank), {'weight'[, 'bias']} (linear), 'fc0.weight', ... (mlp). For "
        "another family pass its spec (ServerEngine.compute(..., specs={client: AdapterSpec(...)})"
        "), or give the family an AdapterFamily.infer"
    )


def _load_entry_point(kind: str) -> None:
    """Register the family an installed package declares for ``kind`` (called only when
    ``kind`` is not registered): that kind only."""
    if not _KIND.fullmatch(kind):
        return
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name == kind:
            try:
                family = point.load()
                family = family() if isinstance(family, type) else family
            except Exception as err:  # a broken plugin must say which one
                raise ConfigError(f"adapter family {kind!r}: entry point {point.value!r} "
                                  f"failed to load: {err}") from None
            if kind in FAMILIES:  # the plugin registered itself on import
                return
            if getattr(family, "kind", None) != kind:
                raise ConfigError(f"adapter family {kind!r}: entry point {point.value!r} "
                                  f"declares kind {getattr(family, 'kind', None)!r:.40}")
            register_adapter(family)


def _register_built_ins() -> None:
    from cola_fed.adapters.linear import Linear
    from cola_fed.adapters.lowrank import LowRank
    from cola_fed.adapters.mlp import MLP

    for family in (LowRank, Linear, MLP):
        register_adapter(family)


_register_built_ins()
