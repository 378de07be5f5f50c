"""Conformance vectors of the round protocol (``cola_fed.federation.protocol``), the node's hello
checks (``cola_fed.federation.client._checked_hello`` and the helpers after it) and the graph
checks (``cola_fed.edge.graph_check``, ``graphs``, ``cache``).

Everything here is computed by the Python code itself: real plans built as the server builds
them (``build_plan``), their signed transcripts byte for byte, hellos as RecordDicts described
value by value, control messages, node caps, train-step graphs exported by
``cola_fed.edge.export``, and hostile variants of each with the error class Python raises
("ok" where Python accepts). Integers that may pass 2^53 travel as decimal strings, bytes as
lower-case hex.

Typed values (a RecordDict's or a node config's, or a JSON value that replaces a transcript
field) are ``{"t": kind, "v": value}``: ``int`` (decimal string), ``float`` (number),
``str``, ``bool``, ``bytes`` (hex), ``null``, ``list`` / ``dict`` (of typed values).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from cola_fed.adapters.spec import AdapterSpec
from cola_fed.config import RunConfig
from cola_fed.edge.graph_check import ALLOWED_OPS, check_graph
from cola_fed.edge.graphs import GraphKey, content_hash, graph_keys
from cola_fed.federation import client
from cola_fed.federation.adversary import json_paths
from cola_fed.federation.protocol import (
    KIND_TRAIN,
    Hello,
    HelloClaim,
    HelloReply,
    HelloTranscript,
    NodeCaps,
    NodeSession,
    Plan,
    Sealed,
    TrainOrder,
    TrainReport,
    learner_key,
    read_bundle,
    seal_bundle,
)
from cola_fed.federation.records import blob_to_record
from cola_fed.federation.strategy import build_plan
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.tasks import get_task
from cola_fed.wire import SecureChannel, encode_bundle, public_bytes, transcript_hash
from cola_fed.wire.codec import Limits
from cola_fed.wire.crypto import fingerprint, sign_transcript
from cola_fed.wire.identity import KnownServers

RUN_ID, NODE_ID, HELLO_ID, LINEAGE = 2**64 - 1, 2**63 + 5, 7, 2**64 - 9

#: large byte strings of typed values, stored once by SHA-256 (``{"t": "blob", "v": sha256}``;
#: ``"pad": n`` appends n spaces: a transcript padded to a size cap)
BLOBS: dict[str, str] = {}


def outcome(fn) -> str:
    """``"ok"``, or the class name of the error ``fn`` raises."""
    try:
        fn()
    except Exception as err:
        return type(err).__name__
    return "ok"


def identity_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def exchange_key(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


# --------------------------------------------------------------------------------------------
# typed values


def typed(value: Any) -> dict[str, Any]:
    """A Python value as ``{"t": kind, "v": value}`` (bool before int: bool is an int)."""
    if value is None:
        return {"t": "null", "v": None}
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": value}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if len(data) > 4096:
            body = data.rstrip(b" ")
            pad = len(data) - len(body)
            if len(body) <= 4096:
                return {"t": "bytes", "v": body.hex(), "pad": pad}
            digest = hashlib.sha256(body).hexdigest()
            BLOBS[digest] = body.hex()
            return {"t": "blob", "v": digest, "pad": pad}
        return {"t": "bytes", "v": data.hex()}
    if isinstance(value, list):
        return {"t": "list", "v": [typed(v) for v in value]}
    if isinstance(value, dict):
        return {"t": "dict", "v": {k: typed(v) for k, v in value.items()}}
    raise TypeError(type(value))


def described(content: RecordDict) -> dict[str, Any]:
    """A RecordDict, value by value: configs (typed values), arrays (Flower Arrays: dtype,
    shape, stype, data hex) and metrics (typed values)."""
    return {
        "configs": {name: {k: typed(v) for k, v in record.items()}
                    for name, record in content.config_records.items()},
        "arrays": {name: {k: {"dtype": a.dtype, "shape": list(a.shape), "stype": a.stype,
                              "data": bytes(a.data).hex()} for k, a in record.items()}
                   for name, record in content.array_records.items()},
        "metrics": {name: {k: typed(v) for k, v in record.items()}
                    for name, record in content.metric_records.items()},
    }


# --------------------------------------------------------------------------------------------
# plans, built as the server builds them


def digits_plan(**overrides: Any) -> Plan:
    """test_protocol's plan: three adapter kinds cycling over partitions, backends by partition."""
    config = RunConfig.from_flat({"task.name": "digits", "adapter.kinds": "lowrank,linear,mlp",
                                  "edge.backends": "0:onnx,2:torch", "data.interval": 2,
                                  **overrides})
    layout = Layout((LayerInfo("fc1", 64, 64), LayerInfo("head", 64, 10)))
    return build_plan(layout, get_task(config.task), config)


def minilm_plan() -> Plan:
    """A MiniLM-L6-shaped text-classification run: query and value of six layers (384 wide),
    the fresh classifier head through a Linear adapter with bias, SGD with Nesterov momentum,
    a schedule and clipping, float16 on the wire, a tokenizer shipped."""
    config = RunConfig.from_flat({
        "task.name": "text-classification", "adapter.kind": "lowrank", "adapter.rank": 8,
        "optimizer.name": "sgd", "optimizer.lr": 0.05, "optimizer.momentum": 0.9,
        "optimizer.nesterov": True, "optimizer.warmup-steps": 10,
        "optimizer.total-steps": 1000, "optimizer.max-grad-norm": 1.0,
        "optimizer.weight-decay": 1e-05, "data.interval": 4, "wire.dtype": "float16",
        "edge.backends": "onnx"})
    layers = []
    for i in range(6):
        for part in ("query", "value"):
            layers.append(LayerInfo(f"bert.encoder.layer.{i}.attention.self.{part}", 384, 384))
    layers.append(LayerInfo("classifier", 384, 2))
    plan = build_plan(Layout(tuple(layers)), get_task(config.task), config)
    return plan.with_files({"tokenizer.json": content_hash(TOKENIZER)})


CONV = LayerInfo("conv", 3 * 3 * 5, 8, "conv2d", True, kernel_size=(3, 5), stride=(2, 1),
                 padding=(1, 2), dilation=(1, 1))


def conv_plan() -> Plan:
    """A convolution's geometry, MLP adapters (gelu), upload mode, bfloat16."""
    plan = digits_plan(**{"adapter.kinds": "", "adapter.kind": "mlp",
                          "adapter.activation": "gelu", "adapter.hidden": 16,
                          "adapter.depth": 2, "data.mode": "upload", "wire.dtype": "bfloat16",
                          "edge.backends": "", "optimizer.max-grad-norm": 2.5})
    return dataclasses.replace(plan, layout=Layout((CONV, LayerInfo("head", 64, 10))))


