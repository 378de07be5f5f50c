"""The codec: exact round trips for every payload kind, and strict, allocation-free refusals."""

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cola_fed import AdaptationData, Layout
from cola_fed.errors import MalformedPayloadError, PayloadError
from cola_fed.gl.layout import LayerInfo
from cola_fed.wire import (
    Limits,
    decode_adaptation,
    decode_adapter_state,
    decode_batch,
    decode_metrics,
    encode_adaptation,
    encode_adapter_state,
    encode_batch,
    encode_metrics,
)
from cola_fed.wire.codec import pack

FLOATS = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@st.composite
def adaptation_data(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups = draw(st.integers(1, 3))
    data = AdaptationData({}, {}, {}, {}, loss=draw(FLOATS), num_samples=draw(st.integers(0, 9)))
    for g in range(groups):
        n, d_in = draw(st.integers(0, 6)), draw(st.integers(1, 5))
        data.inputs[f"group{g}"] = rng.standard_normal((n, d_in)).astype(np.float32)
        for m in range(draw(st.integers(1, 2))):
            name = f"enc.{g}.layer{m}"
            d_out = draw(st.integers(1, 5))
            if n and draw(st.booleans()):
                rows = rng.integers(0, n, size=draw(st.integers(0, 7)))
            else:
                rows = None
            count = n if rows is None else len(rows)
            data.grads[name] = rng.standard_normal((count, d_out)).astype(np.float32)
            data.input_of[name], data.rows[name] = f"group{g}", rows
    return data


def layout_of(data):
    return Layout(tuple(LayerInfo(n, data.layer(n)[0].shape[1], data.grads[n].shape[1])
                        for n in data.layer_names))


@settings(max_examples=150, deadline=None)
@given(adaptation_data())
def test_adaptation_round_trip_is_exact_in_float32(data):
    back = decode_adaptation(encode_adaptation(data), layout=layout_of(data))
    assert back.layer_names == data.layer_names and back.input_of == data.input_of
    assert back.loss == data.loss and back.num_samples == data.num_samples
    for name in data.layer_names:
        for got, want in zip(back.layer(name), data.layer(name)):
            assert got.dtype == np.float32 and np.array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(adaptation_data(), st.sampled_from(["float16", "bfloat16"]))
def test_lossy_casts_stay_within_their_precision(data, dtype):
    back = decode_adaptation(encode_adaptation(data, dtype=dtype))
    rel = {"float16": 2**-11, "bfloat16": 2**-8}[dtype]
    for name in data.layer_names:
        for got, want in zip(back.layer(name), data.layer(name)):
            assert np.all(np.abs(got - want) <= rel * np.abs(want) + 1e-7)


def test_bfloat16_rounds_to_nearest_even():
    values = np.array([1.0, 1.00390625, 1.01171875, -3.5, 0.0], dtype=np.float32)
    data = AdaptationData({"x": values[:, None]}, {"q": values[:, None]}, {"q": "x"})
    back = decode_adaptation(encode_adaptation(data, dtype="bfloat16"))
    # 1 + 2^-8 is a tie and rounds to even (1.0); 1 + 3 * 2^-8 rounds up to 1 + 2^-6
    assert back.inputs["x"][:, 0].tolist() == [1.0, 1.0, 1.015625, -3.5, 0.0]


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,6}(\.[a-z0-9]{1,4}){0,2}", fullmatch=True),
                       st.dictionaries(st.sampled_from(["A", "B", "weight", "bias"]),
                                       st.lists(FLOATS, min_size=0, max_size=6), max_size=3),
                       max_size=4))
def test_adapter_state_round_trip(raw):
    state = {layer: {p: np.asarray(v, dtype=np.float32) for p, v in params.items()}
             for layer, params in raw.items()}
    back = decode_adapter_state(encode_adapter_state(state))
    assert back.keys() == state.keys()
    for layer in state:
        assert back[layer].keys() == state[layer].keys()
        for p in state[layer]:
            assert np.array_equal(back[layer][p], state[layer][p])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5), st.integers(1, 8))
def test_batch_and_metrics_round_trip(n, length):
    rng = np.random.default_rng(n)
    batch = {"input_ids": rng.integers(0, 1000, (n, length)),
             "attention_mask": np.ones((n, length), dtype=np.int64),
             "labels": rng.integers(0, 2, n)}
    back = decode_batch(encode_batch(batch), expected_keys=set(batch))
    assert all(np.array_equal(back[k], batch[k]) for k in batch)
    metrics = {"loss": 0.25, "num-examples": n, "accuracy": 1.0}
    assert decode_metrics(encode_metrics(metrics)) == metrics


