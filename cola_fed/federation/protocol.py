"""The round protocol: every message, part name and field, typed. Torch-free.

```
round 0  QUERY  server -> node  cola{identity, transcript, signature}  graphs{<name>: ONNX bytes}
                                files{<name>: bytes} (a task's node files: its tokenizer)
                                transcript = canonical JSON {protocol, run-id, lineage, node-id,
                                hello-id, identity, exchange-key, plan}, signed by the server
                                identity
                node -> server  cola{node-public-key}
                                sealed{control: HelloClaim, adapters, batch0..(I-1) | train,
                                       eval0..}
round t  TRAIN  server -> node  sealed{control: TrainOrder, adaptation0..(I-1)}
                node -> server  sealed{control: TrainReport, adapters[, batch0..(I-1)]}
```

A node acts on nothing before it has checked the hello: the signature over the transcript,
the transcript itself (strictly typed, for its run and node id), the identity key against the
fingerprint it pins or remembers, a hello id above any it accepted before, a plan within its own
caps, and every shipped graph against the plan's hashes and the graph checks. The SHA-256 of
the transcript goes into the session keys, so a node's replies open only for the server whose
hello it accepted. Everything else (rounds, acknowledgements, metrics, partition claims)
travels sealed; ``docs/security.md`` lists what stays in the clear and why it is harmless.

Nodes number their learner states: every reply carries one (``HelloClaim.state``,
``TrainReport.state``) and every TRAIN order says which one the server holds
(``TrainOrder.acknowledged``) and which one its latest checkpoint holds
(``TrainOrder.checkpointed``: the node keeps it). A node whose latest reply was lost or
refused, that restarted, or whose server resumed from a checkpoint, continues from the state
the server holds: no step is applied twice, no batch skipped. ``lineage`` names the run a
resumed run continues (its first run id), and the node's own long-term identity key signs its
claim of a partition, so that a restarted node proves it is the one that held it.

Every ``from_record``/``decode`` here raises only :class:`ProtocolError` (the message does not
fit the protocol) or :class:`PayloadError` (a payload inside it is refused).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flwr.app import ConfigRecord, RecordDict

from cola_fed.adapters.init import state_nbytes, state_shapes
from cola_fed.adapters.registry import is_known_kind
from cola_fed.adapters.spec import ACTIVATIONS, AdapterSpec
from cola_fed.config import (
    BACKENDS,
    DATA_MODES,
    PARTITIONERS,
    TaskConfig,
    per_partition_values,
)
from cola_fed.errors import ConfigError, PayloadError, ProtocolError
from cola_fed.federation.records import blob_to_record, record_to_blob
from cola_fed.gl.layout import MODULE_TYPES, LayerInfo, Layout, assign_specs
from cola_fed.gl.optim_spec import OPTIMIZERS, OptimizerSpec
from cola_fed.tasks.registry import is_task_name
from cola_fed.wire import SecureChannel, decode_bundle, encode_bundle
from cola_fed.wire.codec import WIRE_DTYPES, Limits
from cola_fed.wire.crypto import PROTOCOL_VERSION, SIGNATURE_BYTES, sign_transcript
from cola_fed.wire.strict_json import dumps_canonical, loads_strict

# record names in a Flower RecordDict
CLEAR = "cola"  # ConfigRecord: what travels in the clear
GRAPHS = "graphs"  # ConfigRecord: train-step graphs by name (hello only)
FILES = "files"  # ConfigRecord: the task's node files by name (hello only)

#: files a task's node side may need from the server (``Task.node_files``)
TASK_FILES = ("tokenizer.json",)
MAX_TASK_FILE_BYTES = 64 * 2**20
SEALED = "sealed"  # ArrayRecord: one sealed blob

# message kinds, bound into every seal
KIND_HELLO = "hello"
KIND_TRAIN = "train"

# parts of a sealed bundle
PART_CONTROL = "control"
PART_ADAPTERS = "adapters"
PART_TRAIN = "train"  # upload mode: the node's whole training split


def batch_part(i: int) -> str:
    return f"batch{i}"


def eval_part(i: int) -> str:
    return f"eval{i}"


def adaptation_part(i: int) -> str:
    return f"adaptation{i}"


MAX_TRANSCRIPT_BYTES = 2**20
MAX_CONTROL_BYTES = 2**14
MAX_GRAPHS = 64
MAX_PARTITION_ID = 2**31 - 1
MAX_NODE_STATES = 16  # learner states a node keeps (the server holds one of the newest few)
_MAX_INT = 2**53  # every integer field of a control message is below this


# --------------------------------------------------------------------------------------------
# typed reading of decoded JSON


def _take(raw: Any, fields: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``raw`` must be an object with exactly ``fields``; each value of its type."""
    if not isinstance(raw, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(raw).__name__}")
    if set(raw) != set(fields):
        raise ProtocolError(f"{what}: expected fields {sorted(fields)}, got {sorted(raw)}")
    for key, kind in fields.items():
        _check_type(raw[key], kind, f"{what}.{key}")
    return raw


