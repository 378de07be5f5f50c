"""End-to-end sealing of payloads between the server and one node, and the signed hello.
Torch-free.

- **Server identity**: a long-term Ed25519 key (``cola_fed.wire.identity``). It signs each
  node's hello transcript (protocol version, run, node, plan, graph hashes, the run's exchange
  key), so a node checks everything that steers it before it acts, against a fingerprint it
  pinned or remembered.
- **Key agreement**: X25519 between the server's per-run exchange key (derived from the identity
  key and the run id, so a restarted server re-derives it) and a per-run node key.
- **Key derivation**: HKDF-SHA256 over the shared secret, with the run id as salt and the
  protocol version, the direction, the node id and the SHA-256 of the signed hello transcript in
  the info: one 256-bit key per direction, bound to the exact hello the node accepted.
- **Sealing**: AES-256-GCM. The nonce is the sender's message counter, which never repeats under
  a key (one key per direction and session, the counter persists in the session state). The
  associated data binds protocol version, run id, node id, direction, message kind and counter,
  so a payload replayed, reordered, or delivered to another node, direction or kind fails. The
  round travels inside the seal (``cola_fed.federation.protocol``).
- **Replay and reordering**: the receiver accepts only counters above the last one it accepted.

Everything cryptographic comes from ``cryptography``; nothing here is a primitive of its own.
The exact byte layouts are specified in ``docs/security.md`` for native client implementers, and
pinned by known-answer tests.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cola_fed.errors import (
    AuthenticationError,
    ConfigError,
    MalformedPayloadError,
    ReplayError,
)

PROTOCOL_VERSION = 4
SERVER_TO_NODE = "server->node"
NODE_TO_SERVER = "node->server"
DIRECTIONS = {SERVER_TO_NODE: 1, NODE_TO_SERVER: 2}
MAGIC = b"CFS2"  # cola-fed sealed, envelope version 2
_HEADER = struct.Struct(">4sQ")  # magic, counter
_AAD = struct.Struct(">8sHQQQB")  # label, version, run id, node id, counter, direction
TAG_BYTES = 16
SIGNATURE_BYTES = 64
#: prefixed to a hello transcript before it is signed: a signature made for anything else
#: (another protocol, another message type) never verifies as a hello
HELLO_CONTEXT = b"cola-fed hello v2\x00"
_U64 = 2**64


# --------------------------------------------------------------------------------------------
# keys


def public_bytes(key: X25519PrivateKey | X25519PublicKey | Ed25519PrivateKey | Ed25519PublicKey
                 ) -> bytes:
    """The raw 32-byte public key of an X25519 or Ed25519 key (private or public)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: bytes) -> str:
    """SHA-256 of the raw public key, hex, in groups of four: what users compare and pin."""
    digest = hashlib.sha256(public).hexdigest()
    return ":".join(digest[i:i + 4] for i in range(0, len(digest), 4))


def normalise_fingerprint(value: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"server-key-fingerprint: expected a string, got {value!r}")
    digest = value.replace(":", "").replace(" ", "").lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(
            f"server-key-fingerprint: expected 64 hex digits (colons allowed), got {value!r}"
        )
    return ":".join(digest[i:i + 4] for i in range(0, 64, 4))


def exchange_key_for_run(identity: Ed25519PrivateKey, run_id: int) -> X25519PrivateKey:
    """The server's X25519 key for one run, derived from its identity key and the run id: a
    fresh key per run that a restarted server derives again without storing it."""
    seed = identity.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_u64(run_id, "run id"),
                info=b"cola-fed v2 exchange key")
    return X25519PrivateKey.from_private_bytes(hkdf.derive(seed))


def sign_transcript(identity: Ed25519PrivateKey, transcript: bytes) -> bytes:
    """The server's Ed25519 signature of a hello transcript."""
    return identity.sign(HELLO_CONTEXT + bytes(transcript))


def verify_transcript(identity_public: bytes, transcript: bytes, signature: bytes) -> None:
    """Check a hello transcript's signature; :class:`AuthenticationError` if it does not hold."""
    if len(identity_public) != 32 or len(signature) != SIGNATURE_BYTES:
        raise MalformedPayloadError("a server identity key is 32 bytes and a signature 64")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(identity_public)).verify(
            bytes(signature), HELLO_CONTEXT + bytes(transcript))
    except (InvalidSignature, ValueError):
        raise AuthenticationError(
            "the hello's signature does not verify under the server's identity key: the hello "
            "was rewritten on its way, or signed by another key; refused before acting on it"
        ) from None


NODE_CLAIM_CONTEXT = b"cola-fed node claim v1\x00"


def sign_node_claim(identity: Ed25519PrivateKey, transcript_digest: bytes,
                    node_public: bytes) -> bytes:
    """A node's Ed25519 signature binding its long-term identity to one session: the hello it
    answers (by transcript hash) and the exchange key it answers with. A restarted node proves
    with it that it is the node that held its partition."""
    return identity.sign(NODE_CLAIM_CONTEXT + bytes(transcript_digest) + bytes(node_public))


def verify_node_claim(identity_public: bytes, transcript_digest: bytes, node_public: bytes,
                      signature: bytes) -> None:
    """Check :func:`sign_node_claim`; :class:`AuthenticationError` if it does not hold."""
    if len(identity_public) != 32 or len(signature) != SIGNATURE_BYTES:
        raise MalformedPayloadError("a node identity key is 32 bytes and a signature 64")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(identity_public)).verify(
            bytes(signature), NODE_CLAIM_CONTEXT + bytes(transcript_digest) + bytes(node_public))
    except (InvalidSignature, ValueError):
        raise AuthenticationError("the node's claim is not signed by the identity it names; "
                                  "refused") from None


