"""Sealed blobs in Flower records.

A sealed payload travels as a 1-D uint8 ``Array`` in an ``ArrayRecord``: Flower chunks arrays
for transport, while bytes inside a ``ConfigRecord`` are sent whole. Small clear metadata goes in
a ``ConfigRecord`` beside it.

Payloads are the largest objects a node handles (tens of MB of adaptation data per round), so
both directions build and read Flower's ``.npy`` serialisation of the array directly: one copy
to wrap, none to unwrap.
"""

from __future__ import annotations

import io

import numpy as np
from flwr.app import Array, ArrayRecord

from cola_fed.errors import MalformedPayloadError

PAYLOAD_KEY = "payload"


NUMPY_STYPE = "numpy.ndarray"  # Flower's serialisation type of arrays saved with np.save


def blob_to_record(blob: bytes) -> ArrayRecord:
    """Wrap a sealed blob for a ``RecordDict`` (as ``Array(np.frombuffer(blob, uint8))`` would,
    without its intermediate copies)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (len(blob),)})
    array = Array(dtype="uint8", shape=(len(blob),), stype=NUMPY_STYPE,
                  data=header.getvalue() + bytes(blob))
    return ArrayRecord({PAYLOAD_KEY: array})


def record_to_blob(record: ArrayRecord) -> memoryview:
    """Unwrap a sealed blob, refusing anything but one 1-D uint8 array."""
    if not isinstance(record, ArrayRecord) or list(record.keys()) != [PAYLOAD_KEY]:
        raise MalformedPayloadError(
            f"expected an ArrayRecord holding only {PAYLOAD_KEY!r}, got "
            f"{list(record.keys()) if isinstance(record, ArrayRecord) else type(record).__name__}"
        )
    array = record[PAYLOAD_KEY]
    if array.dtype != "uint8" or len(array.shape) != 1 or array.stype != NUMPY_STYPE:
        raise MalformedPayloadError(
            f"a sealed payload must be a 1-D uint8 array, got {array.dtype} {array.shape} "
            f"({array.stype})"
        )
    data = bytes(array.data) if not isinstance(array.data, bytes) else array.data
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, _, dtype = read_header(stream)
    except Exception as err:  # numpy's header reader raises many types on odd headers
        raise MalformedPayloadError(f"the sealed payload's array is unreadable: {err!r}") from None
    start = stream.tell()
    if dtype != np.uint8 or len(shape) != 1 or shape[0] != len(data) - start:
        raise MalformedPayloadError("the sealed payload's array header does not match its data")
    return memoryview(data)[start:]  # the payload itself, in place
