"""Check a shipped train-step graph before ONNX Runtime sees it. Torch-free and onnx-free.

A node gets its graphs from the server, checked against a signed list of SHA-256 hashes. An
authentic graph is still parsed by onnxruntime's C++ protobuf loader, and an ONNX model can make
that loader read files (initialisers or tensor attributes with external data), run nested graphs
(``If``/``Loop``/``Scan`` bodies, training_info) or call operators and functions from domains
outside ONNX's own. The exporter (``cola_fed.edge.export``) emits none of those, so this module
refuses them, and every operator outside :data:`ALLOWED_OPS`, before a session is created.

An edge node has no ``onnx`` package, so the check reads the protobuf wire format itself
(https://protobuf.dev/programming-guides/encoding/): a message is a sequence of fields, each a
varint tag ``field_number << 3 | wire_type`` followed by a varint, a fixed 4 or 8 bytes, or a
varint length and that many bytes (strings, bytes, embedded messages). Every length is checked
against what is left, so malformed bytes give :class:`~cola_fed.errors.GraphError` and nothing
else. Only the fields below are interpreted; all other fields are skipped by their length.

Protobuf merges repeated occurrences of a singular message field and keeps the last value of a
singular scalar, so every occurrence of a message is checked, and a string takes its last value.
"""

from __future__ import annotations

from collections.abc import Iterator

from cola_fed.errors import GraphError

#: Operators (default ONNX domain) of every train-step graph the exporter emits: all adapter
#: families and sizes (lowrank; linear with and without bias; mlp with relu, gelu, tanh, silu)
#: under AdamW, SGD and SGD with Nesterov momentum, collected with the ``onnx`` package from
#: ``export_train_step`` (torch.onnx dynamo export, opset 20, ``optimize=False``).
#: ``tests/test_graph_check.py`` re-exports them all and fails, naming the operator, if the
#: exporter and this list drift apart in either direction.
ALLOWED_OPS: frozenset[str] = frozenset({
    "Add", "Cast", "Constant", "Div", "Erf", "Exp", "Gelu", "Greater", "MatMul", "Mul", "Pow",
    "ReduceSum", "Relu", "Sigmoid", "Sqrt", "Sub", "Tanh", "Transpose",
})

#: The default ONNX operator domain, under both of its names.
DEFAULT_DOMAINS: frozenset[str] = frozenset({"", "ai.onnx"})

# Wire types (protobuf encoding). 3 and 4 (groups) are not used by onnx.proto and are refused.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_FIELD_NUMBER = 2**29 - 1

# Field numbers of onnx.proto (checked against onnx 1.23's descriptors,
# ``onnx.ModelProto.DESCRIPTOR.fields_by_name[...].number``).
_MODEL_GRAPH = 7  # ModelProto.graph: GraphProto
_MODEL_OPSET_IMPORT = 8  # ModelProto.opset_import: repeated OperatorSetIdProto
_MODEL_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto
_MODEL_TRAINING_INFO = 20  # ModelProto.training_info: repeated TrainingInfoProto (graphs)
_MODEL_FUNCTIONS = 25  # ModelProto.functions: repeated FunctionProto
_OPSET_DOMAIN = 1  # OperatorSetIdProto.domain: string
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto.key, .value: string
_GRAPH_NODE = 1  # GraphProto.node: repeated NodeProto
_GRAPH_INITIALIZER = 5  # GraphProto.initializer: repeated TensorProto
_GRAPH_SPARSE_INITIALIZER = 15  # GraphProto.sparse_initializer: repeated SparseTensorProto
_NODE_OP_TYPE = 4  # NodeProto.op_type: string
_NODE_ATTRIBUTE = 5  # NodeProto.attribute: repeated AttributeProto
_NODE_DOMAIN = 7  # NodeProto.domain: string
_ATTR_NAME = 1  # AttributeProto.name: string
_ATTR_T = 5  # AttributeProto.t: TensorProto
_ATTR_G = 6  # AttributeProto.g: GraphProto
_ATTR_TENSORS = 10  # AttributeProto.tensors: repeated TensorProto
_ATTR_GRAPHS = 11  # AttributeProto.graphs: repeated GraphProto
_ATTR_SPARSE_TENSOR = 22  # AttributeProto.sparse_tensor: SparseTensorProto
_ATTR_SPARSE_TENSORS = 23  # AttributeProto.sparse_tensors: repeated SparseTensorProto
_TENSOR_NAME = 8  # TensorProto.name: string
_TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data: repeated StringStringEntryProto
_TENSOR_DATA_LOCATION = 14  # TensorProto.data_location: enum DataLocation
_DATA_LOCATION_DEFAULT, _DATA_LOCATION_EXTERNAL = 0, 1  # TensorProto.DataLocation

