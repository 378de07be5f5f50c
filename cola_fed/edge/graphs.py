"""Names and keys of the exported train-step graphs. Torch-free: shared by the exporter and the
ONNX Runtime learner."""

from __future__ import annotations

from dataclasses import dataclass

from cola_fed.adapters.spec import AdapterSpec

#: the scalar hyper-parameter inputs of every train-step graph, in order
HYPER = ("lr", "step", "beta1", "beta2", "eps", "weight_decay", "momentum")


def slot_names(optimizer: str) -> tuple[str, ...]:
    """Optimizer state per parameter (SGD graphs always carry a momentum buffer)."""
    return ("exp_avg", "exp_avg_sq") if optimizer == "adamw" else ("momentum_buffer",)


@dataclass(frozen=True)
class GraphKey:
    """What one graph is specialised for: adapter family and size, layer shape, optimizer."""

    spec: AdapterSpec
    d_in: int
    d_out: int
    optimizer: str  # "adamw" or "sgd"
    nesterov: bool = False

    @property
    def name(self) -> str:
        s = self.spec
        size = {"lowrank": f"r{s.rank}", "linear": "bias" if s.bias else "nobias",
                "mlp": f"h{s.hidden}x{s.depth}g{s.growth}{s.activation}"}[s.kind]
        opt = self.optimizer + ("-nesterov" if self.nesterov else "")
        return f"{s.kind}-{size}-{self.d_in}x{self.d_out}-{opt}"
