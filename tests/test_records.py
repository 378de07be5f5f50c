"""Sealed blobs travel in Flower ArrayRecords as uint8 arrays."""

import numpy as np
import pytest

pytest.importorskip("flwr")
from flwr.app import Array, ArrayRecord, ConfigRecord

from cola_fed.errors import MalformedPayloadError
from cola_fed.federation.records import blob_to_record, record_to_blob


def test_blob_round_trip_through_an_array_record():
    blob = bytes(range(256)) * 9
    record = blob_to_record(blob)
    assert record.count_bytes() >= len(blob)
    assert record_to_blob(record) == blob


def test_anything_else_is_refused():
    with pytest.raises(MalformedPayloadError, match="only 'payload'"):
        record_to_blob(ArrayRecord({"other": Array(np.zeros(3, np.uint8))}))
    with pytest.raises(MalformedPayloadError, match="1-D uint8"):
        record_to_blob(ArrayRecord({"payload": Array(np.zeros((2, 2), np.float32))}))
    with pytest.raises(MalformedPayloadError):
        record_to_blob(ConfigRecord({"payload": b"abc"}))
