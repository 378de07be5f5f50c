"""End-to-end sealing of payloads between the server and one node. Torch-free.

- **Key agreement**: X25519 between the server's key pair (from a file, or generated per run) and
  a per-run node key pair.
- **Key derivation**: HKDF-SHA256 over the shared secret, with the run id as salt and the
  protocol version, the direction and the node id in the info: one 256-bit key per direction.
- **Sealing**: AES-256-GCM. The nonce is the sender's message counter, which never repeats under
  a key (one key per direction and session, the counter persists in the session state). The
  associated data binds protocol version, run id, node id, round, direction, message kind and
  counter, so a payload replayed, reordered, or delivered to another node, round, direction or
  kind fails.
- **Replay and reordering**: the receiver accepts only counters above the last one it accepted,
  and rounds that do not go back.

Everything cryptographic comes from ``cryptography``; nothing here is a primitive of its own.
The exact byte layouts are specified in ``docs/security.md`` for native client implementers, and
pinned by known-answer tests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cola_fed.errors import (
    AuthenticationError,
    ConfigError,
    MalformedPayloadError,
    ReplayError,
    UntrustedKeyError,
)

log = logging.getLogger("cola_fed")

PROTOCOL_VERSION = 1
SERVER_TO_NODE = "server->node"
NODE_TO_SERVER = "node->server"
DIRECTIONS = {SERVER_TO_NODE: 1, NODE_TO_SERVER: 2}
MAGIC = b"CFS1"  # cola-fed sealed, envelope version 1
_HEADER = struct.Struct(">4sQ")  # magic, counter
_AAD = struct.Struct(">8sHQQQQB")  # label, version, run id, node id, round, counter, direction
TAG_BYTES = 16
_U64 = 2**64


# --------------------------------------------------------------------------------------------
# keys


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: bytes) -> str:
    """SHA-256 of the raw public key, hex, in groups of four: what users compare and pin."""
    digest = hashlib.sha256(public).hexdigest()
    return ":".join(digest[i:i + 4] for i in range(0, len(digest), 4))


def normalise_fingerprint(value: str) -> str:
    digest = value.replace(":", "").replace(" ", "").lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(
            f"server-key-fingerprint: expected 64 hex digits (colons allowed), got {value!r}"
        )
    return ":".join(digest[i:i + 4] for i in range(0, 64, 4))


def generate_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def save_private_key(key: X25519PrivateKey, path: str | Path) -> Path:
    """Write a private key as unencrypted PKCS#8 PEM, readable by its owner only (mode 0600)."""
    path = Path(path)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)
    return path


def load_private_key(path: str | Path) -> X25519PrivateKey:
    """Read a PKCS#8 PEM X25519 private key; refuses files others can read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the server key {path}: {err}") from None
    if mode & 0o077:
        raise ConfigError(f"server key {path} is readable by others; run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as err:
        raise ConfigError(f"{path} is not a PEM private key: {err}") from None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, expected an X25519 key")
    return key


def check_pinned(server_public: bytes, pinned: str | None) -> str:
    """Verify the server key against a pinned fingerprint, or trust it on first use.

    Returns the fingerprint. Raises :class:`UntrustedKeyError` on a mismatch.
    """
    seen = fingerprint(server_public)
    if pinned is None:
        log.warning("trusting the server key on first use; to pin it, set node config "
                    "server-key-fingerprint=%s", seen)
    elif normalise_fingerprint(pinned) != seen:
        raise UntrustedKeyError(
            f"the server's key has fingerprint {seen}, but this node pins "
            f"{normalise_fingerprint(pinned)}; refusing to talk to it"
        )
    return seen


# --------------------------------------------------------------------------------------------
# key derivation and associated data


def derive_keys(
    shared_secret: bytes, *, run_id: int, node_id: int, version: int = PROTOCOL_VERSION
) -> dict[str, bytes]:
    """One AES-256 key per direction from the X25519 shared secret."""
    keys = {}
    for direction in DIRECTIONS:
        info = f"cola-fed v{version} {direction} node {node_id}".encode()
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_u64(run_id, "run id"), info=info)
        keys[direction] = hkdf.derive(shared_secret)
    return keys


def associated_data(
    *, version: int, run_id: int, node_id: int, round: int, counter: int, direction: str,
    kind: str,
) -> bytes:
    """What the tag binds besides the ciphertext (layout in docs/security.md)."""
    fixed = _AAD.pack(b"cola-fed", version, run_id % _U64, node_id % _U64, round, counter,
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
    last_round: int = 0


class SecureChannel:
    """Seal and open payloads between the server and one node, in one run.

    Parameters
    ----------
    own_key : X25519PrivateKey
        This side's private key (the server's, or the node's per-run key).
    peer_public : bytes
        The other side's raw 32-byte public key.
    role : str
        ``"server"`` or ``"node"``: decides which direction this side sends in.
    run_id, node_id : int
        Flower's run id and the node's id; both are bound into keys and associated data.
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
        keys = derive_keys(shared, run_id=run_id, node_id=node_id, version=version)
        self.sends = SERVER_TO_NODE if role == "server" else NODE_TO_SERVER
        self.receives = NODE_TO_SERVER if role == "server" else SERVER_TO_NODE
        self._send = AESGCM(keys[self.sends])
        self._receive = AESGCM(keys[self.receives])
        self.run_id, self.node_id, self.version = run_id, node_id, version
        self.state = state or ChannelState()

    def seal(self, plaintext: bytes, *, round: int, kind: str) -> bytes:
        """Encrypt and authenticate ``plaintext`` for the peer, bound to ``round`` and ``kind``."""
        counter = self.state.sent + 1
        aad = associated_data(version=self.version, run_id=self.run_id, node_id=self.node_id,
                              round=round, counter=counter, direction=self.sends, kind=kind)
        sealed = self._send.encrypt(_nonce(counter), bytes(plaintext), aad)
        self.state.sent = counter
        return _HEADER.pack(MAGIC, counter) + sealed

    def open(self, envelope: bytes | memoryview, *, round: int, kind: str) -> bytes:
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
            raise MalformedPayloadError("not a cola-fed sealed payload (bad magic bytes)")
        aad = associated_data(version=self.version, run_id=self.run_id, node_id=self.node_id,
                              round=round, counter=counter, direction=self.receives, kind=kind)
        try:
            plaintext = self._receive.decrypt(_nonce(counter), envelope[_HEADER.size:], aad)
        except InvalidTag:
            raise AuthenticationError(
                f"sealed {kind!r} payload for round {round} failed authentication: tampered, "
                "meant for another node, round or kind, or sealed under another key"
            ) from None
        if counter <= self.state.received or round < self.state.last_round:
            raise ReplayError(
                f"sealed {kind!r} payload #{counter} for round {round} was already received or "
                f"is out of order (last accepted #{self.state.received}, round "
                f"{self.state.last_round})"
            )
        self.state.received, self.state.last_round = counter, round
        return plaintext


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")