def tokenizer_json() -> bytes:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3}
    return Tokenizer(WordLevel(vocab, unk_token="[UNK]")).to_str().encode()


TOKENIZER = tokenizer_json()


def transcript_of(plan: Plan, *, identity: Ed25519PrivateKey | None = None,
                  run_id: int = RUN_ID, node_id: int = NODE_ID, hello_id: int = HELLO_ID,
                  lineage: int = LINEAGE) -> HelloTranscript:
    return HelloTranscript(run_id=run_id, node_id=node_id, hello_id=hello_id,
                           identity=public_bytes(identity or identity_key(1)),
                           exchange_key=public_bytes(exchange_key(2)), plan=plan,
                           lineage=lineage)


def spec_view(spec: AdapterSpec) -> dict[str, Any]:
    return {**spec.to_dict(), "hidden_sizes": [str(h) for h in spec.hidden_sizes]}


def plan_facts(plan: Plan) -> dict[str, Any]:
    """What the node reads off a plan, per partition 0..5."""
    partitions = []
    for pid in range(6):
        specs = [plan.specs_for(pid)]
        partitions.append({
            "partition": pid,
            "specs": {sel: spec_view(s) for sel, s in plan.specs_for(pid).items()},
            "backend": plan.backend_for(pid),
            "batch_seed": str(plan.batch_seed(pid)),
            "adapter_seed": str(plan.adapter_seed(pid)),
            "graphs_rows": list(graph_keys(plan.layout, specs, plan.optimizer)),
            "graphs_all": list(graph_keys(plan.layout, specs, plan.optimizer, form="all")),
        })
    caps = NodeCaps()
    limits = caps.limits(plan)
    return {"partitions": partitions, "max_rows": plan.max_rows,
            "limits": {"max_bytes": str(limits.max_bytes), "max_rows": str(limits.max_rows)}}


# --------------------------------------------------------------------------------------------
# hostile transcripts: one field rewritten (the node decodes them after the signature holds)


GENERIC = [None, True, 1.0, 7, -1, 2**53, "x", [], {}]

#: targeted rewrites: (path, value); "DROP" deletes the field
TARGETED: list[tuple[tuple, Any]] = [
    (("protocol",), 3), (("protocol",), 4.0), (("run-id",), "-1"),
    (("run-id",), "18446744073709551616"), (("run-id",), "18446744073709551615"),
    (("run-id",), ""), (("run-id",), "0x10"), (("run-id",), "\u0661"), (("run-id",), " 1"),
    (("hello-id",), "007"), (("hello-id",), "0" * 21), (("lineage",), "1" * 20),
    (("identity",), "AB" * 32), (("identity",), "ab" * 31), (("exchange-key",), "zz" * 32),
    (("plan", "interval"), 0), (("plan", "interval"), 2**16), (("plan", "interval"), 2**16 + 1),
    (("plan", "interval"), 2.0), (("plan", "wire-dtype"), "int8"),
    (("plan", "wire-dtype"), "float16"), (("plan", "data-mode"), "upload"),
    (("plan", "data-mode"), "push"), (("plan", "backends"), []),
    (("plan", "backends"), ["cuda"]), (("plan", "backends"), [""] * 9),
    (("plan", "backends"), ["onnx", "", "torch", ""]), (("plan", "backends"), [1]),
    (("plan", "layout"), []), (("plan", "layout", 1, "name"), "fc1"),
    (("plan", "layout", 0, "module_type"), "conv3d"),
    (("plan", "layout", 0, "module_type"), "conv1d"),
    (("plan", "layout", 0, "d_in"), 0), (("plan", "layout", 0, "d_in"), 2**20),
    (("plan", "layout", 0, "d_in"), 2**20 + 1), (("plan", "layout", 0, "d_out"), 64.0),
    (("plan", "layout", 0, "kernel_size"), [3, 3]),
    (("plan", "layout", 0, "kernel_size"), [1]), (("plan", "layout", 0, "kernel_size"), [1, 1.0]),
    (("plan", "layout", 0, "stride"), [1, 0]), (("plan", "layout", 0, "padding"), [0, -1]),
    (("plan", "layout", 0, "has_bias"), 1),
    (("plan", "task", "name"), "../x"), (("plan", "task", "name"), "pkg.mod:Task"),
    (("plan", "task", "name"), "p\u00e4ck.m\u00f6d:T\u00e4sk"),
    (("plan", "task", "name"), "no-such-task"), (("plan", "task", "name"), "Digits"),
    (("plan", "task", "name"), "text-classification"),
    (("plan", "task", "partitioner"), "dirichlet"), (("plan", "task", "partitioner"), "x"),
    (("plan", "task", "batch_size"), 0), (("plan", "task", "max_length"), -3),
    (("plan", "task", "eval_batches"), 0), (("plan", "task", "num_labels"), 0),
    (("plan", "task", "pad_id"), -2), (("plan", "task", "pad_id"), -1),
    (("plan", "task", "eos_id"), True), (("plan", "task", "server_test_size"), -1),
    (("plan", "task", "dirichlet_alpha"), 0), (("plan", "task", "dirichlet_alpha"), 2),
    (("plan", "task", "dirichlet_alpha"), -0.5), (("plan", "task", "dirichlet_alpha"), 1e-300),
    (("plan", "task", "seed"), -2**53 + 1), (("plan", "task", "seed"), 2**53 - 1),
    (("plan", "task", "template"), "x" * 4096), (("plan", "task", "template"), "x" * 4097),
    (("plan", "task", "template"), "\U0001F600" * 4096),
    (("plan", "task", "template"), "\U0001F600" * 4097),
    (("plan", "task", "data_path"), "/etc/passwd"), (("plan", "task", "model"), "/srv/model"),
    (("plan", "node-specs"), []), (("plan", "node-specs"), [{}]),
    (("plan", "node-specs", 0, "*", "kind"), "conv"),
    (("plan", "node-specs", 0, "*", "kind"), "linear"),
    (("plan", "node-specs", 0, "*", "activation"), "softmax"),
    (("plan", "node-specs", 0, "*", "activation"), "silu"),
    (("plan", "node-specs", 0, "*", "rank"), 0), (("plan", "node-specs", 0, "*", "rank"), 2**20),
    (("plan", "node-specs", 0, "*", "rank"), 2**20 + 1),
    (("plan", "node-specs", 0, "*", "depth"), 16), (("plan", "node-specs", 0, "*", "depth"), 17),
    (("plan", "node-specs", 0, "*", "growth"), 0), (("plan", "node-specs", 0, "*", "hidden"), 8.0),
    (("plan", "node-specs", 0, "*", "bias"), 0),
    (("plan", "node-specs", 0, "*", "options"), {"alpha": 2}),
    (("plan", "node-specs", 0, "*", "options"), {"alpha": [1]}),
    (("plan", "node-specs", 0, "*", "options"), {"": 1}),
    (("plan", "node-specs", 0, "*", "options"), {"a" * 33: 1}),
    (("plan", "node-specs", 0, "*", "options"), {f"o{i}": 1 for i in range(17)}),
    (("plan", "node-specs", 0, "*", "options"), {"s": "y" * 65}),
    (("plan", "node-specs", 0, "nomatch"), "DROP"),
    (("plan", "spec-assignment", "cycle"), [3]), (("plan", "spec-assignment", "cycle"), [-1]),
    (("plan", "spec-assignment", "cycle"), [0] * 1025),
    (("plan", "spec-assignment", "cycle"), [0] * 1024),
    (("plan", "spec-assignment", "cycle"), [0.0]), (("plan", "spec-assignment", "cycle"), []),
    (("plan", "spec-assignment", "mapping"), [[0, 2], [5, 1]]),
    (("plan", "spec-assignment", "mapping"), [[0, 3]]),
    (("plan", "spec-assignment", "mapping"), [[-1, 0]]),
    (("plan", "spec-assignment", "mapping"), [[2**31, 0]]),
    (("plan", "spec-assignment", "mapping"), [[2**31 - 1, 0]]),
    (("plan", "spec-assignment", "mapping"), [[0]]),
    (("plan", "spec-assignment", "mapping"), [[0, 1, 2]]),
    (("plan", "spec-assignment", "mapping"), [{"0": 1}]),
    (("plan", "spec-assignment", "mapping"), [[1.0, 0]]),
    (("plan", "spec-assignment", "mapping"), [[0, 0]] * 4097),
    (("plan", "spec-assignment", "default"), 3), (("plan", "spec-assignment", "default"), 2),
    (("plan", "backend-assignment", "default"), 3),
    (("plan", "optimizer", "name"), "adam"), (("plan", "optimizer", "name"), "sgd"),
    (("plan", "optimizer", "lr"), -0.001), (("plan", "optimizer", "lr"), 0),
    (("plan", "optimizer", "lr"), 1e308), (("plan", "optimizer", "weight_decay"), -1.0),
    (("plan", "optimizer", "eps"), -1e-08), (("plan", "optimizer", "momentum"), 1.5),
    (("plan", "optimizer", "momentum"), 1), (("plan", "optimizer", "nesterov"), True),
    (("plan", "optimizer", "betas"), [0.9]), (("plan", "optimizer", "betas"), [0.9, 1.0]),
    (("plan", "optimizer", "betas"), [0, 0]), (("plan", "optimizer", "betas"), [0.9, "x"]),
    (("plan", "optimizer", "betas"), [0.9, 0.999, 0.5]),
    (("plan", "optimizer", "warmup_steps"), -1), (("plan", "optimizer", "warmup_steps"), 5),
    (("plan", "optimizer", "total_steps"), 0), (("plan", "optimizer", "total_steps"), 1.0),
    (("plan", "optimizer", "total_steps"), 10), (("plan", "optimizer", "max_grad_norm"), 0),
    (("plan", "optimizer", "max_grad_norm"), -1.0), (("plan", "optimizer", "max_grad_norm"), 1),
    (("plan", "optimizer", "max_grad_norm"), 0.5),
    (("plan", "graphs", "g"), "AB" * 32), (("plan", "graphs", "g"), "ab" * 31),
    (("plan", "graphs", "g"), 7), (("plan", "graphs"), {f"g{i}": "ab" * 32 for i in range(65)}),
    (("plan", "graphs"), {f"g{i}": "ab" * 32 for i in range(64)}),
    (("plan", "files"), {"evil.py": "ab" * 32}),
    (("plan", "files"), {"tokenizer.json": "ab" * 32}),
    (("plan", "files"), {"tokenizer.json": "AB" * 32}),
]