Value = int | memoryview
Fields = dict[int, list[tuple[int, Value]]]


class _Refused(Exception):
    """Internal: why a graph is refused; :func:`check_graph` adds the graph's name."""


#: bytes 4-8 of an ORT-format model: ONNX Runtime loads such bytes in its own format
ORT_FORMAT_MARK = b"ORTM"


def check_graph(model: bytes, *, name: str, max_bytes: int = 16 * 2**20) -> None:
    """Raise :class:`GraphError` unless ``model`` is an ONNX model that only uses what the
    exporter emits: operators of :data:`ALLOWED_OPS` in the default domain, tensors with their
    data inline, no subgraphs, sparse tensors, training_info or model-local functions, at most
    ``max_bytes`` long. ``name`` (the graph's name) is only used in the error message."""
    try:
        if not isinstance(model, (bytes, bytearray)):
            raise _Refused(f"expected bytes, got {type(model).__name__}")
        if len(model) > max_bytes:
            raise _Refused(f"{len(model):,} bytes is over the limit of {max_bytes:,}")
        if bytes(model[4:8]) == ORT_FORMAT_MARK:
            # ONNX Runtime would load these bytes as an ORT-format model, whatever else they
            # parse as; sessions are also told to read ONNX only (ort_learner)
            raise _Refused("it carries the ORT format mark at bytes 4-8")
        _check_model(memoryview(model))
    except _Refused as err:
        raise GraphError(f"train-step graph {name!r}: {err}; refused") from None


# -- the model's structure -----------------------------------------------------------------


def _check_model(buf: memoryview) -> None:
    """ModelProto: one or more (merged) graphs, default-domain opsets, no functions or
    training_info."""
    fields = _parse(buf, "ModelProto")
    if _MODEL_FUNCTIONS in fields:
        raise _Refused("it defines model-local functions")
    if _MODEL_TRAINING_INFO in fields:
        raise _Refused("it carries training_info (more graphs)")
    for opset in _messages(fields, _MODEL_OPSET_IMPORT, "ModelProto.opset_import"):
        domain = _string(_parse(opset, "OperatorSetIdProto"), _OPSET_DOMAIN, "opset domain")
        if domain not in DEFAULT_DOMAINS:
            raise _Refused(f"it imports the operator domain {domain!r}")
    for entry in _messages(fields, _MODEL_METADATA_PROPS, "ModelProto.metadata_props"):
        _check_entry(entry, "ModelProto.metadata_props")
    graphs = _messages(fields, _MODEL_GRAPH, "ModelProto.graph")
    if not graphs:
        raise _Refused("it has no graph")
    for graph in graphs:
        _check_graph_proto(graph)


def _check_entry(buf: memoryview, what: str) -> None:
    """StringStringEntryProto: a well-formed key and value (read, not restricted)."""
    fields = _parse(buf, what)
    _string(fields, _ENTRY_KEY, f"{what} key")
    _string(fields, _ENTRY_VALUE, f"{what} value")


def _check_graph_proto(buf: memoryview) -> None:
    """GraphProto: every node and initializer checked; sparse initializers refused."""
    fields = _parse(buf, "GraphProto")
    if _GRAPH_SPARSE_INITIALIZER in fields:
        raise _Refused("it has a sparse initializer")
    for tensor in _messages(fields, _GRAPH_INITIALIZER, "GraphProto.initializer"):
        _check_tensor(tensor, "initializer")
    for index, node in enumerate(_messages(fields, _GRAPH_NODE, "GraphProto.node")):
        _check_node(node, index)


def _check_node(buf: memoryview, index: int) -> None:
    """NodeProto: attributes first (subgraphs, external tensors), then domain and operator."""
    fields = _parse(buf, f"node {index}")
    op_type = _string(fields, _NODE_OP_TYPE, f"node {index} op_type")
    domain = _string(fields, _NODE_DOMAIN, f"node {index} domain")
    where = f"node {index} ({op_type!r})"
    for attribute in _messages(fields, _NODE_ATTRIBUTE, f"{where} attribute"):
        _check_attribute(attribute, where)
    if domain not in DEFAULT_DOMAINS:
        raise _Refused(f"{where} is in the custom domain {domain!r}")
    if op_type not in ALLOWED_OPS:
        raise _Refused(f"{where} is not an operator the exporter emits")