def test_empty_and_single_row_adaptation_data():
    for rows in (0, 1):
        data = AdaptationData({"q": np.ones((rows, 3), np.float32)},
                              {"q": np.ones((rows, 2), np.float32),
                               "v": np.ones((rows, 4), np.float32)},
                              {"q": "q", "v": "q"}, {"q": None, "v": None})
        back = decode_adaptation(encode_adaptation(data))
        assert back.layer("v")[1].shape == (rows, 4)


def test_torch_tensors_encode_like_numpy():
    torch = pytest.importorskip("torch")
    data = AdaptationData({"x": torch.ones(2, 3)}, {"q": torch.ones(1, 2)}, {"q": "x"},
                          {"q": torch.tensor([1])})
    back = decode_adaptation(encode_adaptation(data))
    assert back.layer("q")[0].tolist() == [[1.0, 1.0, 1.0]]


# --------------------------------------------------------------------------------------------
# hostile payloads: refused before any tensor is materialised

def forge(header: dict, data: bytes = b"", *, cola: dict | None = None) -> bytes:
    cola = cola or {"format": 1, "kind": "adaptation", "dtype": "float32", "layers": ["q"],
                    "input_of": {"q": "x"}, "rows": {"q": False}, "loss": 0.0, "num_samples": 1,
                    "weight_gradient": [], "parameter_gradient": {}}
    header = {**header, "__metadata__": {"cola": json.dumps(cola)}}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


GOOD = {"x/x": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
        "d/q": {"dtype": "F32", "shape": [1, 2], "data_offsets": [8, 16]}}


def test_forged_good_payload_decodes():
    assert decode_adaptation(forge(GOOD, bytes(16))).layer("q")[0].shape == (1, 2)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h["x/x"].update(shape=[2**40, 2**40]), "invalid shape"),
        (lambda h: h["x/x"].update(shape=[-1, 2]), "invalid shape"),
        (lambda h: h["x/x"].update(shape=[1, 2, 1, 1, 1]), "invalid shape"),
        (lambda h: h["x/x"].update(dtype="F8_E4M3"), "dtype"),
        (lambda h: h["x/x"].update(dtype="O"), "dtype"),
        (lambda h: h["x/x"].update(data_offsets=[0, 2**40]), "byte range"),
        (lambda h: h["x/x"].update(data_offsets=[8, 0]), "byte range"),
        (lambda h: h.update({"d/q\\n<script>": h.pop("d/q")}), "invalid tensor name"),
        (lambda h: h.pop("d/q"), "do not match the header"),
        (lambda h: h["d/q"].update(shape=[2, 1]), "gradient rows"),
    ],
)
def test_hostile_headers_are_refused(edit, message):
    header = json.loads(json.dumps(GOOD))
    edit(header)
    with pytest.raises(MalformedPayloadError, match=message):
        decode_adaptation(forge(header, bytes(16)))


def test_wrong_kind_version_and_layout_are_refused():
    blob = forge(GOOD, bytes(16))
    with pytest.raises(MalformedPayloadError, match="expected a 'adapter-state' payload"):
        decode_adapter_state(blob)
    with pytest.raises(MalformedPayloadError, match="format 2"):
        decode_adaptation(forge(GOOD, bytes(16), cola={"format": 2, "kind": "adaptation"}))
    other = Layout((LayerInfo("q", 3, 2),))
    with pytest.raises(MalformedPayloadError, match=r"expected x \[n, 3\]"):
        decode_adaptation(blob, layout=other)
    with pytest.raises(MalformedPayloadError, match="not an adapted layer"):
        decode_adaptation(blob, layout=Layout((LayerInfo("v", 2, 2),)))


