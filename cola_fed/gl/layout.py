"""Which layers of the frozen model are adapted, and with which adapter family. Torch-free."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cola_fed.adapters.spec import AdapterSpec
from cola_fed.errors import ConfigError

MODULE_TYPES = ("linear", "conv1d", "conv2d")


@dataclass(frozen=True)
class LayerInfo:
    """One adapted layer: its module name and feature sizes.

    ``module_type`` is ``"linear"`` (``nn.Linear``, weight ``[d_out, d_in]``), ``"conv1d"``
    (Hugging Face ``Conv1D`` as in GPT-2, weight stored transposed as ``[d_in, d_out]``) or
    ``"conv2d"`` (``nn.Conv2d`` with ``groups=1``).

    An adapter sees every layer as a map of rows ``[n, d_in] -> [n, d_out]``. For a convolution
    a row is one output position's receptive field, unfolded: ``d_in = in_channels * kh * kw``
    (channel-major, as ``torch.nn.functional.unfold`` orders it) and ``d_out = out_channels``.
    The geometry fields say how to unfold; a linear layer keeps their defaults.
    """

    name: str
    d_in: int
    d_out: int
    module_type: str = "linear"
    has_bias: bool = True
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def is_conv2d(self) -> bool:
        return self.module_type == "conv2d"

    @property
    def in_channels(self) -> int:
        """Input channels of a convolution (``d_in`` for any other layer)."""
        kh, kw = self.kernel_size
        return self.d_in // (kh * kw) if self.is_conv2d else self.d_in


@dataclass(frozen=True)
class Layout:
    """The ordered adapted layers of one frozen model; what client and server agree on."""

    layers: tuple[LayerInfo, ...]

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, name: object) -> bool:
        return any(layer.name == name for layer in self.layers)

    def __getitem__(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} is not an adapted layer; adapted layers: {self.names}")

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def to_dict(self) -> list[dict[str, Any]]:
        return [asdict(layer) for layer in self.layers]

    @classmethod
    def from_dict(cls, layers: list[dict[str, Any]]) -> Layout:
        geometry = ("kernel_size", "stride", "padding", "dilation")
        return cls(tuple(LayerInfo(**{k: tuple(v) if k in geometry else v
                                      for k, v in layer.items()}) for layer in layers))


SpecLike = AdapterSpec | Mapping[str, AdapterSpec]


def assign_specs(layout: Layout, spec: SpecLike) -> dict[str, AdapterSpec]:
    """The adapter spec of every adapted layer.

    ``spec`` is one :class:`AdapterSpec` for all layers, or a mapping whose keys select layers:
    an exact layer name, a module-name suffix (``"classifier"`` matches ``"classifier"`` and
    ``"bert.classifier"``) or a glob (``"*"`` matches every layer). The most specific key wins:
    exact name, then the longest matching suffix, then the longest matching glob. Layers that no
    key selects are not adapted.
    """
    if isinstance(spec, AdapterSpec):
        return {name: spec for name in layout.names}
    if not isinstance(spec, Mapping) or not all(isinstance(v, AdapterSpec) for v in spec.values()):
        raise ConfigError(
            "adapter spec: expected an AdapterSpec or a mapping from layer selectors to "
            f"AdapterSpec, got {type(spec).__name__}"
        )
    assigned: dict[str, AdapterSpec] = {}
    for name in layout.names:
        if name in spec:
            assigned[name] = spec[name]
            continue
        suffixes = [key for key in spec if name.endswith("." + key)]
        globs = [key for key in spec if fnmatch.fnmatchcase(name, key)]
        best = max(suffixes, key=len) if suffixes else max(globs, key=len) if globs else None
        if best is not None:
            assigned[name] = spec[best]
    if not assigned:
        raise ConfigError(
            f"adapter spec: no key of {sorted(spec)} selects any adapted layer {layout.names}"
        )
    return assigned