def transcript_hash(transcript: bytes) -> bytes:
    """SHA-256 of the signed hello transcript: bound into every key of the session."""
    return hashlib.sha256(bytes(transcript)).digest()


# --------------------------------------------------------------------------------------------
# key derivation and associated data


def derive_keys(
    shared_secret: bytes, *, run_id: int, node_id: int, transcript: bytes,
    version: int = PROTOCOL_VERSION,
) -> dict[str, bytes]:
    """One AES-256 key per direction from the X25519 shared secret and the transcript hash."""
    if len(transcript) != 32:
        raise ConfigError("the transcript hash must be 32 bytes (SHA-256)")
    keys = {}
    for direction in DIRECTIONS:
        info = f"cola-fed v{version} {direction} node {node_id} ".encode() + bytes(transcript)
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_u64(run_id, "run id"), info=info)
        keys[direction] = hkdf.derive(shared_secret)
    return keys


def associated_data(
    *, version: int, run_id: int, node_id: int, counter: int, direction: str, kind: str,
) -> bytes:
    """What the tag binds besides the ciphertext (layout in docs/security.md)."""
    fixed = _AAD.pack(b"cola-fed", version, run_id % _U64, node_id % _U64, counter,
                      DIRECTIONS[direction])
    return fixed + kind.encode("utf-8")


def _u64(value: int, what: str) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return (value % _U64).to_bytes(8, "big")


# --------------------------------------------------------------------------------------------
# the channel


@dataclass
class ChannelState:
    """The counters a channel must persist between messages (e.g. in Flower's context.state)."""

    sent: int = 0
    received: int = 0


class SecureChannel:
    """Seal and open payloads between the server and one node, in one run.

    Parameters
    ----------
    own_key : X25519PrivateKey
        This side's private key (the server's exchange key for the run, or the node's key).
    peer_public : bytes
        The other side's raw 32-byte X25519 public key.
    role : str
        ``"server"`` or ``"node"``: decides which direction this side sends in.
    run_id, node_id : int
        Flower's run id and the node's id; both are bound into keys and associated data.
    transcript : bytes
        SHA-256 of the signed hello transcript the session was opened with.
    state : ChannelState or None
        Counters from an earlier message of the same session.
    """

    def __init__(
        self,
        own_key: X25519PrivateKey,
        peer_public: bytes,
        *,
        role: str,
        run_id: int,
        node_id: int,
        transcript: bytes,
        state: ChannelState | None = None,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        if role not in ("server", "node"):
            raise ConfigError(f"role must be 'server' or 'node', got {role!r}")
        if not isinstance(peer_public, (bytes, bytearray)) or len(peer_public) != 32:
            raise MalformedPayloadError("a peer public key must be 32 raw bytes")
        try:
            shared = own_key.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
        except ValueError as err:  # e.g. a low-order point
            raise MalformedPayloadError(f"unusable peer public key: {err}") from None
        keys = derive_keys(shared, run_id=run_id, node_id=node_id, transcript=transcript,
                           version=version)
        self.sends = SERVER_TO_NODE if role == "server" else NODE_TO_SERVER
        self.receives = NODE_TO_SERVER if role == "server" else SERVER_TO_NODE
        self._send = AESGCM(keys[self.sends])
        self._receive = AESGCM(keys[self.receives])
        self.run_id, self.node_id, self.version = run_id, node_id, version
        self.state = state or ChannelState()

    def seal(self, plaintext: bytes, *, kind: str) -> bytes:
        """Encrypt and authenticate ``plaintext`` for the peer, bound to message ``kind``."""
        counter = self.state.sent + 1
        aad = associated_data(version=self.version, run_id=self.run_id, node_id=self.node_id,
                              counter=counter, direction=self.sends, kind=kind)
        sealed = self._send.encrypt(_nonce(counter), bytes(plaintext), aad)
        self.state.sent = counter
        return _HEADER.pack(MAGIC, counter) + sealed

    def open(self, envelope: bytes | memoryview, *, kind: str) -> bytes:
        """Authenticate and decrypt a payload from the peer; the state advances only on success.

        ``envelope`` may be any bytes-like object; it is read in place, never copied."""
        try:
            envelope = memoryview(envelope).cast("B")
        except TypeError:
            raise MalformedPayloadError(f"a sealed payload must be bytes, got "
                                        f"{type(envelope).__name__}") from None
        if len(envelope) < _HEADER.size + TAG_BYTES:
            raise MalformedPayloadError(f"a sealed payload of {len(envelope)} bytes is too short")
        magic, counter = _HEADER.unpack_from(envelope)
        if magic != MAGIC:
            raise MalformedPayloadError("not a cola-fed v2 sealed payload (bad magic bytes)")
        aad = associated_data(version=self.version, run_id=self.run_id, node_id=self.node_id,
                              counter=counter, direction=self.receives, kind=kind)
        try:
            plaintext = self._receive.decrypt(_nonce(counter), envelope[_HEADER.size:], aad)
        except InvalidTag:
            raise AuthenticationError(
                f"sealed {kind!r} payload failed authentication: tampered, meant for another "
                "node or kind, or sealed under another key or hello"
            ) from None
        if counter <= self.state.received:
            raise ReplayError(
                f"sealed {kind!r} payload #{counter} was already received or is out of order "
                f"(last accepted #{self.state.received})"
            )
        self.state.received = counter
        return plaintext


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")
