"""Shipped train-step graphs are checked before ONNX Runtime sees them (``edge.graph_check``),
and the node's graph cache only keeps and returns graphs that pass, written atomically."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cola_fed.adapters.spec import AdapterSpec
from cola_fed.edge.cache import GraphCache
from cola_fed.edge.graph_check import ALLOWED_OPS, check_graph
from cola_fed.edge.graphs import GraphKey, content_hash
from cola_fed.errors import GraphError, PayloadError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.external_data_helper import set_external_data  # noqa: E402

# Every adapter family and size variant x every optimizer graph. Shapes and the lowrank, linear
# and mlp-gelu specs are those of tests/test_edge.py, so both files share export_train_step's
# per-process cache when they run together.
SPECS = [AdapterSpec(kind="lowrank", rank=4), AdapterSpec(kind="linear", bias=True),
         AdapterSpec(kind="linear", bias=False)]
SPECS += [AdapterSpec(kind="mlp", hidden=12, depth=1, activation=activation)
          for activation in ("relu", "gelu", "tanh", "silu")]
OPTIMIZERS = [("adamw", False), ("sgd", False), ("sgd", True)]  # sgd-nesterov: its own graph
KEYS = [GraphKey(spec, 24, 16, opt, nesterov) for spec in SPECS for opt, nesterov in OPTIMIZERS]


@pytest.fixture(scope="module")
def exported() -> dict[str, bytes]:
    """``name -> ONNX bytes`` of every variant, exported once per module (about 1 s each)."""
    pytest.importorskip("onnxscript")
    from cola_fed.edge.export import export_graphs

    return export_graphs(KEYS)


@pytest.fixture(scope="module")
def small_graph(exported) -> bytes:
    """The smallest real graph, for the fuzz tests."""
    return min(exported.values(), key=len)


def op_types(model: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_from_string(model).graph.node}


# -- what the exporter emits passes, and pins the allow-list -------------------------------


def test_every_exported_graph_passes(exported):
    assert len(exported) == len(KEYS) == 21
    for name, model in exported.items():
        check_graph(model, name=name)
        extra = op_types(model) - ALLOWED_OPS
        assert not extra, f"{name} uses {sorted(extra)}, not in graph_check.ALLOWED_OPS"


def test_the_allow_list_is_exactly_what_the_exporter_emits(exported):
    emitted = set().union(*(op_types(model) for model in exported.values()))
    assert not emitted - ALLOWED_OPS, f"add to ALLOWED_OPS: {sorted(emitted - ALLOWED_OPS)}"
    assert not ALLOWED_OPS - emitted, f"no longer emitted: {sorted(ALLOWED_OPS - emitted)}"
    for model in exported.values():  # the graphs whose tensors must be inline carry some
        graph = onnx.load_from_string(model).graph
        assert all(not t.external_data for t in graph.initializer)


# -- hand-made graphs that the exporter never emits are refused ----------------------------


def make_model(nodes, *, initializers=(), functions=(), opsets=(("", 20),), **graph_fields):
    """A small ONNX model: ``x`` in, ``y`` out, through ``nodes``."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=list(initializers), **graph_fields)
    model = helper.make_model(graph, functions=list(functions),
                              opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    return model.SerializeToString()


def weight(name="w", *, external=False):
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [2], struct.pack("<2f", 1.0, 2.0),
                                raw=True)
    if external:
        tensor.data_location = TensorProto.EXTERNAL
        set_external_data(tensor, location="/etc/passwd")
    return tensor


def test_the_hand_made_baseline_passes():
    check_graph(make_model([helper.make_node("Add", ["x", "w"], ["y"])],
                           initializers=[weight()]), name="ok")
    constant = helper.make_node("Constant", [], ["c"], value=weight("c"))
    check_graph(make_model([constant, helper.make_node("Add", ["x", "c"], ["y"])],
                           opsets=[("ai.onnx", 20)]), name="ok")


