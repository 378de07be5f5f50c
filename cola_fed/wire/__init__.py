"""Sealed, compact payloads: the codec (safetensors + JSON header) and end-to-end encryption.

Torch-free: edge clients use this package with numpy, safetensors and cryptography alone.
"""

from cola_fed.wire.codec import (
    DECODERS,
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    WIRE_DTYPES,
    DecodeBudget,
    Limits,
    decode_adaptation,
    decode_adapter_state,
    decode_batch,
    decode_bundle,
    decode_metrics,
    encode_adaptation,
    encode_adapter_state,
    encode_batch,
    encode_bundle,
    encode_metrics,
)
from cola_fed.wire.crypto import (
    PROTOCOL_VERSION,
    ChannelState,
    SecureChannel,
    exchange_key_for_run,
    fingerprint,
    public_bytes,
    sign_transcript,
    transcript_hash,
    verify_transcript,
)

__all__ = [
    "DECODERS",
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "PROTOCOL_VERSION",
    "WIRE_DTYPES",
    "ChannelState",
    "DecodeBudget",
    "Limits",
    "SecureChannel",
    "decode_adaptation",
    "decode_adapter_state",
    "decode_batch",
    "decode_bundle",
    "decode_metrics",
    "encode_adaptation",
    "encode_adapter_state",
    "encode_batch",
    "encode_bundle",
    "encode_metrics",
    "exchange_key_for_run",
    "fingerprint",
    "public_bytes",
    "sign_transcript",
    "transcript_hash",
    "verify_transcript",
]
