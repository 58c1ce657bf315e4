"""The connection handshake: mutual proof of the cluster token, before any parsing.

Runs right after the transport connects and before a single msgpack or pickle byte is
looked at. Only fixed-size raw reads happen here, so a hostile peer can make us read at
most 64 bytes before being dropped::

    server -> client   b"GXC1" + server_nonce                       (4 + 32 bytes)
    client -> server   HMAC(token, b"client" + server_nonce)
                       + client_nonce                               (32 + 32 bytes)
    server -> client   HMAC(token, b"server" + client_nonce)         (32 bytes)

HMAC is HMAC-SHA256; nonces come from ``secrets``; digests are compared with
``hmac.compare_digest``. The token itself never crosses the wire, each side proves it
knows the token over a nonce the *other* side chose (no replay), and the ``client`` /
``server`` labels keep one side's proof from being reflected back as the other's.

The server bounds the whole exchange by a handshake timeout (default
:data:`HANDSHAKE_TIMEOUT`); the transport closes the connection and logs a warning on any
failure. The client waits as long as its ``connect`` timeout allows, since a server that
adopted a pre-bound socket may still be starting while the client sits in its backlog.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable
from typing import Protocol

from graphexec.errors import ProtocolError

__all__ = [
    "DIGEST_BYTES",
    "HANDSHAKE_TIMEOUT",
    "MAGIC",
    "NONCE_BYTES",
    "client_handshake",
    "normalize_token",
    "proof",
    "server_handshake",
]

MAGIC = b"GXC1"
NONCE_BYTES = 32
DIGEST_BYTES = 32
#: seconds a new connection gets to authenticate
HANDSHAKE_TIMEOUT = 5.0


class RawStream(Protocol):
    """The two operations the handshake needs (Tornado's ``IOStream`` has them)."""

    def read_bytes(self, num_bytes: int, partial: bool = False) -> Awaitable[bytes]: ...

    def write(self, data: bytes | memoryview) -> Awaitable[None]: ...


def normalize_token(token: bytes | str) -> bytes:
    """The token as bytes (``str`` is UTF-8 encoded). Refuses an empty token.

    Examples
    --------
    >>> normalize_token("s3cret")
    b's3cret'
    """
    if isinstance(token, str):
        token = token.encode("utf-8")
    if not isinstance(token, bytes | bytearray):
        raise TypeError(f"token must be bytes or str, got {type(token).__name__}")
    if not token:
        raise ValueError("the cluster token must not be empty")
    return bytes(token)


def proof(token: bytes, role: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256 of ``role + nonce`` keyed by the token.

    Examples
    --------
    >>> len(proof(b"t", b"client", bytes(32)))
    32
    """
    return hmac.new(token, role + nonce, hashlib.sha256).digest()


async def server_handshake(stream: RawStream, token: bytes) -> None:
    """Server side. Raises ``ProtocolError`` if the client does not prove the token.

    Transport errors (the peer hung up) propagate as the transport raises them; the
    caller bounds the call with its handshake timeout.
    """
    server_nonce = secrets.token_bytes(NONCE_BYTES)
    await stream.write(MAGIC + server_nonce)
    reply = await stream.read_bytes(DIGEST_BYTES + NONCE_BYTES)
    client_proof, client_nonce = reply[:DIGEST_BYTES], reply[DIGEST_BYTES:]
    if not hmac.compare_digest(client_proof, proof(token, b"client", server_nonce)):
        raise ProtocolError("client failed to prove the cluster token (wrong token?)")
    await stream.write(proof(token, b"server", client_nonce))


async def client_handshake(stream: RawStream, token: bytes) -> None:
    """Client side. Raises ``ProtocolError`` if the server is not a graphexec server
    or does not prove the token."""
    greeting = await stream.read_bytes(len(MAGIC) + NONCE_BYTES)
    if greeting[: len(MAGIC)] != MAGIC:
        raise ProtocolError(f"peer is not a graphexec server (greeting {greeting[: len(MAGIC)]!r})")
    server_nonce = greeting[len(MAGIC) :]
    client_nonce = secrets.token_bytes(NONCE_BYTES)
    await stream.write(proof(token, b"client", server_nonce) + client_nonce)
    server_proof = await stream.read_bytes(DIGEST_BYTES)
    if not hmac.compare_digest(server_proof, proof(token, b"server", client_nonce)):
        raise ProtocolError("server failed to prove the cluster token (wrong token?)")