def _check_type(value: Any, kind: Any, where: str) -> None:
    if kind is int or kind is float:
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < _MAX_INT
        if kind is float:
            ok = ok or (isinstance(value, float) and math.isfinite(value))
    elif kind == "int?":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool)
                               and abs(value) < _MAX_INT)
    elif kind == "float?":
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value))
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str) and len(value) <= 4096
    elif kind is list or kind is dict:
        ok = isinstance(value, kind)
    else:  # pragma: no cover - a programming error in a field table
        raise TypeError(kind)
    if not ok:
        name = kind if isinstance(kind, str) else kind.__name__
        raise ProtocolError(f"{where}: expected {name}, got {value!r:.80}")


def _in_range(value: int, low: int, high: int, where: str) -> int:
    if not low <= value <= high:
        raise ProtocolError(f"{where}: expected an integer in [{low}, {high}], got {value}")
    return value


def _validated(build, where: str):
    """Run a config constructor; its validation error becomes a protocol error."""
    try:
        return build()
    except ConfigError as err:
        raise ProtocolError(f"{where}: {err}") from None


# --------------------------------------------------------------------------------------------
# the plan: what the server resolves for every node of the run


@dataclass(frozen=True)
class Assignment:
    """Which of several options a partition gets: ``cycle`` (partition ``p`` gets
    ``cycle[p % len(cycle)]``) or, when the cycle is empty, ``mapping`` with ``default``."""

    cycle: tuple[int, ...] = ()
    mapping: tuple[tuple[int, int], ...] = ()
    default: int = 0

    def index_for(self, partition_id: int) -> int:
        if self.cycle:
            return self.cycle[partition_id % len(self.cycle)]
        return dict(self.mapping).get(partition_id, self.default)

    @classmethod
    def from_rule(cls, key: str, rule: str, default: str) -> tuple[Assignment, list[str]]:
        """A per-partition setting (see :func:`cola_fed.config.per_partition`) as an assignment
        over its distinct options; returns ``(assignment, options)``."""
        values = per_partition_values(key, rule)
        options = list(dict.fromkeys([default, *values]))
        entries = [e.strip() for e in rule.split(",") if e.strip()]
        if entries and not any(":" in e for e in entries):
            return cls(cycle=tuple(options.index(v) for v in values)), options
        mapping = []
        for entry in entries:
            pid, _, value = entry.partition(":")
            mapping.append((int(pid), options.index(value.strip())))
        return cls(mapping=tuple(sorted(mapping))), options

    def to_dict(self) -> dict[str, Any]:
        return {"cycle": list(self.cycle), "mapping": [list(m) for m in self.mapping],
                "default": self.default}

    @classmethod
    def from_dict(cls, raw: Any, options: int, where: str) -> Assignment:
        raw = _take(raw, {"cycle": list, "mapping": list, "default": int}, where)
        cycle = [_index(v, options, f"{where}.cycle") for v in raw["cycle"][:1024]]
        if len(raw["cycle"]) > 1024 or len(raw["mapping"]) > 4096:
            raise ProtocolError(f"{where}: too many entries")
        mapping = []
        for entry in raw["mapping"]:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise ProtocolError(f"{where}.mapping: expected [partition, option] pairs")
            _check_type(entry[0], int, f"{where}.mapping")
            mapping.append((_in_range(entry[0], 0, MAX_PARTITION_ID, f"{where}.mapping"),
                            _index(entry[1], options, f"{where}.mapping")))
        return cls(tuple(cycle), tuple(mapping), _index(raw["default"], options,
                                                        f"{where}.default"))


def _index(value: Any, options: int, where: str) -> int:
    _check_type(value, int, where)
    return _in_range(value, 0, options - 1, where)


_TASK_FIELDS = {"name": str, "text_column": str, "label_column": str, "prompt_column": str,
                "response_column": str, "template": str, "label_names": str, "num_labels": int,
                "pad_id": int, "eos_id": int, "decoder_start_id": int, "batch_size": int,
                "max_length": int, "eval_batches": int, "partitioner": str, "partition_by": str,
                "dirichlet_alpha": float, "server_test_size": int, "seed": int}
_SPEC_FIELDS = {"kind": str, "rank": int, "bias": bool, "hidden": int, "depth": int,
                "growth": int, "activation": str, "options": dict}
_OPTIMIZER_FIELDS = {"name": str, "lr": float, "weight_decay": float, "betas": list,
                     "eps": float, "momentum": float, "nesterov": bool, "warmup_steps": int,
                     "total_steps": "int?", "max_grad_norm": "float?"}
_LAYER_FIELDS = {"name": str, "d_in": int, "d_out": int, "module_type": str, "has_bias": bool,
                 "kernel_size": list, "stride": list, "padding": list, "dilation": list}
#: a convolution's geometry fields: the least value of each, and the default of a layer that is
#: not a convolution (which must keep it)
_GEOMETRY = {"kernel_size": (1, (1, 1)), "stride": (1, (1, 1)), "padding": (0, (0, 0)),
             "dilation": (1, (1, 1))}


