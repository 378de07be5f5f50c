"""The round protocol: message kinds, record keys and the run spec. Torch-free.

```
round 0  QUERY  server -> node  cola{protocol-version, server-public-key, run-spec,
                                     graph-hashes}  graphs{<graph name>: ONNX bytes}
                node -> server  cola{node-public-key, partition-id, backend, num-examples}
                                sealed{adapters, batch0..batch(I-1) | train, eval0..}
round t  TRAIN  server -> node  cola{server-round, acknowledged}  sealed{adaptation0..(I-1)}
                node -> server  sealed{adapters[, batch0..batch(I-1)]}  metrics{...}

``acknowledged`` is the counter of the last node message the server accepted: a node whose latest
reply was lost or refused resumes from the learner state the server holds (no step is applied
twice, no batch skipped). ``graphs`` (when ``edge.graphs`` is on) holds the train-step graphs
of every node kind in the run, ``graph-hashes`` their SHA-256 as JSON; nodes on the ONNX backend
check and cache them (``cola_fed.edge``). In ``upload`` data mode the hello carries the whole
training split (``train``) instead of the first batches, and TRAIN replies carry adapters only.
```

Every sealed payload is bound to (run, node, round, direction, kind); ``kind`` is ``hello`` for
round 0 and ``train`` afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cola_fed.adapters.spec import AdapterSpec
from cola_fed.config import AdapterConfig, TaskConfig, per_partition
from cola_fed.errors import ProtocolError
from cola_fed.gl.layout import Layout
from cola_fed.gl.optim_spec import OptimizerSpec
from cola_fed.wire.crypto import PROTOCOL_VERSION

CLEAR = "cola"  # ConfigRecord: clear metadata
GRAPHS = "graphs"  # ConfigRecord: train-step graphs by name (hello only)
SEALED = "sealed"  # ArrayRecord: one sealed blob
METRICS = "metrics"  # MetricRecord

KIND_HELLO = "hello"
KIND_TRAIN = "train"


@dataclass(frozen=True)
class RunSpec:
    """What a node needs to know to take part: sent in the clear at hello."""

    layout: Layout
    task: TaskConfig
    adapter: AdapterConfig
    optimizer: OptimizerSpec
    interval: int
    head: str | None
    wire_dtype: str = "float32"
    data_mode: str = "stream"
    backends: str = ""

    def specs_for(self, partition_id: int) -> dict[str, AdapterSpec]:
        """Layer selector -> adapter spec of the node with this partition id."""
        return self._with_head(self.adapter.spec_for(partition_id))

    def all_specs(self) -> list[dict[str, AdapterSpec]]:
        """``specs_for`` of every kind of node the run may have."""
        return [self._with_head(spec) for spec in self.adapter.all_specs]

    def backend_for(self, partition_id: int) -> str:
        """The run's choice of backend for this partition (``edge.backends``); empty: the node
        chooses."""
        return per_partition("edge.backends", self.backends, partition_id, "")

    def _with_head(self, spec: AdapterSpec) -> dict[str, AdapterSpec]:
        specs = {"*": spec}
        if self.head:
            specs[self.head] = AdapterSpec(kind="linear", bias=True)
        return specs

    def batch_seed(self, partition_id: int) -> int:
        """Seed of a node's batch stream; the server reproduces it in ``upload`` mode."""
        return self.task.seed * 7919 + partition_id

    def to_json(self) -> str:
        return json.dumps({
            "protocol-version": PROTOCOL_VERSION,
            "layout": self.layout.to_dict(),
            "task": vars(self.task),
            "adapter": vars(self.adapter),
            "optimizer": self.optimizer.to_dict(),
            "interval": self.interval,
            "head": self.head,
            "wire-dtype": self.wire_dtype,
            "data-mode": self.data_mode,
            "backends": self.backends,
        })

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        try:
            raw: dict[str, Any] = json.loads(text)
            if raw["protocol-version"] != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"the server speaks protocol {raw['protocol-version']}, this node "
                    f"{PROTOCOL_VERSION}; upgrade the older side"
                )
            return cls(
                layout=Layout.from_dict(raw["layout"]),
                task=TaskConfig(**raw["task"]),
                adapter=AdapterConfig(**raw["adapter"]),
                optimizer=OptimizerSpec.from_dict(raw["optimizer"]),
                interval=int(raw["interval"]),
                head=raw["head"],
                wire_dtype=raw["wire-dtype"],
                data_mode=raw["data-mode"],
                backends=raw.get("backends", ""),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise ProtocolError(f"malformed run spec from the server: {err!r}") from None