def mutated(base: dict, path: tuple, value: Any) -> dict:
    raw = copy.deepcopy(base)
    target = raw
    for key in path[:-1]:
        target = target[key]
    if value == "DROP":
        if isinstance(target, dict):
            target.pop(path[-1], None)
        return raw
    target[path[-1]] = value
    return raw


def transcript_rewrites() -> dict[str, Any]:
    """The digits transcript, and rewrites of it (each field replaced by generic values,
    dropped, or given an unknown sibling; then targeted values), each with Python's outcome
    when the rewritten transcript is decoded. JS applies the rewrite to its own parse of the
    base and encodes it with dumpsCanonical (the bytes Python decoded)."""
    plan = digits_plan().with_graphs({"g": "ab" * 32})
    base = json.loads(transcript_of(plan).encode())
    rewrites = []

    def add(path: tuple, value: Any, op: str = "set") -> None:
        raw = mutated(base, path, "DROP" if op == "drop" else value)
        data = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        rewrites.append({"path": list(path), "op": op,
                         "value": typed(value) if op == "set" else None,
                         "expect": outcome(lambda: HelloTranscript.decode(data.encode()))})

    for path in json_paths(base):
        for value in GENERIC:
            add(path, value)
        add(path, None, "drop")
        parent = path[:-1]
        if not path[-1:] or isinstance(path[-1], str):
            add((*parent, "zz-unknown"), 1)
    for path, value in TARGETED:
        if value == "DROP":
            add(path, None, "drop")
        else:
            add(path, value)
    seen, unique = set(), []
    for rewrite in rewrites:
        key = json.dumps([rewrite["path"], rewrite["op"], rewrite["value"]])
        if key not in seen:
            seen.add(key)
            unique.append(rewrite)
    return {"base": transcript_of(plan).encode().decode(), "rewrites": unique}


def transcript_bytes_hostile() -> list[dict[str, Any]]:
    good = transcript_of(digits_plan()).encode()
    cases = {
        "not json": b"{plan",
        "bom": b"\xef\xbb\xbf" + good,
        "not utf-8": good.replace(b'"digits"', b'"dig\xffts"'),
        "duplicate key": b'{"protocol":4,"protocol":4}',
        "nan": good.replace(b'"interval":2', b'"interval":NaN'),
        "array": b"[]",
        "depth 9": b'{"a":' * 9 + b"1" + b"}" * 9,
        "20-digit int": good.replace(b'"interval":2', b'"interval":10000000000000000000'),
        "overflowing float": good.replace(b'"interval":2', b'"interval":1e400'),
        "empty": b"",
        "whitespace": good.replace(b'"interval":2', b'"interval" : 2'),
    }
    return [{"name": name, "hex": data.hex(),
             "expect": outcome(lambda d=data: HelloTranscript.decode(d))}
            for name, data in cases.items()]


# --------------------------------------------------------------------------------------------
# control messages


