"""Sealed blobs in Flower records.

A sealed payload travels as a 1-D uint8 ``Array`` in an ``ArrayRecord``: Flower chunks arrays
for transport, while bytes inside a ``ConfigRecord`` are sent whole. Small clear metadata goes in
a ``ConfigRecord`` beside it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from cola_fed.errors import MalformedPayloadError

PAYLOAD_KEY = "payload"


def blob_to_record(blob: bytes) -> ArrayRecord:
    """Wrap a sealed blob for a ``RecordDict``."""
    return ArrayRecord({PAYLOAD_KEY: Array(np.frombuffer(bytes(blob), dtype=np.uint8))})


def record_to_blob(record: ArrayRecord) -> bytes:
    """Unwrap a sealed blob, refusing anything but one 1-D uint8 array."""
    if not isinstance(record, ArrayRecord) or list(record.keys()) != [PAYLOAD_KEY]:
        raise MalformedPayloadError(
            f"expected an ArrayRecord holding only {PAYLOAD_KEY!r}, got "
            f"{list(record.keys()) if isinstance(record, ArrayRecord) else type(record).__name__}"
        )
    array = record[PAYLOAD_KEY]
    if array.dtype != "uint8" or len(array.shape) != 1:
        raise MalformedPayloadError(
            f"a sealed payload must be a 1-D uint8 array, got {array.dtype} {array.shape}"
        )
    return array.numpy().tobytes()