@dataclass(frozen=True)
class Plan:
    """What the server tells every node about the run, resolved from its config: the adapted
    layers, the adapter family of each kind of node and which partitions get which, the
    optimizer, the data the node sends (batch size, length, interval, mode), the backend chosen
    for each partition and the SHA-256 of every train-step graph shipped.

    Node-local settings (data paths, caches, threads, caps) are never part of it.
    """

    layout: Layout
    task: TaskConfig
    node_specs: tuple[dict[str, AdapterSpec], ...]
    spec_assignment: Assignment
    optimizer: OptimizerSpec
    interval: int
    wire_dtype: str = "float32"
    data_mode: str = "stream"
    backends: tuple[str, ...] = ("",)
    backend_assignment: Assignment = field(default_factory=Assignment)
    graphs: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)

    def specs_for(self, partition_id: int) -> dict[str, AdapterSpec]:
        """Layer selector -> adapter spec of the node with this partition id."""
        return self.node_specs[self.spec_assignment.index_for(partition_id)]

    def all_specs(self) -> list[dict[str, AdapterSpec]]:
        """``specs_for`` of every kind of node the run may have."""
        return list(self.node_specs)

    def backend_for(self, partition_id: int) -> str:
        """The run's backend for this partition (``edge.backends``); empty: the node chooses."""
        return self.backends[self.backend_assignment.index_for(partition_id)]

    def batch_seed(self, partition_id: int) -> int:
        """Seed of a node's batch stream; the server reproduces it in ``upload`` mode."""
        return self.task.seed * 7919 + partition_id

    def adapter_seed(self, partition_id: int) -> int:
        """Seed of a node's initial adapters."""
        return self.task.seed + partition_id

    @property
    def max_rows(self) -> int:
        """Most rows of adaptation data one chunk can hold (a sample per token at most)."""
        return self.task.batch_size * self.task.max_length

    def with_graphs(self, graphs: Mapping[str, str]) -> Plan:
        return dataclasses.replace(self, graphs=dict(graphs))

    def with_files(self, files: Mapping[str, str]) -> Plan:
        return dataclasses.replace(self, files=dict(files))

    # ---- encoding

    def to_dict(self) -> dict[str, Any]:
        task = {k: getattr(self.task, k) for k in _TASK_FIELDS}
        return {
            "layout": [{k: list(v) if isinstance(v, tuple) else v  # JSON has no tuples
                        for k, v in dataclasses.asdict(layer).items()} for layer in self.layout],
            "task": task,
            "node-specs": [{sel: spec.to_dict() for sel, spec in specs.items()}
                           for specs in self.node_specs],
            "spec-assignment": self.spec_assignment.to_dict(),
            "optimizer": self.optimizer.to_dict(),
            "interval": self.interval,
            "wire-dtype": self.wire_dtype,
            "data-mode": self.data_mode,
            "backends": list(self.backends),
            "backend-assignment": self.backend_assignment.to_dict(),
            "graphs": dict(sorted(self.graphs.items())),
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Plan:
        raw = _take(raw, {"layout": list, "task": dict, "node-specs": list,
                          "spec-assignment": dict, "optimizer": dict, "interval": int,
                          "wire-dtype": str, "data-mode": str, "backends": list,
                          "backend-assignment": dict, "graphs": dict, "files": dict}, "plan")
        node_specs = tuple(_node_specs(s, f"plan.node-specs[{i}]")
                           for i, s in enumerate(raw["node-specs"][:64]))
        if not node_specs or len(raw["node-specs"]) > 64:
            raise ProtocolError("plan.node-specs: expected 1 to 64 kinds of node")
        backends = raw["backends"]
        if not backends or len(backends) > 8 or any(b not in ("", *BACKENDS) for b in backends):
            raise ProtocolError(f"plan.backends: expected entries of {BACKENDS} or '', got "
                                f"{backends!r:.80}")
        if raw["wire-dtype"] not in WIRE_DTYPES or raw["data-mode"] not in DATA_MODES:
            raise ProtocolError("plan: unknown wire-dtype or data-mode")
        return cls(
            layout=_layout(raw["layout"]),
            task=_task(raw["task"]),
            node_specs=node_specs,
            spec_assignment=Assignment.from_dict(raw["spec-assignment"], len(node_specs),
                                                 "plan.spec-assignment"),
            optimizer=_optimizer(raw["optimizer"]),
            interval=_in_range(raw["interval"], 1, 2**16, "plan.interval"),
            wire_dtype=raw["wire-dtype"],
            data_mode=raw["data-mode"],
            backends=tuple(backends),
            backend_assignment=Assignment.from_dict(raw["backend-assignment"], len(backends),
                                                    "plan.backend-assignment"),
            graphs=_hashes(raw["graphs"], "plan.graphs", MAX_GRAPHS),
            files=_file_hashes(raw["files"]),
        )


def _layout(raw: list) -> Layout:
    if not 1 <= len(raw) <= 4096:
        raise ProtocolError(f"plan.layout: expected 1 to 4096 layers, got {len(raw)}")
    layers = []
    for i, layer in enumerate(raw):
        layer = _take(layer, _LAYER_FIELDS, f"plan.layout[{i}]")
        if layer["module_type"] not in MODULE_TYPES:
            raise ProtocolError(f"plan.layout[{i}].module_type: expected one of {MODULE_TYPES}")
        for dim in ("d_in", "d_out"):
            _in_range(layer[dim], 1, 2**20, f"plan.layout[{i}].{dim}")
        for key, (low, default) in _GEOMETRY.items():
            layer[key] = _int_pair(layer[key], low, f"plan.layout[{i}].{key}")
            if layer["module_type"] != "conv2d" and layer[key] != default:
                raise ProtocolError(f"plan.layout[{i}].{key}: a {layer['module_type']} layer "
                                    f"has no geometry; expected {list(default)}")
        kh, kw = layer["kernel_size"]
        if layer["d_in"] % (kh * kw):
            raise ProtocolError(f"plan.layout[{i}].d_in: a conv2d layer's d_in = in_channels * "
                                f"kh * kw must be a multiple of {kh * kw}, got {layer['d_in']}")
        layers.append(LayerInfo(**layer))
    if len({layer.name for layer in layers}) != len(layers):
        raise ProtocolError("plan.layout: duplicate layer names")
    return Layout(tuple(layers))


def _int_pair(raw: list, low: int, where: str) -> tuple[int, int]:
    """Two integers in ``[low, 1024]`` (a convolution's kernel, stride, padding or dilation)."""
    if len(raw) != 2:
        raise ProtocolError(f"{where}: expected two integers, got {raw!r:.80}")
    for value in raw:
        _check_type(value, int, where)
        _in_range(value, low, 2**10, where)
    return raw[0], raw[1]


def _task(raw: dict) -> TaskConfig:
    raw = _take(raw, _TASK_FIELDS, "plan.task")
    if not is_task_name(raw["name"]) or raw["partitioner"] not in PARTITIONERS:
        raise ProtocolError(f"plan.task: malformed task name {raw['name']!r:.40} or unknown "
                            "partitioner")
    return _validated(lambda: TaskConfig(**{**raw, "dirichlet_alpha":
                                            float(raw["dirichlet_alpha"])}), "plan.task")


def _node_specs(raw: Any, where: str) -> dict[str, AdapterSpec]:
    if not isinstance(raw, dict) or not 1 <= len(raw) <= 64:
        raise ProtocolError(f"{where}: expected 1 to 64 layer selectors")
    specs = {}
    for selector, spec in raw.items():
        spec = _take(spec, _SPEC_FIELDS, f"{where}.{selector:.40}")
        if not is_known_kind(spec["kind"]) or spec["activation"] not in ACTIVATIONS:
            raise ProtocolError(f"{where}: adapter kind {spec['kind']!r:.40} is not installed "
                                "on this node, or unknown activation")
        _check_options(spec["options"], where)
        for size in ("rank", "hidden", "growth"):
            _in_range(spec[size], 1, 2**20, f"{where}.{size}")
        _in_range(spec["depth"], 1, 16, f"{where}.depth")
        specs[selector] = _validated(lambda s=spec: AdapterSpec(**s), where)
    return specs


def _check_options(options: dict, where: str) -> None:
    """A family's options within the plan's bounds: at most 16 names of at most 32 characters,
    strings of at most 64 (their types and values are ``AdapterSpec``'s to check)."""
    if len(options) > 16 or not all(
            1 <= len(k) <= 32 and not (isinstance(v, str) and len(v) > 64)
            for k, v in options.items()):
        raise ProtocolError(f"{where}.options: expected at most 16 names of at most 32 "
                            "characters, each a number, a boolean or a string of at most 64")


def _optimizer(raw: dict) -> OptimizerSpec:
    raw = _take(raw, _OPTIMIZER_FIELDS, "plan.optimizer")
    if raw["name"] not in OPTIMIZERS:
        raise ProtocolError(f"plan.optimizer.name: expected one of {OPTIMIZERS}")
    betas = raw["betas"]
    if len(betas) != 2:
        raise ProtocolError("plan.optimizer.betas: expected two numbers")
    for beta in betas:
        _check_type(beta, float, "plan.optimizer.betas")
    values = {**raw, "betas": tuple(float(b) for b in betas)}
    for key in ("lr", "weight_decay", "eps", "momentum"):
        values[key] = float(values[key])
    return _validated(lambda: OptimizerSpec(**values), "plan.optimizer")


def _hashes(raw: dict, where: str, most: int) -> dict[str, str]:
    if len(raw) > most:
        raise ProtocolError(f"{where}: more than {most} entries")
    for name, digest in raw.items():
        if not (isinstance(digest, str) and len(digest) == 64
                and all(c in "0123456789abcdef" for c in digest)):
            raise ProtocolError(f"{where}[{name:.60}]: expected a SHA-256 hex digest")
    return dict(raw)


def _file_hashes(raw: dict) -> dict[str, str]:
    unknown = sorted(set(raw) - set(TASK_FILES))
    if unknown:
        raise ProtocolError(f"plan.files: unknown task file(s) {unknown!r:.80}; expected "
                            f"some of {TASK_FILES}")
    return _hashes(raw, "plan.files", len(TASK_FILES))


# --------------------------------------------------------------------------------------------
# node-side caps on what a server may ask


@dataclass(frozen=True)
class NodeCaps:
    """Bounds a node puts on what the server asks of it (node config keys in brackets).

    Parameters
    ----------
    max_interval : int
        Most batches per step (``max-interval``).
    max_batch_size : int
        Most samples per batch (``max-batch-size``).
    max_length : int
        Most tokens per sample (``max-length``).
    max_eval_batches : int
        Most held-out batches sent at hello (``max-eval-batches``).
    max_layers : int
        Most adapted layers (``max-layers``).
    max_width : int
        Widest layer input or output, and largest adapter rank or hidden size
        (``max-width``).
    max_payload_mb : float
        Largest sealed payload the node opens or builds, in MB (``max-payload-mb``).
    """

    max_interval: int = 16
    max_batch_size: int = 1024
    max_length: int = 4096
    max_eval_batches: int = 64
    max_layers: int = 1024
    max_width: int = 16384
    max_payload_mb: float = 1024.0

    @classmethod
    def keys(cls) -> list[str]:
        """The node config keys, one per field (``max_interval`` -> ``max-interval``)."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(cls)]

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeCaps:
        values = {}
        for f in dataclasses.fields(cls):
            key, name = f.name.replace("_", "-"), f.name
            if key not in node_config:
                continue
            value = node_config[key]
            wanted = float if f.type == "float" else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
                    wanted is int and not isinstance(value, int)):
                raise ConfigError(f"node config {key}: expected a positive {wanted.__name__}, "
                                  f"got {value!r}")
            values[name] = value
        return cls(**values)

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1e6)

    def check(self, plan: Plan, partition_id: int) -> None:
        """Refuse a plan that asks for more than this node (with this partition) allows,
        naming the cap."""
        task = plan.task
        asks = [("max-interval", "data.interval", plan.interval, self.max_interval),
                ("max-batch-size", "task.batch-size", task.batch_size, self.max_batch_size),
                ("max-length", "task.max-length", task.max_length, self.max_length),
                ("max-eval-batches", "task.eval-batches", task.eval_batches,
                 self.max_eval_batches),
                ("max-layers", "adapted layers", len(plan.layout), self.max_layers),
                ("max-width", "the widest adapted layer",
                 max(max(layer.d_in, layer.d_out) for layer in plan.layout), self.max_width)]
        for spec in plan.specs_for(partition_id).values():
            asks.append(("max-width", "adapter.rank / adapter.hidden",
                         max(spec.rank, *spec.hidden_sizes), self.max_width))
        for key, what, asked, cap in asks:
            if asked > cap:
                raise ProtocolError(f"the server asks for {what} = {asked}, above this node's "
                                    f"{key} = {cap}; refused (raise {key} in the node config if "
                                    "the run is legitimate)")
        # the adapters travel in every reply: their total bounds the learner the node builds
        adapter_bytes = state_nbytes(plan.layout,
                                     assign_specs(plan.layout, plan.specs_for(partition_id)))
        if adapter_bytes > self.max_payload_bytes:
            raise ProtocolError(f"the plan's adapters take {adapter_bytes / 1e6:.1f} MB, above "
                                f"this node's max-payload-mb = {self.max_payload_mb}; refused")

    def limits(self, plan: Plan) -> Limits:
        """Decoding limits of a payload from the server under this plan."""
        # a layer in weight-space form is d_out rows of G, and one as its parameter gradient
        # has its parameters' shapes, whatever the batch
        widest = max(layer.d_out for layer in plan.layout)
        for specs in plan.all_specs():
            for shapes in state_shapes(plan.layout, assign_specs(plan.layout, specs)).values():
                widest = max([widest, *(shape[0] for shape in shapes.values() if shape)])
        return Limits(max_bytes=self.max_payload_bytes, max_rows=max(plan.max_rows, widest))


# --------------------------------------------------------------------------------------------
# the hello


@dataclass(frozen=True)
class HelloTranscript:
    """What the server signs for one node: the run, the node, the keys and the plan."""

    run_id: int
    node_id: int
    hello_id: int
    identity: bytes
    exchange_key: bytes
    plan: Plan
    #: the run this one continues (its first run id; this run's id unless it resumed)
    lineage: int

    def encode(self) -> bytes:
        return dumps_canonical({
            "protocol": PROTOCOL_VERSION,
            "run-id": str(self.run_id),
            "lineage": str(self.lineage),
            "node-id": str(self.node_id),
            "hello-id": str(self.hello_id),
            "identity": self.identity.hex(),
            "exchange-key": self.exchange_key.hex(),
            "plan": self.plan.to_dict(),
        })

    @classmethod
    def decode(cls, data: bytes) -> HelloTranscript:
        try:
            raw = loads_strict(data, what="hello transcript", max_bytes=MAX_TRANSCRIPT_BYTES,
                               max_depth=8)
        except PayloadError as err:
            raise ProtocolError(str(err)) from None
        raw = _take(raw, {"protocol": int, "run-id": str, "lineage": str, "node-id": str,
                          "hello-id": str, "identity": str, "exchange-key": str, "plan": dict},
                    "hello")
        if raw["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError(f"the server speaks protocol {raw['protocol']}, this node "
                                f"{PROTOCOL_VERSION}; upgrade the older side")
        return cls(run_id=_u64(raw["run-id"], "hello.run-id"),
                   lineage=_u64(raw["lineage"], "hello.lineage"),
                   node_id=_u64(raw["node-id"], "hello.node-id"),
                   hello_id=_u64(raw["hello-id"], "hello.hello-id"),
                   identity=_key32(raw["identity"], "hello.identity"),
                   exchange_key=_key32(raw["exchange-key"], "hello.exchange-key"),
                   plan=Plan.from_dict(raw["plan"]))


def _u64(text: str, where: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 20) or int(text) >= 2**64:
        raise ProtocolError(f"{where}: expected an unsigned 64-bit integer, got {text!r:.40}")
    return int(text)


def _key32(text: str, where: str) -> bytes:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ProtocolError(f"{where}: expected 32 bytes as 64 lower-case hex digits")
    return bytes.fromhex(text)


@dataclass(frozen=True)
class Hello:
    """Round 0, server -> node: the signed transcript, and the train-step graphs and task
    files whose hashes its plan lists."""

    identity: bytes
    transcript: bytes
    signature: bytes
    graphs: Mapping[str, bytes] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def signed(cls, identity_key, transcript: HelloTranscript,
               graphs: Mapping[str, bytes], files: Mapping[str, bytes] | None = None) -> Hello:
        data = transcript.encode()
        return cls(transcript.identity, data, sign_transcript(identity_key, data), dict(graphs),
                   dict(files or {}))

    def to_record(self) -> RecordDict:
        return RecordDict({
            CLEAR: ConfigRecord({"identity": self.identity, "transcript": self.transcript,
                                 "signature": self.signature}),
            GRAPHS: ConfigRecord(dict(self.graphs)),
            FILES: ConfigRecord(dict(self.files)),
        })

    @classmethod
    def from_record(cls, content: RecordDict, *, max_graph_bytes: int = 16 * 2**20) -> Hello:
        _expect_records(content, configs={CLEAR, GRAPHS, FILES}, arrays=set(), what="hello")
        clear = _config_fields(content[CLEAR], {"identity", "transcript", "signature"}, "hello")
        identity, transcript, signature = (clear["identity"], clear["transcript"],
                                           clear["signature"])
        if len(identity) != 32 or len(signature) != SIGNATURE_BYTES or (
                len(transcript) > MAX_TRANSCRIPT_BYTES):
            raise ProtocolError("hello: identity, signature or transcript of the wrong size")
        graphs = dict(content[GRAPHS])
        if len(graphs) > MAX_GRAPHS:
            raise ProtocolError(f"hello: more than {MAX_GRAPHS} graphs")
        for name, model in graphs.items():
            if not isinstance(model, bytes) or len(model) > max_graph_bytes:
                raise ProtocolError(f"hello: graph {name:.60} is not bytes of at most "
                                    f"{max_graph_bytes} bytes")
        files = dict(content[FILES])
        for name, data in files.items():
            if name not in TASK_FILES or not isinstance(data, bytes) or (
                    len(data) > MAX_TASK_FILE_BYTES):
                raise ProtocolError(f"hello: file {name:.60} is not one of {TASK_FILES} as "
                                    f"bytes of at most {MAX_TASK_FILE_BYTES} bytes")
        return cls(identity, transcript, signature, graphs, files)


@dataclass(frozen=True)
class HelloReply:
    """Round 0, node -> server: the node's public key and its sealed claim and data."""

    node_public: bytes
    sealed: bytes | memoryview

    def to_record(self) -> RecordDict:
        return RecordDict({CLEAR: ConfigRecord({"node-public-key": self.node_public}),
                           SEALED: blob_to_record(self.sealed)})

    @classmethod
    def from_record(cls, content: RecordDict) -> HelloReply:
        _expect_records(content, configs={CLEAR}, arrays={SEALED}, what="hello reply")
        clear = _config_fields(content[CLEAR], {"node-public-key"}, "hello reply")
        if len(clear["node-public-key"]) != 32:
            raise ProtocolError("hello reply: node-public-key must be 32 bytes")
        return cls(clear["node-public-key"], record_to_blob(content[SEALED]))


@dataclass(frozen=True)
class Sealed:
    """A TRAIN message either way: one sealed bundle and nothing in the clear."""

    sealed: bytes | memoryview

    def to_record(self) -> RecordDict:
        return RecordDict({SEALED: blob_to_record(self.sealed)})

    @classmethod
    def from_record(cls, content: RecordDict) -> Sealed:
        _expect_records(content, configs=set(), arrays={SEALED}, what="train message")
        return cls(record_to_blob(content[SEALED]))


def _expect_records(content: RecordDict, *, configs: set[str], arrays: set[str],
                    what: str) -> None:
    if not isinstance(content, RecordDict):
        raise ProtocolError(f"{what}: expected a RecordDict")
    got_configs, got_arrays = set(content.config_records), set(content.array_records)
    if got_configs != configs or got_arrays != arrays or content.metric_records:
        raise ProtocolError(
            f"{what}: expected config records {sorted(configs)} and array records "
            f"{sorted(arrays)}, got {sorted(got_configs)}, {sorted(got_arrays)} and "
            f"{sorted(content.metric_records)}")


def _config_fields(record: ConfigRecord, names: set[str], what: str) -> dict[str, bytes]:
    if set(record) != names:
        raise ProtocolError(f"{what}: expected clear fields {sorted(names)}, got "
                            f"{sorted(record)[:8]}")
    if not all(isinstance(record[n], bytes) for n in names):
        raise ProtocolError(f"{what}: every clear field must be bytes")
    return {n: record[n] for n in names}


# --------------------------------------------------------------------------------------------
# sealed control messages


@dataclass(frozen=True)
class Control:
    """A small, typed JSON message inside a sealed bundle. Subclasses list their fields as
    ``FIELDS = {wire name: (type, low, high)}``."""

    FIELDS: ClassVar[dict[str, tuple[Any, float, float]]] = {}

    def encode(self) -> bytes:
        return dumps_canonical({wire: getattr(self, wire.replace("-", "_"))
                                for wire in self.FIELDS})

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Control:
        raw = loads_strict(data, what=cls.__name__, max_bytes=MAX_CONTROL_BYTES, max_depth=2)
        raw = _take(raw, {k: t for k, (t, _, _) in cls.FIELDS.items()}, cls.__name__)
        for key, (_, low, high) in cls.FIELDS.items():
            value = raw[key]
            if isinstance(value, (int, float)) and not low <= value <= high:
                raise ProtocolError(f"{cls.__name__}.{key}: expected a value in [{low}, {high}]"
                                    f", got {value}")
        return cls(**{k.replace("-", "_"): v for k, v in raw.items()})


@dataclass(frozen=True)
class HelloClaim(Control):
    """Sealed in the hello reply: which partition the node holds, on which backend, the number
    of the learner state its adapters and batches are, and its long-term identity with its
    signature of this session (:func:`cola_fed.wire.crypto.sign_node_claim`), hex-encoded."""

    partition_id: int
    num_examples: int
    backend: str
    state: int
    identity: str
    signature: str
    #: every learner state the node holds (the server may hold one of them)
    held: list[int]

    FIELDS: ClassVar = {"partition-id": (int, 0, MAX_PARTITION_ID),
                        "num-examples": (int, 0, _MAX_INT), "backend": (str, 0, 0),
                        "state": (int, 1, _MAX_INT), "identity": (str, 0, 0),
                        "signature": (str, 0, 0), "held": (list, 0, 0)}

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ProtocolError(f"HelloClaim.backend: expected one of {BACKENDS}, got "
                                f"{self.backend!r:.40}")
        if not (isinstance(self.held, list) and len(self.held) <= MAX_NODE_STATES and all(
                isinstance(n, int) and not isinstance(n, bool) and 1 <= n < _MAX_INT
                for n in self.held)):
            raise ProtocolError(f"HelloClaim.held: expected at most {MAX_NODE_STATES} state "
                                "numbers")
        for name, size in (("identity", 32), ("signature", SIGNATURE_BYTES)):
            value = getattr(self, name)
            if len(value) != 2 * size or any(c not in "0123456789abcdef" for c in value):
                raise ProtocolError(f"HelloClaim.{name}: expected {size} bytes as "
                                    f"{2 * size} lower-case hex digits")


@dataclass(frozen=True)
class TrainOrder(Control):
    """Sealed in a TRAIN request: the round, the number of the node's learner state the server
    holds (the adaptation data was computed at its adapters), and the number of the one its
    latest checkpoint holds (the node keeps it, for a server that resumes)."""

    round: int
    acknowledged: int
    checkpointed: int

    FIELDS: ClassVar = {"round": (int, 1, _MAX_INT), "acknowledged": (int, 0, _MAX_INT),
                        "checkpointed": (int, 0, _MAX_INT)}


@dataclass(frozen=True)
class TrainReport(Control):
    """Sealed in a TRAIN reply: the round it answers, the node's training metrics and the
    number of the learner state the reply's adapters and batches are."""

    round: int
    loss: float
    num_examples: int
    grad_norm: float
    step: int
    state: int

    FIELDS: ClassVar = {"round": (int, 1, _MAX_INT), "loss": (float, 0.0, 1e30),
                        "num-examples": (int, 0, _MAX_INT), "grad-norm": (float, 0.0, 1e30),
                        "step": (int, 0, _MAX_INT), "state": (int, 1, _MAX_INT)}


def seal_bundle(channel: SecureChannel, kind: str, control: Control,
                parts: Mapping[str, bytes]) -> bytes:
    """Seal a control message and named payloads as one bundle."""
    return channel.seal(encode_bundle({PART_CONTROL: control.encode(), **parts}), kind=kind)


def open_sealed(channel: SecureChannel, sealed: bytes | memoryview, kind: str, *,
                limits: Limits | None = None) -> bytes:
    """A sealed bundle's plaintext; a payload over ``limits.max_bytes`` is refused before it
    is decrypted."""
    size = (limits or Limits()).max_bytes
    if len(sealed) > size + 64:  # 64: the envelope's header and tag
        raise PayloadError(f"a sealed {kind} payload of {len(sealed)} bytes exceeds the cap "
                           f"{size}")
    return channel.open(sealed, kind=kind)


def read_bundle(plaintext: bytes, kind: str, control: type[Control]
                ) -> tuple[Control, dict[str, memoryview]]:
    """An opened bundle's control message, decoded, and its other parts, still encoded (each
    is decoded by its own strict decoder)."""
    size = len(plaintext)  # a part is a byte string: its "rows" are bytes
    parts = decode_bundle(plaintext, limits=Limits(max_bytes=max(size, 8),
                                                   max_rows=max(size, 8)))
    if PART_CONTROL not in parts:
        raise ProtocolError(f"a sealed {kind} bundle has no control part")
    return control.decode(parts.pop(PART_CONTROL)), parts


def open_bundle(channel: SecureChannel, sealed: bytes | memoryview, kind: str,
                control: type[Control], *, limits: Limits | None = None,
                ) -> tuple[Control, dict[str, memoryview]]:
    """Open a sealed bundle and decode its control message (:func:`open_sealed`, then
    :func:`read_bundle`)."""
    return read_bundle(open_sealed(channel, sealed, kind, limits=limits), kind, control)


def expect_parts(parts: Mapping[str, Any], names: list[str], what: str) -> None:
    """The parts of a bundle must be exactly ``names``."""
    if set(parts) != set(names):
        raise ProtocolError(f"{what}: expected parts {sorted(names)[:8]}, got "
                            f"{sorted(parts)[:8]}")


# --------------------------------------------------------------------------------------------
# the node's session, kept in Flower's context.state between messages


@dataclass
class NodeSession:
    """What a node keeps between messages: its channel key, the hello it accepted (plan, server
    keys), its partition and backend, the channel counters, and the learner states the server
    may hold.

    ``states`` maps a state number to that state's place in the node's batch stream (how many
    batches it had drawn); each state's learner is kept beside the session
    (:func:`learner_key`). The plan and the server's keys are read again from the stored
    transcript, which the node checked at hello; nothing here came over the wire unchecked.
    """

    node_key: bytes
    transcript: bytes
    partition_id: int
    backend: str
    sent: int = 0
    received: int = 0
    last_round: int = 0
    latest: int = 0  # the number of the newest state
    #: the states the last TRAIN order named: the server's, and its checkpoint's
    acknowledged: int = 0
    checkpointed: int = 0
    states: dict[int, int] = field(default_factory=dict)

    MAX_STATES: ClassVar[int] = MAX_NODE_STATES

    def to_record(self) -> ConfigRecord:
        values = {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()
                  if k != "states"}
        values["state-numbers"] = sorted(self.states)
        values["state-drawn"] = [self.states[n] for n in sorted(self.states)]
        return ConfigRecord(values)

    @classmethod
    def from_record(cls, record: Any) -> NodeSession:
        names = {f.name.replace("_", "-") for f in dataclasses.fields(cls) if f.name != "states"}
        names |= {"state-numbers", "state-drawn"}
        if not isinstance(record, ConfigRecord) or set(record) != names:
            raise ProtocolError("this node's stored session is not one this cola-fed wrote; "
                                "the node must rejoin the run")
        values = {k.replace("-", "_"): record[k] for k in names}
        for f in dataclasses.fields(cls):
            if f.type == "int":
                _check_type(values[f.name], int, f"node session {f.name}")
        numbers, drawn = values.pop("state_numbers"), values.pop("state_drawn")
        if not (isinstance(values["node_key"], bytes) and len(values["node_key"]) == 32
                and isinstance(values["transcript"], bytes) and values["backend"] in BACKENDS
                and isinstance(numbers, list) and isinstance(drawn, list)
                and len(numbers) == len(drawn) <= cls.MAX_STATES):
            raise ProtocolError("this node's stored session is damaged; rejoin the run")
        for i, value in enumerate(numbers + drawn):
            _check_type(value, int, f"node session state {i}")
        return cls(**values, states=dict(zip(numbers, drawn)))


LEARNER_PREFIX = "cola-learner-"


def learner_key(state: int) -> str:
    """The ``context.state`` key of a node's learner in state number ``state``."""
    return f"{LEARNER_PREFIX}{state}"