def controls() -> dict[str, Any]:
    messages = [HelloClaim(3, 100, "onnx", 2, "ab" * 32, "cd" * 64, [1, 2]),
                HelloClaim(0, 0, "torch", 1, "00" * 32, "ff" * 64, []),
                HelloClaim(2**31 - 1, 2**53 - 1, "onnx", 2**53 - 1, "0f" * 32, "a0" * 64,
                           list(range(1, 17))),
                TrainOrder(2, 5, 4), TrainOrder(1, 0, 0), TrainOrder(2**53 - 1, 2**53 - 1, 3),
                TrainReport(2, 0.5, 16, 1.25, 3, 4),
                TrainReport(1, 0.0, 0, 0.0, 0, 1),
                TrainReport(7, 1e-05, 64, 123456789.123, 10, 9),
                TrainReport(9, 2.302585092994046, 256, 1e+30, 2**53 - 1, 11),
                TrainReport(3, 0.1 + 0.2, 1, 5e-324, 1, 2)]
    encoded = [{"kind": type(m).__name__, "fields": {k: typed(v) for k, v in
                                                       dataclasses.asdict(m).items()},
                "hex": m.encode().hex()} for m in messages]
    bad_claims = [("AB" * 32, "cd" * 64, [1], "onnx"), ("ab" * 31, "cd" * 64, [1], "onnx"),
                  ("ab" * 32, "cd" * 63 + "zz", [1], "onnx"),
                  ("ab" * 32, "cd" * 64, list(range(1, 18)), "onnx"),
                  ("ab" * 32, "cd" * 64, [0], "onnx"), ("ab" * 32, "cd" * 64, [1], "cuda"),
                  ("ab" * 32, "cd" * 64, [2**53], "torch")]
    claim = {"partition-id": 3, "num-examples": 100, "backend": "onnx", "state": 2,
             "identity": "ab" * 32, "signature": "cd" * 64, "held": [1, 2]}
    order = {"round": 2, "acknowledged": 5, "checkpointed": 4}
    report = {"round": 2, "loss": 0.5, "num-examples": 16, "grad-norm": 1.25, "step": 3,
              "state": 4}
    texts: list[tuple[str, str, str]] = []  # kind, name, text

    def variants(kind: str, base: dict[str, Any]) -> None:
        for key in base:
            for value in (None, True, 1.0, -1, 0, 2**53, 2**53 - 1, "x", [], {}, 1e31, 0.5):
                texts.append((kind, f"{key}={value!r}", json.dumps({**base, key: value})))
            rest = {k: v for k, v in base.items() if k != key}
            texts.append((kind, f"no {key}", json.dumps(rest)))
        texts.append((kind, "extra field", json.dumps({**base, "x": 1})))
        texts.append((kind, "nested too deep", json.dumps({**base, "x": [[1]]})))
        texts.append((kind, "not an object", "[1]"))
        texts.append((kind, "duplicate key", json.dumps(base)[:-1] + ',"round":1}'))
        texts.append((kind, "too long", json.dumps({**base, "pad": "x" * 2**14})))

    variants("HelloClaim", claim)
    variants("TrainOrder", order)
    variants("TrainReport", report)
    texts.append(("TrainReport", "infinity", json.dumps(report).replace("0.5", "Infinity")))
    texts.append(("TrainReport", "loss as int", json.dumps({**report, "loss": 0})))
    for identity, signature, held, backend in bad_claims:
        texts.append(("HelloClaim", f"claim {identity[:4]} {signature[-4:]} {held[-1:]} "
                      f"{backend}", json.dumps({**claim, "identity": identity,
                                                "signature": signature, "held": held,
                                                "backend": backend})))
    kinds = {"HelloClaim": HelloClaim, "TrainOrder": TrainOrder, "TrainReport": TrainReport}
    decoded = [{"kind": kind, "name": name, "hex": text.encode().hex(),
                "expect": outcome(lambda k=kind, t=text: kinds[k].decode(t.encode()))}
               for kind, name, text in texts]
    constructed = [{"kind": "HelloClaim", "fields": {
        "partition_id": typed(3), "num_examples": typed(100), "backend": typed(backend),
        "state": typed(2), "identity": typed(identity), "signature": typed(signature),
        "held": typed(held)},
        "expect": outcome(lambda i=identity, s=signature, h=held, b=backend:
                          HelloClaim(3, 100, b, 2, i, s, h))}
        for identity, signature, held, backend in bad_claims]
    return {"encoded": encoded, "decoded": decoded, "constructed": constructed}


# --------------------------------------------------------------------------------------------
# node caps


def caps_vectors(plans: dict[str, Plan]) -> dict[str, Any]:
    configs = [{}, {"max-interval": 4}, {"max-payload-mb": 1}, {"max-payload-mb": 0.5},
               {"max-interval": "4"}, {"max-interval": 0}, {"max-interval": -1},
               {"max-payload-mb": True}, {"max-width": 2.5}, {"max-width": 4.0},
               {"max-layers": 3, "max-width": 384, "max-length": 64, "max-batch-size": 16,
                "max-eval-batches": 4, "max-payload-mb": 0.01}, {"partition-id": 1},
               {"max-payload-mb": 0}, {"max-payload-mb": -2.0}]
    from_config = []
    for config in configs:
        try:
            caps = NodeCaps.from_node_config(config)
            fields = {k: typed(v) for k, v in dataclasses.asdict(caps).items()}
            fields["max_payload_bytes"] = typed(caps.max_payload_bytes)
            result = {"expect": "ok", "caps": fields}
        except Exception as err:
            result = {"expect": type(err).__name__}
        from_config.append({"config": {k: typed(v) for k, v in config.items()}, **result})

    wide = dataclasses.replace(plans["digits"], layout=Layout(tuple(
        LayerInfo(f"l{i}", 8192, 8192) for i in range(4))))
    nomatch = dataclasses.replace(plans["digits"], node_specs=(
        {"nomatch": AdapterSpec(kind="lowrank")}, *plans["digits"].node_specs[1:]))
    deep = dataclasses.replace(plans["digits"], node_specs=(
        {"*": AdapterSpec(kind="mlp", hidden=2**20, depth=16, growth=2**20)},
        *plans["digits"].node_specs[1:]))
    extra = {"wide": wide, "nomatch": nomatch, "deep": deep}
    checks = []
    cases = [({}, "digits"), ({"max-width": 32}, "digits"), ({"max-interval": 1}, "digits"),
             ({"max-batch-size": 15}, "digits"), ({"max-length": 63}, "digits"),
             ({"max-eval-batches": 3}, "digits"), ({"max-layers": 1}, "digits"),
             ({"max-payload-mb": 0.01}, "digits"), ({"max-payload-mb": 0.1}, "digits"),
             ({}, "minilm"), ({"max-width": 383}, "minilm"), ({"max-payload-mb": 0.1}, "minilm"),
             ({"max-payload-mb": 64}, "wide"), ({"max-payload-mb": 2048}, "wide"),
             ({}, "nomatch"), ({}, "deep"), ({"max-width": 2**400}, "deep"), ({}, "conv")]
    all_plans = {**plans, **extra}
    for config, name in cases:
        caps = NodeCaps.from_node_config(config)
        for pid in (0, 1, 2):
            checks.append({"config": {k: typed(v) for k, v in config.items()}, "plan": name,
                           "partition": pid,
                           "expect": outcome(lambda c=caps, p=all_plans[name], i=pid:
                                             c.check(p, i))})
    limits = []
    for config, name in [({}, "digits"), ({"max-payload-mb": 3}, "minilm"), ({}, "conv"),
                         ({}, "wide"), ({}, "nomatch")]:
        caps = NodeCaps.from_node_config(config)
        try:
            got = caps.limits(all_plans[name])
            result = {"expect": "ok", "max_bytes": str(got.max_bytes),
                      "max_rows": str(got.max_rows)}
        except Exception as err:
            result = {"expect": type(err).__name__}
        limits.append({"config": {k: typed(v) for k, v in config.items()}, "plan": name,
                       **result})
    return {"extra_plans": {name: plan_dict_text(p) for name, p in extra.items()},
            "from_config": from_config, "check": checks, "limits": limits}


