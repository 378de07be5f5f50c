"""Sealed blobs travel in Flower ArrayRecords as uint8 arrays."""

import numpy as np
import pytest

pytest.importorskip("flwr")
from flwr.app import Array, ArrayRecord, ConfigRecord

from cola_fed.errors import MalformedPayloadError
from cola_fed.federation.records import PAYLOAD_KEY, blob_to_record, record_to_blob


def test_blob_round_trip_through_an_array_record():
    blob = bytes(range(256)) * 9
    record = blob_to_record(blob)
    assert record.count_bytes() >= len(blob)
    assert record_to_blob(record) == blob
    # the same bytes as Flower's own Array(ndarray), and such an array reads back as well
    flower = Array(np.frombuffer(blob, dtype=np.uint8))
    assert record[PAYLOAD_KEY].data == flower.data
    assert record_to_blob(ArrayRecord({PAYLOAD_KEY: flower})) == blob
    assert np.array_equal(record[PAYLOAD_KEY].numpy(), np.frombuffer(blob, dtype=np.uint8))


def test_a_payload_survives_flowers_serialisation():
    from flwr.common import serde

    blob = bytes(range(256)) * 1000
    proto = serde.array_record_to_proto(blob_to_record(blob))
    assert record_to_blob(serde.array_record_from_proto(proto)) == blob


def test_anything_else_is_refused():
    with pytest.raises(MalformedPayloadError, match="only 'payload'"):
        record_to_blob(ArrayRecord({"other": Array(np.zeros(3, np.uint8))}))
    with pytest.raises(MalformedPayloadError, match="1-D uint8"):
        record_to_blob(ArrayRecord({"payload": Array(np.zeros((2, 2), np.float32))}))
    with pytest.raises(MalformedPayloadError):
        record_to_blob(ConfigRecord({"payload": b"abc"}))
    lying = Array(dtype="uint8", shape=(10,), stype="numpy.ndarray", data=b"\x93NUMPY junk")
    with pytest.raises(MalformedPayloadError, match=r"unreadable|does not match"):
        record_to_blob(ArrayRecord({"payload": lying}))