def test_size_caps_apply_before_parsing():
    blob = forge(GOOD, bytes(16))
    with pytest.raises(MalformedPayloadError, match="exceeds the cap"):
        decode_adaptation(blob, limits=Limits(max_bytes=64))
    with pytest.raises(MalformedPayloadError, match="header length"):
        decode_adaptation(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(MalformedPayloadError, match="too short"):
        decode_adaptation(b"\x01")


def test_row_maps_out_of_range_and_non_finite_values_are_refused():
    data = AdaptationData({"x": np.ones((2, 2), np.float32)}, {"q": np.ones((1, 2), np.float32)},
                          {"q": "x"}, {"q": np.array([5])})
    with pytest.raises(MalformedPayloadError, match="row index out of range"):
        decode_adaptation(encode_adaptation(data))
    for field in ("inputs", "grads"):
        bad = AdaptationData({"x": np.ones((1, 2), np.float32)},
                             {"q": np.ones((1, 2), np.float32)}, {"q": "x"})
        next(iter(getattr(bad, field).values()))[0, 1] = np.nan if field == "grads" else np.inf
        with pytest.raises(MalformedPayloadError, match="NaN or Inf"):
            decode_adaptation(encode_adaptation(bad))


def test_adapter_state_shapes_are_checked_when_expected():
    blob = encode_adapter_state({"q": {"A": np.zeros((2, 3), np.float32)}})
    decode_adapter_state(blob, expected_shapes={"q": {"A": (2, 3)}})
    with pytest.raises(MalformedPayloadError, match="expected parameters"):
        decode_adapter_state(blob, expected_shapes={"q": {"A": (3, 3)}})


def test_no_pickle_anywhere():
    import pathlib

    import cola_fed

    root = pathlib.Path(cola_fed.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path


def test_garbage_is_a_payload_error():
    rng = np.random.default_rng(0)
    for _ in range(300):
        blob = rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8).tobytes()
        with pytest.raises(PayloadError):
            decode_adaptation(blob)
    with pytest.raises(PayloadError):
        decode_metrics(pack("metrics", {}, {"metrics": {"a": "text"}}))


def test_tensors_must_tile_the_data_section():
    import json as _json

    from cola_fed.errors import MalformedPayloadError
    from cola_fed.wire import decode_batch, encode_batch

    blob = encode_batch({"labels": np.arange(4, dtype=np.int64)})
    assert decode_batch(blob + b"")["labels"].tolist() == [0, 1, 2, 3]
    size = int.from_bytes(blob[:8], "little")
    header = _json.loads(blob[8:8 + size])
    for offsets in ([0, 24], [8, 40]):  # slack at the end; a gap at the start
        header["b/labels"]["shape"] = [(offsets[1] - offsets[0]) // 8]
        header["b/labels"]["data_offsets"] = offsets
        raw = _json.dumps(header).encode()
        forged = len(raw).to_bytes(8, "little") + raw + blob[8 + size:] + b"\0" * 8
        with pytest.raises(MalformedPayloadError):
            decode_batch(forged)


def test_an_empty_tensor_with_huge_other_dimensions_is_refused():
    """0 elements, but dimensions whose product overflows numpy's index range."""
    header = {"b/x": {"dtype": "F32", "shape": [2**26, 2**26, 2**26, 0], "data_offsets": [0, 0]},
              "__metadata__": {"cola": json.dumps({"format": 1, "kind": "batch",
                                                   "keys": ["x"]})}}
    text = json.dumps(header).encode()
    with pytest.raises(MalformedPayloadError, match="invalid shape"):
        decode_batch(struct.pack("<Q", len(text)) + text)


def test_an_adapter_state_listing_a_layer_without_tensors_is_refused():
    layout = Layout((LayerInfo("fc", 4, 3),))
    expected = {"fc": {"A": (2, 4), "B": (3, 2)}}
    tensors = {"a/fc/A": np.zeros((2, 4), np.float32), "a/fc/B": np.zeros((3, 2), np.float32)}
    blob = pack("adapter-state", tensors, {"layers": ["fc", "evil.layer"]})
    with pytest.raises(MalformedPayloadError):
        decode_adapter_state(blob, layout=layout, expected_shapes=expected)


def test_an_odd_npy_header_around_a_sealed_blob_is_refused():
    import io

    from flwr.app import Array, ArrayRecord

    from cola_fed.federation.records import NUMPY_STYPE, PAYLOAD_KEY, record_to_blob

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (4,)})
    raw = header.getvalue().replace(b"'|u1'", b"(('|u1',),)")
    record = ArrayRecord({PAYLOAD_KEY: Array(dtype="uint8", shape=(4,), stype=NUMPY_STYPE,
                                             data=raw + b"abcd")})
    with pytest.raises(MalformedPayloadError):
        record_to_blob(record)