def plan_dict_text(plan: Plan) -> str:
    """A plan as canonical JSON text (JS builds it with Plan.fromDict: no checks skipped,
    except where a hostile plan is the point, so these are read with fromDict too)."""
    return json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# graphs


def make_model(*args, **kwargs) -> bytes:
    """A small hand-made ONNX model (tests/test_graph_check.py's builder)."""
    from tests.test_graph_check import make_model as build

    return build(*args, **kwargs)


def weight(*args, **kwargs):
    """A small initializer, optionally external (tests/test_graph_check.py's builder)."""
    from tests.test_graph_check import weight as build

    return build(*args, **kwargs)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def hand_made_graphs() -> dict[str, bytes]:
    import onnx
    from onnx import TensorProto, helper

    add = helper.make_node("Add", ["x", "w"], ["y"])
    constant = helper.make_node("Constant", [], ["c"], value=weight("c"))
    graphs = {
        "ok-add": make_model([add], initializers=[weight()]),
        "ok-constant-ai.onnx": make_model([constant, helper.make_node("Add", ["x", "c"], ["y"])],
                                          opsets=[("ai.onnx", 20)]),
    }
    for op in ("Loop", "Scan", "Softmax", "Conv", "LSTM"):
        graphs[f"op-{op}"] = make_model([helper.make_node(op, ["x"], ["y"])])
    graphs["custom-domain"] = make_model([helper.make_node("Add", ["x", "x"], ["y"],
                                                           domain="com.evil")])
    graphs["imported-domain"] = make_model([helper.make_node("Add", ["x", "x"], ["y"])],
                                           opsets=[("", 20), ("com.microsoft", 1)])
    graphs["external-initializer"] = make_model([add], initializers=[weight(external=True)])
    only_location = weight()
    only_location.data_location = TensorProto.EXTERNAL
    graphs["data-location-external"] = make_model([add], initializers=[only_location])
    # an unknown data_location (proto2 keeps it as an unknown field, and writes it back)
    odd_location = TensorProto.FromString(weight().SerializeToString() + b"\x70\x07")
    graphs["data-location-unknown"] = make_model([add], initializers=[odd_location])
    graphs["external-constant"] = make_model([
        helper.make_node("Constant", [], ["c"], value=weight("c", external=True)),
        helper.make_node("Add", ["x", "c"], ["y"])])
    sparse = helper.make_sparse_tensor(weight("s"), helper.make_tensor(
        "i", TensorProto.INT64, [2], [0, 1]), [4])
    graphs["sparse-initializer"] = make_model([helper.make_node("Add", ["x", "x"], ["y"])],
                                              sparse_initializer=[sparse])
    graphs["sparse-attribute"] = make_model([
        helper.make_node("Constant", [], ["c"], sparse_value=sparse),
        helper.make_node("Add", ["x", "c"], ["y"])])
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    graphs["subgraph-if"] = make_model([helper.make_node("If", ["x"], ["y"],
                                                         then_branch=branch,
                                                         else_branch=branch)])
    graphs["subgraph-list"] = make_model([helper.make_node("Add", ["x", "x"], ["y"],
                                                           bodies=[branch])])
    function = helper.make_function("local", "Double", ["a"], ["b"],
                                    [helper.make_node("Add", ["a", "a"], ["b"])],
                                    [helper.make_opsetid("", 20)])
    graphs["local-function"] = make_model([helper.make_node("Double", ["x"], ["y"],
                                                            domain="local")],
                                          functions=[function], opsets=[("", 20), ("local", 1)])
    proto = onnx.load_from_string(make_model([helper.make_node("Add", ["x", "x"], ["y"])]))
    proto.training_info.add().algorithm.CopyFrom(proto.graph)
    graphs["training-info"] = proto.SerializeToString()
    good = make_model([helper.make_node("Add", ["x", "x"], ["y"])])
    bad = helper.make_graph([helper.make_node("Loop", ["x"], ["y"])], "g", [], []
                            ).SerializeToString()
    graphs["merged-second-graph"] = good + b"\x3a" + _varint(len(bad)) + bad
    graphs["no-graph"] = b""
    graphs["ort-mark"] = b"\x08\x00\x0d\x00ORTM" + bytes(4)
    graphs["bad-utf8-op"] = make_model([helper.make_node("Add", ["x", "x"], ["y"])]).replace(
        b"Add", b"A\xffd")
    malformed = {"runs-past-end": b"\x3a\x05ab", "truncated-varint": b"\x3a\xff",
                 "long-varint": b"\x08" + b"\xff" * 10 + b"\x01",
                 "varint-over-64": b"\x08" + b"\xff" * 9 + b"\x7f", "group": b"\x0b",
                 "field-zero": b"\x00\x00", "truncated-fixed64": b"\x39\x01\x02",
                 "graph-as-varint": b"\x38\x01", "fixed32-ok": b"\x0d\x01\x02\x03\x04\x3a\x00",
                 "max-field-number": _varint((2**29 - 1) << 3) + b"\x00\x3a\x00",
                 "field-over-max": _varint((2**29) << 3) + b"\x00\x3a\x00",
                 "opset-as-fixed": b"\x41" + bytes(8) + b"\x3a\x00"}
    graphs.update(malformed)
    return graphs


def real_graphs() -> dict[str, bytes]:
    """Train-step graphs exported by cola_fed.edge.export: the digits plan's partition 0
    (lowrank r8, AdamW) needs these two; and the smallest SGD-Nesterov MLP one."""
    from cola_fed.edge.export import export_graphs

    plan = digits_plan()
    keys = list(graph_keys(plan.layout, [plan.specs_for(0)], plan.optimizer).values())
    keys.append(GraphKey(AdapterSpec(kind="mlp", hidden=4, depth=1, activation="silu"), 6, 3,
                         "sgd", True))
    return export_graphs(keys)