@pytest.mark.parametrize("op_type", ["Loop", "Scan", "Softmax", "Conv", "LSTM"])
def test_an_operator_the_exporter_never_emits_is_refused(op_type):
    model = make_model([helper.make_node(op_type, ["x"], ["y"])])
    with pytest.raises(GraphError, match=rf"'g-{op_type}'.*node 0 \('{op_type}'\) is not an op"):
        check_graph(model, name=f"g-{op_type}")


def test_a_custom_domain_is_refused():
    node = helper.make_node("Add", ["x", "x"], ["y"], domain="com.evil")
    with pytest.raises(GraphError, match=r"custom domain 'com\.evil'"):
        check_graph(make_model([node], opsets=[("", 20)]), name="g")
    plain = helper.make_node("Add", ["x", "x"], ["y"])
    with pytest.raises(GraphError, match=r"imports the operator domain 'com\.microsoft'"):
        check_graph(make_model([plain], opsets=[("", 20), ("com.microsoft", 1)]), name="g")


def test_an_initializer_with_external_data_is_refused():
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])],
                       initializers=[weight(external=True)])
    with pytest.raises(GraphError, match="initializer 'w' points at external data"):
        check_graph(model, name="g")
    only_location = weight()  # data_location EXTERNAL alone, without the entries
    only_location.data_location = TensorProto.EXTERNAL
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])],
                       initializers=[only_location])
    with pytest.raises(GraphError, match="data_location EXTERNAL"):
        check_graph(model, name="g")


def test_a_constant_with_an_external_tensor_is_refused():
    constant = helper.make_node("Constant", [], ["c"], value=weight("c", external=True))
    model = make_model([constant, helper.make_node("Add", ["x", "c"], ["y"])])
    with pytest.raises(GraphError, match=r"node 0 \('Constant'\) attribute 'value' tensor 'c' "
                                         "points at external data"):
        check_graph(model, name="g")


def test_sparse_tensors_are_refused():
    sparse = helper.make_sparse_tensor(weight("s"), helper.make_tensor(
        "i", TensorProto.INT64, [2], [0, 1]), [4])
    model = make_model([helper.make_node("Add", ["x", "x"], ["y"])], sparse_initializer=[sparse])
    with pytest.raises(GraphError, match="sparse initializer"):
        check_graph(model, name="g")
    constant = helper.make_node("Constant", [], ["c"], sparse_value=sparse)
    with pytest.raises(GraphError, match="'sparse_value' is a sparse tensor"):
        check_graph(make_model([constant, helper.make_node("Add", ["x", "c"], ["y"])]), name="g")


def test_subgraphs_are_refused():
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    cond = helper.make_node("If", ["x"], ["y"], then_branch=branch, else_branch=branch)
    with pytest.raises(GraphError,
                       match=r"node 0 \('If'\) attribute '(then|else)_branch' is a subgraph"):
        check_graph(make_model([cond]), name="g")
    # even on an allowed operator, and as a list of graphs
    sneaky = helper.make_node("Add", ["x", "x"], ["y"], bodies=[branch])
    with pytest.raises(GraphError, match="attribute 'bodies' is a subgraph"):
        check_graph(make_model([sneaky]), name="g")


def test_model_local_functions_and_training_info_are_refused():
    function = helper.make_function("local", "Double", ["a"], ["b"],
                                    [helper.make_node("Add", ["a", "a"], ["b"])],
                                    [helper.make_opsetid("", 20)])
    call = helper.make_node("Double", ["x"], ["y"], domain="local")
    model = make_model([call], functions=[function], opsets=[("", 20), ("local", 1)])
    with pytest.raises(GraphError, match="model-local functions"):
        check_graph(model, name="g")
    proto = onnx.load_from_string(make_model([helper.make_node("Add", ["x", "x"], ["y"])]))
    proto.training_info.add().algorithm.CopyFrom(proto.graph)
    with pytest.raises(GraphError, match="training_info"):
        check_graph(proto.SerializeToString(), name="g")