def _check_attribute(buf: memoryview, where: str) -> None:
    """AttributeProto: no graphs, no sparse tensors; tensors checked like initializers."""
    fields = _parse(buf, f"{where} attribute")
    label = f"{where} attribute {_string(fields, _ATTR_NAME, f'{where} attribute name')!r}"
    if _ATTR_G in fields or _ATTR_GRAPHS in fields:
        raise _Refused(f"{label} is a subgraph")
    if _ATTR_SPARSE_TENSOR in fields or _ATTR_SPARSE_TENSORS in fields:
        raise _Refused(f"{label} is a sparse tensor")
    for number in (_ATTR_T, _ATTR_TENSORS):
        for tensor in _messages(fields, number, label):
            _check_tensor(tensor, f"{label} tensor")


def _check_tensor(buf: memoryview, where: str) -> None:
    """TensorProto: its data inline, never in a file (external_data, data_location)."""
    fields = _parse(buf, where)
    label = f"{where} {_string(fields, _TENSOR_NAME, f'{where} name')!r}"
    if _TENSOR_EXTERNAL_DATA in fields:
        raise _Refused(f"{label} points at external data")
    for wire, value in fields.get(_TENSOR_DATA_LOCATION, []):
        if wire != _VARINT:
            raise _Refused(f"malformed protobuf: {label} data_location has wire type {wire}")
        if value != _DATA_LOCATION_DEFAULT:
            kind = "EXTERNAL" if value == _DATA_LOCATION_EXTERNAL else f"unknown ({value})"
            raise _Refused(f"{label} has data_location {kind}")


# -- typed access to parsed fields ---------------------------------------------------------


def _messages(fields: Fields, number: int, what: str) -> list[memoryview]:
    """Every occurrence of an embedded-message field (length-delimited)."""
    found = fields.get(number, [])
    for wire, _ in found:
        if wire != _LEN:
            raise _Refused(f"malformed protobuf: {what} has wire type {wire}, not {_LEN}")
    return [value for _, value in found if isinstance(value, memoryview)]


def _string(fields: Fields, number: int, what: str) -> str:
    """A singular string field: its last occurrence (protobuf's rule), ``""`` if absent."""
    values = _messages(fields, number, what)
    if not values:
        return ""
    try:
        return bytes(values[-1]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(f"malformed protobuf: {what} is not UTF-8") from None


# -- the wire format -----------------------------------------------------------------------


def _parse(buf: memoryview, what: str) -> Fields:
    """All fields of one message, ``number -> [(wire type, value), ...]`` in order."""
    fields: Fields = {}
    try:
        for number, wire, value in _fields(buf):
            fields.setdefault(number, []).append((wire, value))
    except _Refused as err:
        raise _Refused(f"malformed protobuf in {what}: {err}") from None
    return fields


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Value]]:
    """``(field number, wire type, value)`` of each field: an int for varints and fixed
    widths, a view of the bytes for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if not 1 <= number <= _MAX_FIELD_NUMBER:
            raise _Refused(f"field number {number} at byte {pos}")
        value: Value
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_I64, _I32):
            value, pos = _fixed(buf, pos, 8 if wire == _I64 else 4)
        elif wire == _LEN:
            value, pos = _delimited(buf, pos)
        else:
            raise _Refused(f"wire type {wire} of field {number} at byte {pos}")
        yield number, wire, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """A base-128 varint at ``pos`` (at most 10 bytes, below 2**64) and the position after."""
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise _Refused("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >= 1 << 64:
                raise _Refused("varint over 64 bits")
            return result, pos
    raise _Refused("varint longer than 10 bytes")


def _fixed(buf: memoryview, pos: int, width: int) -> tuple[int, int]:
    """A little-endian fixed-width field (fixed32/float or fixed64/double)."""
    if width > len(buf) - pos:
        raise _Refused(f"truncated {width}-byte field at byte {pos}")
    return int.from_bytes(buf[pos:pos + width], "little"), pos + width


def _delimited(buf: memoryview, pos: int) -> tuple[memoryview, int]:
    """A length-delimited field's bytes: a varint length, then exactly that many bytes."""
    length, pos = _varint(buf, pos)
    if length > len(buf) - pos:
        raise _Refused(f"length {length} at byte {pos} runs past the end ({len(buf) - pos} "
                       "bytes left)")
    return buf[pos:pos + length], pos + length


__all__ = ["ALLOWED_OPS", "DEFAULT_DOMAINS", "check_graph"]