def graph_vectors(real: dict[str, bytes]) -> dict[str, Any]:
    cases = []
    for name, model in {**hand_made_graphs(), **real}.items():
        try:
            check_graph(model, name=name)
            result = {"expect": "ok"}
        except Exception as err:
            result = {"expect": type(err).__name__, "message": str(err)}
        cases.append({"name": name, "hex": model.hex(), "sha256": content_hash(model),
                      "real": name in real, **result})
    small = make_model([hand_made_op("Add")])
    limit = {"hex": small.hex(), "max_bytes": 10,
             "message": _message(lambda: check_graph(small, name="g", max_bytes=10))}
    return {"allowed_ops": sorted(ALLOWED_OPS), "cases": cases, "limit": limit}


def hand_made_op(op: str):
    from onnx import helper

    return helper.make_node(op, ["x", "x"], ["y"])


def _message(fn) -> str:
    try:
        fn()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return "ok"


# --------------------------------------------------------------------------------------------
# hellos and the node's checks of them


def hello_vectors(real: dict[str, bytes]) -> dict[str, Any]:
    base_plan = digits_plan()
    needed = graph_keys(base_plan.layout, [base_plan.specs_for(0)], base_plan.optimizer)
    graphs = {name: real[name] for name in needed}
    plan = base_plan.with_graphs({n: content_hash(g) for n, g in graphs.items()})
    server, other = identity_key(1), identity_key(9)
    bad_graph = make_model([hand_made_op("Softmax")])

    def hello(*, plan: Plan = plan, key=server, shipped=None, files=None, **fields) -> Hello:
        return Hello.signed(key, transcript_of(plan, identity=key, **fields),
                            graphs if shipped is None else shipped, files)

    text_plan = minilm_plan()
    text_needed = graph_keys(text_plan.layout, [text_plan.specs_for(0)], text_plan.optimizer)
    fake = {n: f"graph {n}".encode() for n in text_needed}  # not checked: files-only cases

    cases: list[tuple[str, Hello | RecordDict, dict[str, Any]]] = []
    cases.append(("tofu", hello(), {}))
    cases.append(("pinned", hello(), {"pinned": fingerprint(public_bytes(server))}))
    cases.append(("pinned upper-case", hello(), {"pinned": fingerprint(
        public_bytes(server)).upper()}))
    cases.append(("pinned malformed", hello(), {"pinned": ":".join(
        fingerprint(public_bytes(server)).replace(":", "")[i:i + 2] for i in range(0, 64, 2))}))
    cases.append(("pinned other", hello(), {"pinned": fingerprint(public_bytes(other))}))
    cases.append(("known same", hello(), {"known": {"default": public_bytes(server)}}))
    cases.append(("known other", hello(), {"known": {"default": public_bytes(other)}}))
    cases.append(("known other federation", hello(), {"known": {"prod": public_bytes(other)}}))
    cases.append(("federation named", hello(), {"federation": "prod",
                                                 "known": {"prod": public_bytes(other)}}))
    good = hello()
    rewritten = good.transcript.replace(b'"interval":2', b'"interval":3')
    cases.append(("rewritten transcript", Hello(good.identity, rewritten, good.signature,
                                                graphs), {}))
    cases.append(("signed by another key", Hello(good.identity, good.transcript,
                                                 hello(key=other).signature, graphs), {}))
    names_server = transcript_of(plan, identity=server).encode()
    claims_other = Hello(public_bytes(other), names_server, sign_transcript(other, names_server),
                         graphs)
    cases.append(("transcript names another identity", claims_other, {}))
    cases.append(("wrong run", hello(run_id=RUN_ID - 1), {}))
    cases.append(("wrong node", hello(node_id=NODE_ID + 1), {}))
    cases.append(("over caps", hello(), {"config": {"max-interval": 1}}))
    cases.append(("bad caps config", hello(), {"config": {"max-interval": "4"}}))
    cases.append(("partition-id float", hello(), {"config": {"partition-id": 0.0}}))
    cases.append(("replayed hello id", hello(), {"previous": {"hello_id": HELLO_ID}}))
    cases.append(("older hello id", hello(), {"previous": {"hello_id": HELLO_ID + 1}}))
    cases.append(("newer hello id", hello(), {"previous": {"hello_id": HELLO_ID - 1}}))
    cases.append(("previous of another run", hello(),
                  {"previous": {"hello_id": HELLO_ID + 5, "run_id": 12}}))
    cases.append(("previous of another lineage", hello(),
                  {"previous": {"hello_id": 1, "lineage": 3}}))
    cases.append(("previous of another server", hello(),
                  {"previous": {"hello_id": 1, "identity": public_bytes(other)}}))
    cases.append(("previous partition", hello(), {"previous": {"hello_id": 1, "partition": 2}}))
    tampered = dict(graphs)
    first = sorted(tampered)[0]
    tampered[first] = tampered[first] + b"\0"
    cases.append(("graph hash mismatch", hello(shipped=tampered), {}))
    cases.append(("graph not shipped", hello(shipped={}), {}))
    cases.append(("graph cached, not shipped", hello(shipped={}), {"cached": True}))
    cases.append(("no graphs listed", hello(plan=base_plan), {}))
    cases.append(("graphs not needed on torch", hello(plan=base_plan), {"backend": "torch"}))
    evil = base_plan.with_graphs({n: content_hash(bad_graph) for n in needed})
    cases.append(("disallowed op under its hash", hello(
        plan=evil, shipped={n: bad_graph for n in needed}), {}))
    cases.append(("extra graphs ignored", hello(shipped={**graphs, "other": b"junk"}), {}))
    cases.append(("partition 1: linear graphs not listed", hello(), {"partition": 1}))
    cases.append(("partition 1 on torch", hello(), {"partition": 1, "backend": "torch"}))
    files_ok = {"tokenizer.json": TOKENIZER}
    cases.append(("task file", hello(plan=text_plan, shipped=fake, files=files_ok),
                  {"backend": "torch"}))
    cases.append(("task file not shipped", hello(plan=text_plan, shipped=fake, files={}),
                  {"backend": "torch"}))
    cases.append(("task file altered", hello(plan=text_plan, shipped=fake,
                                             files={"tokenizer.json": TOKENIZER + b" "}),
                  {"backend": "torch"}))
    junk = b'{"not": "a tokenizer"}'
    cases.append(("task file not a tokenizer", hello(
        plan=text_plan.with_files({"tokenizer.json": content_hash(junk)}), shipped=fake,
        files={"tokenizer.json": junk}), {"backend": "torch"}))
    cases.append(("task file cached", hello(plan=text_plan, shipped=fake, files={}),
                  {"backend": "torch", "cached_files": True}))
    # records that do not fit
    record = good.to_record()
    no_files = RecordDict({"cola": record["cola"], "graphs": record["graphs"]})
    cases.append(("no files record", no_files, {}))
    metrics = good.to_record()
    metrics["m"] = MetricRecord({"loss": 1.0})
    cases.append(("metrics record", metrics, {}))
    arrays = good.to_record()
    arrays["sealed"] = blob_to_record(b"x")
    cases.append(("array record", arrays, {}))
    clear = dict(record["cola"])
    cases.append(("extra clear field", RecordDict({"cola": ConfigRecord({**clear, "x": b""}),
                                                   "graphs": record["graphs"],
                                                   "files": record["files"]}), {}))
    cases.append(("clear field as str", RecordDict({
        "cola": ConfigRecord({**clear, "identity": clear["identity"].hex()}),
        "graphs": record["graphs"], "files": record["files"]}), {}))
    cases.append(("short identity", Hello(bytes(31), good.transcript, good.signature,
                                          graphs).to_record(), {}))
    cases.append(("short signature", Hello(good.identity, good.transcript, bytes(63),
                                           graphs).to_record(), {}))
    cases.append(("too many graphs", Hello(good.identity, good.transcript, good.signature,
                                           {f"g{i}": b"" for i in range(65)}).to_record(), {}))
    cases.append(("graph as str", RecordDict({"cola": record["cola"],
                                              "graphs": ConfigRecord({"g": "x"}),
                                              "files": record["files"]}), {}))
    cases.append(("graph as int", RecordDict({"cola": record["cola"],
                                              "graphs": ConfigRecord({"g": 5}),
                                              "files": record["files"]}), {}))
    cases.append(("unknown file", Hello(good.identity, good.transcript, good.signature, graphs,
                                        {"evil.py": b"x"}).to_record(), {}))
    cases.append(("file as str", RecordDict({"cola": record["cola"], "graphs": record["graphs"],
                                             "files": ConfigRecord({"tokenizer.json": "{}"})}),
                  {}))
    cases.append(("transcript too long", Hello(good.identity, b" " * (2**20 + 1),
                                               good.signature, {}).to_record(), {}))
    cases.append(("transcript of 1 MiB", Hello(good.identity, good.transcript + b" " * (
        2**20 - len(good.transcript)), good.signature, {}).to_record(), {}))
    vectors = []
    for name, message, ctx in cases:
        content = message.to_record() if isinstance(message, Hello) else message
        vectors.append(run_hello_case(name, content, ctx, real_graphs_by_hash={
            content_hash(g): g for g in graphs.values()}))
    return {"cases": vectors}