def test_size_type_and_missing_graph_are_refused():
    model = make_model([helper.make_node("Add", ["x", "x"], ["y"])])
    with pytest.raises(GraphError, match="over the limit of 10"):
        check_graph(model, name="g", max_bytes=10)
    with pytest.raises(GraphError, match="expected bytes, got str"):
        check_graph("not bytes", name="g")  # type: ignore[arg-type]
    with pytest.raises(GraphError, match="has no graph"):
        check_graph(b"", name="g")


def test_merged_graph_occurrences_are_all_checked():
    """Protobuf merges repeated occurrences of ModelProto.graph: a second one is checked too."""
    good = make_model([helper.make_node("Add", ["x", "x"], ["y"])])
    bad = helper.make_graph([helper.make_node("Loop", ["x"], ["y"])], "g", [], [])
    tail = b"\x3a" + _varint(len(bad.SerializeToString())) + bad.SerializeToString()  # field 7
    assert len(onnx.load_from_string(good + tail).graph.node) == 2
    with pytest.raises(GraphError, match="'Loop'"):
        check_graph(good + tail, name="g")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


@pytest.mark.parametrize("data, reason", [
    (b"\x3a\x05ab", "runs past the end"),  # graph: length 5, 2 bytes left
    (b"\x3a\xff", "truncated varint"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\x08" + b"\xff" * 9 + b"\x7f", "over 64 bits"),
    (b"\x0b", "wire type 3"),  # a group
    (b"\x00\x00", "field number 0"),
    (b"\x39\x01\x02", "truncated 8-byte"),  # graph as fixed64
    (b"\x38\x01", "wire type 0, not 2"),  # graph as a varint
])
def test_malformed_bytes_are_named(data, reason):
    with pytest.raises(GraphError, match=f"'g': malformed protobuf.*{reason}"):
        check_graph(data, name="g")


# -- arbitrary bytes raise GraphError or pass, never anything else -------------------------


def check_only_graph_errors(data: bytes) -> None:
    with contextlib.suppress(GraphError):
        check_graph(data, name="fuzz")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_graph_error(data):
    check_only_graph_errors(data)


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(min_value=0), flips=st.lists(st.integers(min_value=0), max_size=4))
def test_truncated_or_bit_flipped_graphs_raise_only_graph_error(small_graph, cut, flips):
    data = bytearray(small_graph[:cut % (len(small_graph) + 1)])
    for flip in flips:
        if data:
            data[flip // 8 % len(data)] ^= 1 << flip % 8
    check_only_graph_errors(bytes(data))


def test_every_truncation_of_the_head_is_graph_error_or_passes(small_graph):
    for cut in range(min(len(small_graph), 400)):  # every byte of the header and first nodes
        check_only_graph_errors(small_graph[:cut])


def test_the_check_needs_neither_torch_nor_onnx():
    code = textwrap.dedent("""
        import sys
        sys.modules.update(torch=None, onnx=None, onnxscript=None)  # import fails, as on a node
        from cola_fed.edge.graph_check import check_graph
        from cola_fed.edge.cache import GraphCache
        from cola_fed.errors import GraphError
        try:
            check_graph(b"\\x3a\\x05", name="g")
        except GraphError:
            print("ok")
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- the graph cache -----------------------------------------------------------------------


@pytest.fixture
def graph() -> bytes:
    return make_model([helper.make_node("Add", ["x", "w"], ["y"])], initializers=[weight()])


def test_the_cache_stores_checked_graphs_privately(tmp_path, graph):
    cache = GraphCache(tmp_path / "graphs")
    digest = content_hash(graph)
    assert not cache.has("g", digest)
    cache.put("g", graph, digest)
    assert cache.has("g", digest) and cache.get("g", digest) == graph
    assert os.listdir(tmp_path / "graphs") == [f"{digest}.onnx"]  # no temporary file left
    assert (tmp_path / "graphs").stat().st_mode & 0o777 == 0o700 & ~_umask()
    assert (tmp_path / "graphs" / f"{digest}.onnx").stat().st_mode & 0o777 == 0o600
    cache.put("g", graph, digest)  # again: nothing changes
    assert os.listdir(tmp_path / "graphs") == [f"{digest}.onnx"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_has_is_false_after_an_alteration_and_put_repairs(tmp_path, graph):
    cache = GraphCache(tmp_path)
    digest = content_hash(graph)
    cache.put("g", graph, digest)
    path = tmp_path / f"{digest}.onnx"
    path.write_bytes(graph + b"\0")
    assert not cache.has("g", digest)
    assert not path.exists()  # the altered file is gone
    cache.put("g", graph, digest)
    assert cache.get("g", digest) == graph


def test_put_refuses_a_bad_graph_and_stores_nothing(tmp_path):
    cache = GraphCache(tmp_path / "graphs")
    bad = make_model([helper.make_node("Add", ["x", "w"], ["y"])],
                     initializers=[weight(external=True)])
    with pytest.raises(GraphError, match="'evil': initializer 'w' points at external data"):
        cache.put("evil", bad, content_hash(bad))
    assert not (tmp_path / "graphs").exists()
    with pytest.raises(GraphError, match="'junk': malformed"):
        cache.put("junk", b"\xff" * 8, content_hash(b"\xff" * 8))


def test_get_refuses_a_stored_bad_graph(tmp_path):
    """A file written by hand (or by an older version) under its right hash is still checked."""
    bad = make_model([helper.make_node("Loop", ["x"], ["y"])])
    digest = content_hash(bad)
    (tmp_path / f"{digest}.onnx").write_bytes(bad)
    cache = GraphCache(tmp_path)
    assert cache.has("g", digest)  # intact: has() only says the bytes are the listed ones
    with pytest.raises(GraphError, match="'Loop'"):
        cache.get("g", digest)
    with pytest.raises(PayloadError, match="altered on disk"):
        (tmp_path / f"{digest}.onnx").write_bytes(bad + b"\0")
        cache.get("g", digest)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, graph, monkeypatch):
    cache = GraphCache(tmp_path)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.put("g", graph, content_hash(graph))
    assert os.listdir(tmp_path) == []


def test_exported_graphs_round_trip_through_the_cache(tmp_path, exported):
    cache = GraphCache(tmp_path)
    for name, model in list(exported.items())[:3]:
        cache.put(name, model, content_hash(model))
        assert cache.get(name, content_hash(model)) == model
    assert len(os.listdir(tmp_path)) == 3


def test_an_onnx_and_ort_format_polyglot_is_refused_and_never_loaded_as_ort():
    """Bytes that parse as a harmless ONNX model (no nodes) but carry an ORT-format model that
    ONNX Runtime would load by its "ORTM" mark at bytes 4-8, running operators outside the
    allow-list: the check refuses the mark, and the learner's sessions read ONNX only."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from cola_fed.edge.mobile import to_ort_format

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "evil",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    ort_model = to_ort_format(model.SerializeToString())
    root = 0x08 | (0x0D << 16)  # bytes 0-3: a flatbuffer root offset and valid protobuf
    head = bytes([0x08, 0, 0x0D, 0]) + b"ORTM" + bytes(4)
    start, tag = root - int.from_bytes(ort_model[:4], "little"), bytes([0xC2, 0x3E])
    pad = start - len(head) - len(tag) - 3  # a 3-byte length varint
    body = bytes(pad) + ort_model
    size = len(body)
    polyglot = head + tag + bytes([size & 0x7F | 0x80, size >> 7 & 0x7F | 0x80, size >> 14]) \
        + body + b"\x3a\x00"
    assert polyglot.index(ort_model) == start
    ort.InferenceSession(polyglot, providers=["CPUExecutionProvider"])  # ORT would run it
    with pytest.raises(GraphError, match="ORT format"):
        check_graph(polyglot, name="polyglot")
    with pytest.raises(GraphError):
        check_graph(ort_model, name="ort")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ONNX")
    with pytest.raises(Exception):  # noqa: B017 - what the learner's sessions are told
        ort.InferenceSession(ort_model, options, providers=["CPUExecutionProvider"])
