"""The protocol module: typed messages round-trip, and every decoder raises only ProtocolError
or PayloadError for any input (hypothesis fuzzers over plans, transcripts, control messages,
records and stored sessions)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError, PayloadError, ProtocolError
from cola_fed.federation.adversary import json_paths
from cola_fed.federation.protocol import (
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
)
from cola_fed.federation.strategy import build_plan
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.tasks import get_task
from cola_fed.wire import public_bytes

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def plan(**overrides) -> Plan:
    config = RunConfig.from_flat({"task.name": "digits", "adapter.kinds": "lowrank,linear,mlp",
                                  "edge.backends": "0:onnx,2:torch", **overrides})
    layout = Layout((LayerInfo("fc1", 64, 64), LayerInfo("head", 64, 10)))
    return build_plan(layout, get_task(config.task), config).with_graphs({"g": "ab" * 32})


def transcript(p: Plan | None = None) -> HelloTranscript:
    identity = Ed25519PrivateKey.from_private_bytes(bytes(32))
    return HelloTranscript(run_id=2**64 - 1, node_id=2**63 + 5, hello_id=7,
                           identity=public_bytes(identity), exchange_key=bytes(range(32)),
                           plan=p or plan(), lineage=2**64 - 9)


def test_plan_and_transcript_round_trip():
    p = plan()
    assert Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert [p.specs_for(i)["*"].kind for i in range(4)] == ["lowrank", "linear", "mlp",
                                                            "lowrank"]
    assert [p.backend_for(i) for i in range(4)] == ["onnx", "", "torch", ""]
    t = transcript(p)
    assert HelloTranscript.decode(t.encode()) == t


def test_node_local_settings_cannot_travel_in_a_plan():
    raw = json.loads(transcript().encode())
    raw["plan"]["task"]["data_path"] = "/etc/passwd"
    with pytest.raises(ProtocolError, match="expected fields"):
        HelloTranscript.decode(json.dumps(raw).encode())


@pytest.mark.parametrize("field, value, expected", [
    ("model", "/srv/model", "expected fields"),  # a path: node-local, never in a plan
    ("name", "../x", "malformed task name"),
    ("template", 7, "plan.task.template: expected str"),
    ("pad_id", True, "plan.task.pad_id: expected int"),
])
def test_a_plan_task_is_typed_and_carries_no_path(field, value, expected):
    raw = json.loads(transcript().encode())
    raw["plan"]["task"][field] = value
    with pytest.raises(ProtocolError, match=re.escape(expected)):
        HelloTranscript.decode(json.dumps(raw).encode())


def test_only_known_task_files_travel_in_a_plan_or_a_hello():
    raw = json.loads(transcript().encode())
    raw["plan"]["files"] = {"evil.py": "ab" * 32}
    with pytest.raises(ProtocolError, match="unknown task file"):
        HelloTranscript.decode(json.dumps(raw).encode())
    record = Hello(bytes(32), b"{}", bytes(64), {}, {"evil.py": b"import os"}).to_record()
    with pytest.raises(ProtocolError, match=re.escape("hello: file evil.py")):
        Hello.from_record(record)


def test_control_messages_round_trip_and_refuse_out_of_range():
    for message in (HelloClaim(3, 100, "onnx", 2, "ab" * 32, "cd" * 64, [1, 2]),
                    TrainOrder(2, 5, 4),
                    TrainReport(2, 0.5, 16, 1.25, 3, 4)):
        assert type(message).decode(message.encode()) == message
    for identity, signature in (("AB" * 32, "cd" * 64), ("ab" * 31, "cd" * 64),
                                ("ab" * 32, "cd" * 63 + "zz")):
        with pytest.raises(ProtocolError, match="hex digits"):
            HelloClaim(3, 100, "onnx", 2, identity, signature, [2])
    with pytest.raises(ProtocolError, match="round"):
        TrainOrder.decode(b'{"acknowledged":1,"round":0}')
    with pytest.raises(ProtocolError):
        HelloClaim.decode(b'{"backend":"torch","num-examples":1,"partition-id":true}')
    with pytest.raises(PayloadError):
        TrainReport.decode(b'{"grad-norm":0,"loss":Infinity,"num-examples":1,"round":1,'
                           b'"state":1,"step":1}')


def test_node_caps_from_node_config():
    assert NodeCaps.from_node_config({"max-interval": 4}).max_interval == 4
    for bad in ({"max-interval": "4"}, {"max-interval": 0}, {"max-payload-mb": True},
                {"max-width": 2.5}):
        with pytest.raises(ConfigError):
            NodeCaps.from_node_config(bad)
    with pytest.raises(ProtocolError, match="max-width"):
        NodeCaps(max_width=32).check(plan(), 0)


# --------------------------------------------------------------------------------------------
# fuzzers: only the protocol's own errors, whatever comes

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                        children, max_size=4),
    max_leaves=12)


BASE = json.loads(transcript().encode())
PATHS = list(json_paths(BASE))


@FUZZ
@given(path=st.sampled_from(PATHS), value=JSON, drop=st.booleans())
def test_fuzz_transcript_fields(path, value, drop):
    raw = copy.deepcopy(BASE)
    target = raw
    for key in path[:-1]:
        target = target[key]
    if drop and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with contextlib.suppress(ProtocolError, PayloadError):
        HelloTranscript.decode(json.dumps(raw).encode())


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_transcript_bytes(data):
    with contextlib.suppress(ProtocolError, PayloadError):
        HelloTranscript.decode(data)


@FUZZ
@given(kind=st.sampled_from([HelloClaim, TrainOrder, TrainReport]),
       raw=st.dictionaries(st.sampled_from(["round", "acknowledged", "loss", "grad-norm",
                                            "num-examples", "step", "partition-id", "backend",
                                            "state", "identity", "signature", "x"]), JSON,
                           max_size=9))
def test_fuzz_control_messages(kind, raw):
    with contextlib.suppress(ProtocolError, PayloadError):
        kind.decode(json.dumps(raw).encode())


VALUES = st.one_of(st.binary(max_size=70), st.integers(-5, 5), st.text(max_size=5),
                   st.booleans(), st.floats(allow_nan=True))


@FUZZ
@given(clear=st.dictionaries(st.sampled_from(["identity", "transcript", "signature",
                                              "node-public-key", "x"]), VALUES, max_size=4),
       graphs=st.dictionaries(st.text(max_size=5), VALUES, max_size=3),
       extra=st.booleans())
def test_fuzz_records(clear, graphs, extra):
    content = RecordDict({"cola": ConfigRecord(clear), "graphs": ConfigRecord(graphs)})
    if extra:
        content["metrics"] = MetricRecord({"loss": 1.0})
    for decode in (Hello.from_record, HelloReply.from_record, Sealed.from_record):
        with contextlib.suppress(ProtocolError, PayloadError):
            decode(content)
    with contextlib.suppress(ProtocolError, PayloadError):
        Sealed.from_record(RecordDict({"sealed": ArrayRecord()}))


GOOD_SESSION = NodeSession(node_key=bytes(32), transcript=b"{}", partition_id=1,
                           backend="torch", latest=2, states={1: 0, 2: 1}).to_record()


def test_stored_session_round_trips():
    assert NodeSession.from_record(GOOD_SESSION).states == {1: 0, 2: 1}


@FUZZ
@given(key=st.sampled_from(sorted(GOOD_SESSION)), value=VALUES)
def test_fuzz_stored_session(key, value):
    record = ConfigRecord({**GOOD_SESSION, key: value})
    with contextlib.suppress(ProtocolError):
        NodeSession.from_record(record)


def test_node_caps_bound_the_adapters_a_plan_asks_for():
    """Every dimension within its cap, but together adapters larger than a reply may be."""
    wide = dataclasses.replace(plan(), layout=Layout(tuple(
        LayerInfo(f"l{i}", 8192, 8192) for i in range(4))))
    with pytest.raises(ProtocolError, match="adapters take"):
        NodeCaps(max_payload_mb=64).check(wide, 1)  # partition 1: a Linear adapter
    NodeCaps(max_payload_mb=2048).check(wide, 1)


CONV = LayerInfo("conv", 3 * 3 * 5, 8, "conv2d", True, kernel_size=(3, 5), stride=(2, 1),
                 padding=(1, 2), dilation=(1, 1))


def test_a_plan_carries_a_convolution_s_geometry():
    p = dataclasses.replace(plan(), layout=Layout((CONV, LayerInfo("head", 64, 10))))
    raw = json.loads(json.dumps(p.to_dict()))
    assert raw["layout"][0]["kernel_size"] == [3, 5]
    back = Plan.from_dict(raw)
    assert back == p and back.layout["conv"].kernel_size == (3, 5)
    assert back.layout["conv"].in_channels == 3


@pytest.mark.parametrize("layer, key, value, expected", [
    (0, "stride", [0, 1], r"stride: expected an integer in \[1, 1024\]"),
    (0, "padding", [-1, 0], r"padding: expected an integer in \[0, 1024\]"),
    (0, "dilation", [1], "dilation: expected two integers"),
    (0, "kernel_size", [3, 5.0], "kernel_size: expected int"),
    (0, "kernel_size", [3, 4], "must be a multiple of 12"),
    (1, "kernel_size", [3, 3], "a linear layer has no geometry"),
])
def test_a_plan_layout_s_geometry_is_checked(layer, key, value, expected):
    raw = dataclasses.replace(plan(), layout=Layout((CONV, LayerInfo("head", 64, 10)))).to_dict()
    raw["layout"][layer][key] = value
    with pytest.raises(ProtocolError, match=expected):
        Plan.from_dict(json.loads(json.dumps(raw)))