def run_hello_case(name: str, content: RecordDict, ctx: dict[str, Any], *,
                   real_graphs_by_hash: dict[str, bytes]) -> dict[str, Any]:
    """Python's handle_hello up to acting on the hello: caps, Hello.from_record, _checked_hello,
    the prior session's hello id and partition (_prior_state), the graphs (onnx) and files."""
    partition = ctx.get("partition", 0)
    node_config = {"partition-id": partition, "num-partitions": 4, **ctx.get("config", {})}
    federation = ctx.get("federation")
    if federation:
        node_config["federation"] = federation
    if ctx.get("pinned"):
        node_config["server-key-fingerprint"] = ctx["pinned"]
    backend = ctx.get("backend", "onnx")
    previous = ctx.get("previous")
    with tempfile.TemporaryDirectory() as tmp:
        known_path = Path(tmp) / "known-servers.json"
        node_config["known-servers"] = str(known_path)
        node_config["graph-cache"] = str(Path(tmp) / "cache")
        known_before = None
        if ctx.get("known"):
            store = KnownServers(known_path)
            for fed, public in ctx["known"].items():
                store.check(fed, public)
            known_before = known_path.read_text()
        state: dict[str, Any] = {}
        hello_for_prior = None
        try:
            hello_for_prior = Hello.from_record(content)
            prior_identity = HelloTranscript.decode(hello_for_prior.transcript).identity
        except Exception:
            prior_identity = public_bytes(identity_key(1))
        if previous:
            prev = transcript_of(digits_plan(), run_id=previous.get("run_id", RUN_ID),
                                 hello_id=previous["hello_id"],
                                 lineage=previous.get("lineage", LINEAGE))
            prev = dataclasses.replace(prev, identity=previous.get("identity", prior_identity))
            session = NodeSession(node_key=bytes(32), transcript=prev.encode(),
                                  partition_id=previous.get("partition", partition),
                                  backend="onnx", latest=1, states={1: 0})
            state = {client.STATE_SESSION: session.to_record(),
                     learner_key(1): blob_to_record(b"learner")}
        context = SimpleNamespace(node_config=node_config, run_id=RUN_ID, node_id=NODE_ID,
                                  state=state)
        cached = []
        if ctx.get("cached"):
            from cola_fed.edge.cache import GraphCache

            cache = GraphCache(node_config["graph-cache"])
            for digest, model in real_graphs_by_hash.items():
                cache.put("cached", model, digest)
                cached.append(typed(model))
        cached_files = []
        if ctx.get("cached_files"):
            from cola_fed.edge.cache import TaskFileCache

            TaskFileCache(node_config["graph-cache"]).put("tokenizer.json", TOKENIZER,
                                                          content_hash(TOKENIZER))
            cached_files.append(typed(TOKENIZER))
        result: dict[str, Any] = {}

        def act() -> None:
            caps = NodeCaps.from_node_config(node_config)
            hello = Hello.from_record(content)
            transcript = client._checked_hello(hello, context, caps)
            pid = client._partition(context)[0]
            client._prior_state(context, None, transcript, pid)
            needed = (client._receive_graphs(hello, context, transcript.plan, pid)
                      if backend == "onnx" else {})
            client._receive_files(hello, transcript.plan, context)
            result["transcript_sha256"] = transcript_hash(hello.transcript).hex()
            result["graphs"] = dict(needed)

        expect = outcome(act)
        known_after = known_path.read_text() if known_path.exists() else None
    context_out = {
        "run_id": str(RUN_ID), "node_id": str(NODE_ID), "backend": backend,
        "config": {k: typed(v) for k, v in node_config.items()
                   if k not in ("known-servers", "graph-cache")},
        "known_before": known_before, "cached_graphs": cached, "cached_files": cached_files,
        "previous": None if not previous else {
            "run_id": str(previous.get("run_id", RUN_ID)),
            "hello_id": str(previous["hello_id"]),
            "lineage": str(previous.get("lineage", LINEAGE)),
            "identity": bytes(previous.get("identity", prior_identity)).hex(),
            "partition": previous.get("partition", partition)},
    }
    return {"name": name, "content": described(content), "context": context_out,
            "expect": expect, "known_after": known_after, **result}


# --------------------------------------------------------------------------------------------
# replies, sealed messages and bundles


def record_vectors() -> dict[str, Any]:
    blob = bytes(range(200))
    reply = HelloReply(bytes(range(32)), blob).to_record()
    sealed = Sealed(blob).to_record()
    hostile = []
    good = sealed
    variants = {
        "ok": good,
        "extra config": RecordDict({"sealed": good["sealed"], "cola": ConfigRecord({})}),
        "no sealed": RecordDict({}),
        "two arrays": RecordDict({"sealed": ArrayRecord({
            "payload": good["sealed"]["payload"], "x": good["sealed"]["payload"]})}),
        "wrong key": RecordDict({"sealed": ArrayRecord({"blob": good["sealed"]["payload"]})}),
        "float32 array": RecordDict({"sealed": ArrayRecord({"payload": Array(
            dtype="float32", shape=(50,), stype="numpy.ndarray",
            data=good["sealed"]["payload"].data)})}),
        "header shape mismatch": RecordDict({"sealed": ArrayRecord({"payload": Array(
            dtype="uint8", shape=(200,), stype="numpy.ndarray",
            data=bytes(good["sealed"]["payload"].data)[:-1])})}),
    }
    for name, content in variants.items():
        hostile.append({"name": name, "content": described(content),
                        "expect": outcome(lambda c=content: Sealed.from_record(c))})
    reply_hostile = []
    for name, content in {
        "ok": reply,
        "short key": HelloReply(bytes(31), blob).to_record(),
        "no cola": RecordDict({"sealed": reply["sealed"]}),
    }.items():
        reply_hostile.append({"name": name, "content": described(content),
                              "expect": outcome(lambda c=content: HelloReply.from_record(c))})
    return {"blob": blob.hex(), "node_public": bytes(range(32)).hex(),
            "hello_reply": described(reply), "sealed": described(sealed),
            "sealed_from_record": hostile, "hello_reply_from_record": reply_hostile}


def bundle_vectors() -> dict[str, Any]:
    order = TrainOrder(3, 2, 1)
    parts = {"adaptation0": b"first", "adaptation1": bytes(range(40))}
    plaintext = encode_bundle({"control": order.encode(), **parts})
    hostile = {
        "no control": encode_bundle(parts),
        "control not json": encode_bundle({"control": b"{", **parts}),
        "control of another kind": encode_bundle({"control": TrainReport(
            3, 0.5, 1, 0.0, 1, 2).encode()}),
        "control out of range": encode_bundle({"control": b'{"acknowledged":1,'
                                               b'"checkpointed":1,"round":0}'}),
        "not a bundle": b"junk",
    }
    read = [{"name": name, "hex": data.hex(),
             "expect": outcome(lambda d=data: read_bundle(d, KIND_TRAIN, TrainOrder))}
            for name, data in hostile.items()]
    # a TRAIN order sealed by the server, opened by the node (role "node")
    node_key, server_key = exchange_key(3), exchange_key(4)
    digest = hashlib.sha256(b"a transcript").digest()
    server = SecureChannel(server_key, public_bytes(node_key), role="server", run_id=RUN_ID,
                           node_id=NODE_ID, transcript=digest)
    sealed_first = seal_bundle(server, KIND_TRAIN, order, parts)
    sealed_second = seal_bundle(server, KIND_TRAIN, TrainOrder(4, 3, 1),
                                {"adaptation0": b"x", "adaptation1": b"y"})
    node = SecureChannel(node_key, public_bytes(server_key), role="node", run_id=RUN_ID,
                         node_id=NODE_ID, transcript=digest)
    assert read_bundle(node.open(sealed_first, kind=KIND_TRAIN), KIND_TRAIN, TrainOrder)[0] \
        == order
    small = Limits(max_bytes=len(sealed_first) - 65)
    return {
        "plaintext": plaintext.hex(), "control": order.encode().hex(),
        "parts": {k: v.hex() for k, v in parts.items()}, "read_hostile": read,
        "sealed": {"node_private": (bytes([3]) * 32).hex(),
                   "server_public": public_bytes(server_key).hex(),
                   "run_id": str(RUN_ID), "node_id": str(NODE_ID), "transcript": digest.hex(),
                   "first": sealed_first.hex(), "second": sealed_second.hex(),
                   "too_small_max_bytes": str(small.max_bytes),
                   "fits_max_bytes": str(len(sealed_first) - 64)},
    }


def expect_parts_vectors() -> list[dict[str, Any]]:
    from cola_fed.federation.protocol import expect_parts

    cases = [(["a", "b"], ["b", "a"]), (["a"], ["a", "b"]), ([], []), (["a", "c"], ["a", "b"])]
    return [{"parts": got, "names": names,
             "expect": outcome(lambda g=got, n=names: expect_parts(dict.fromkeys(g), n, "x"))}
            for got, names in cases]


# --------------------------------------------------------------------------------------------


def vectors() -> dict[str, Any]:
    import logging

    logging.getLogger("cola_fed").setLevel(logging.ERROR)  # trust-on-first-use warnings
    BLOBS.clear()
    plans = {"digits": digits_plan().with_graphs({"g": "ab" * 32}), "minilm": minilm_plan(),
             "conv": conv_plan()}
    real = real_graphs()
    transcripts = []
    for name, plan in plans.items():
        t = transcript_of(plan)
        data = t.encode()
        assert HelloTranscript.decode(data) == t
        transcripts.append({"name": name, "hex": data.hex(), "run_id": str(t.run_id),
                            "node_id": str(t.node_id), "hello_id": str(t.hello_id),
                            "lineage": str(t.lineage), "identity": t.identity.hex(),
                            "exchange_key": t.exchange_key.hex(),
                            "sha256": transcript_hash(data).hex(),
                            "plan_text": plan_dict_text(plan), "facts": plan_facts(plan)})
    return {
        "constants": {"protocol": 4, "max_transcript_bytes": 2**20, "max_control_bytes": 2**14,
                      "max_graphs": 64, "max_partition_id": 2**31 - 1, "max_node_states": 16,
                      "task_files": ["tokenizer.json"], "parts": {
                          "batch3": "batch3", "eval0": "eval0", "adaptation12": "adaptation12"}},
        "transcripts": transcripts,
        "transcript_rewrites": transcript_rewrites(),
        "transcript_bytes": transcript_bytes_hostile(),
        "controls": controls(),
        "caps": caps_vectors(plans),
        "graphs": graph_vectors(real),
        "hellos": hello_vectors(real),
        "records": record_vectors(),
        "bundles": bundle_vectors(),
        "expect_parts": expect_parts_vectors(),
        "blobs": dict(BLOBS),
    }
