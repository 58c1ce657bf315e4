"""Blocking connections for threads that own a socket: the actor-call fast path.

The event-loop transport (``tcp.py``) costs two or three loop turns per message on each
side; for actor calls, where one caller thread waits on one actor thread, that is most of
the round trip. Here the caller's thread writes a call straight to the socket, the actor's
connection thread reads it and answers on the same socket, and a reader thread on the
caller's side wakes the waiting user thread: no event loop on the path.

Same wire format (``framing.py``) and the same handshake (``auth.py``, driven here
without an event loop): nothing is parsed before the peer proved the cluster token; a
frame that breaks the limits closes that one connection (``ProtocolError``).

Threads: :meth:`BlockingComm.send` may be called from any thread (a lock keeps messages
whole); :meth:`BlockingComm.read_batch` from one reader thread.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
import sys
import time
from collections.abc import Generator, Sequence
from typing import Any

from graphexec.comm import framing
from graphexec.comm.auth import (
    HANDSHAKE_TIMEOUT,
    client_handshake,
    normalize_token,
    server_handshake,
)
from graphexec.comm.core import Frame
from graphexec.comm.tls import client_context, server_context
from graphexec.errors import CommClosedError, ProtocolError
from graphexec.protocol.wire import dumps_header, loads_header

__all__ = [
    "BlockingComm",
    "blocking_connect",
    "blocking_listener",
    "local_listener",
    "serve_handshake",
]

READ_CHUNK_BYTES = 256 * 1024
#: the most one ``recv`` asks for: ``recv(n)`` allocates ``n`` bytes up front, and ``n``
#: is what the peer announced (up to 10,000 frames of 2 GiB), not what it sent
MAX_RECV_BYTES = 16 * 1024 * 1024


class _Now:
    """An awaitable that is already done (drives the async handshake synchronously)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # pragma: no cover -- makes this a generator


class _SocketStream:
    """The two stream operations the handshake needs, on a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read_bytes(self, num_bytes: int, partial: bool = False) -> _Now:
        data = bytearray()
        while len(data) < num_bytes:
            chunk = self.sock.recv(num_bytes - len(data))
            if not chunk:
                raise CommClosedError("connection closed during the handshake")
            data += chunk
        return _Now(bytes(data))

    def write(self, data: bytes | memoryview) -> _Now:
        self.sock.sendall(data)
        return _Now(None)


def _drive(coro: Any) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the handshake suspended on a blocking socket")  # pragma: no cover


def serve_handshake(sock: socket.socket, token: bytes | str) -> socket.socket:
    """Server side of the handshake on an accepted socket (bounded by the timeout).

    Returns the socket to use from then on: the same one, or its TLS wrapper when TLS
    is on (``comm/tls.py``; TCP only).
    """
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        context = server_context() if sock.family != socket.AF_UNIX else None
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True)
        _drive(server_handshake(_SocketStream(sock), normalize_token(token)))
    except BaseException as err:
        sock.close()  # the TLS wrapper owns the descriptor once made
        if isinstance(err, (TimeoutError, OSError)):  # ssl.SSLError is an OSError
            raise ProtocolError(f"handshake failed: {err}") from err
        raise
    sock.settimeout(None)
    return sock


def blocking_connect(address: str, token: bytes | str, timeout: float = 10.0) -> BlockingComm:
    """Connect to ``tcp://host:port`` (or ``unix:@name``, see :func:`local_listener`) and
    prove the token; returns a :class:`BlockingComm`."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(_unix_path(address))
        except BaseException:
            sock.close()
            raise
    else:
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = client_context()
            if context is not None:
                sock = context.wrap_socket(sock)
        try:
            _drive(client_handshake(_SocketStream(sock), normalize_token(token)))
        except CommClosedError as err:
            raise ProtocolError(
                f"{address} closed the connection during the handshake (wrong token?)"
            ) from err
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return BlockingComm(sock, peer=address)


def blocking_listener(host: str) -> tuple[socket.socket, str]:
    """A listening socket on ``host`` (any free port) and its ``tcp://`` address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock, f"tcp://{host}:{sock.getsockname()[1]}"


def local_listener(name: str) -> tuple[socket.socket, str] | None:
    """A Unix socket named ``name`` in Linux's abstract namespace, and its address.

    Only processes on this machine (in its network namespace) can reach it, and a round
    trip costs about half of one over loopback TCP. Connections still prove the token.
    ``None`` where the platform has no abstract sockets (callers then use TCP).
    """
    if not sys.platform.startswith("linux"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + name)
    except OSError:
        sock.close()
        return None
    sock.listen(128)
    return sock, f"unix:@{name}"


def _unix_path(address: str) -> str:
    path = address.removeprefix("unix:")
    return "\0" + path[1:] if path.startswith("@") else path


class BlockingComm:
    """Framed messages over a blocking socket that passed the handshake."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer: str = "",
        max_frame_bytes: int = framing.MAX_FRAME_BYTES,
    ) -> None:
        import threading

        self.sock = sock
        self.peer = peer
        self._max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need = framing.PREFIX_BYTES
        self._send_lock = threading.Lock()
        self._poller: select.poll | None = None
        self._chunk: memoryview | None = None
        self._closed = False

    def send(self, header: Any, frames: Sequence[Frame] = ()) -> None:
        """Write one message (whole, even with other threads sending)."""
        chunks = framing.encode(dumps_header(header), frames, max_frame_bytes=self._max_frame_bytes)
        with self._send_lock:
            if self._closed:
                raise CommClosedError(f"connection to {self.peer} is closed")
            try:
                for chunk in chunks:
                    self.sock.sendall(chunk)
            except OSError as err:
                raise CommClosedError(f"connection to {self.peer} broke: {err}") from err

    def read_batch(self, timeout: float | None = None) -> list[tuple[Any, list[bytes]]]:
        """Block until at least one message is in; return every whole message received.

        With ``timeout`` (seconds), returns ``[]`` if no whole message came in that time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            messages = self._parse()
            if messages:
                return messages
            if deadline is not None and not self._readable(deadline - time.monotonic()):
                return []
            try:
                if self._need > READ_CHUNK_BYTES:  # the rest of a large message: one piece
                    data: bytes | memoryview = self.sock.recv(min(self._need, MAX_RECV_BYTES))
                else:  # into a buffer kept for this: no large allocation per read
                    if self._chunk is None:
                        self._chunk = memoryview(bytearray(READ_CHUNK_BYTES))
                    data = self._chunk[: self.sock.recv_into(self._chunk)]
            except OSError as err:
                raise CommClosedError(f"connection to {self.peer} broke: {err}") from err
            if not data:
                raise CommClosedError(f"connection to {self.peer} was closed")
            self._buf += data

    def _readable(self, timeout: float) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True  # decrypted bytes already buffered: the fd may not be readable
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.sock, select.POLLIN)
        try:
            return bool(self._poller.poll(max(0, math.ceil(timeout * 1000))))
        except (OSError, ValueError) as err:  # closed under us
            raise CommClosedError(f"connection to {self.peer} broke: {err}") from err

    def _parse(self) -> list[tuple[Any, list[bytes]]]:
        buf = self._buf
        if len(buf) < framing.PREFIX_BYTES:  # the common case between messages
            self._need = framing.PREFIX_BYTES - len(buf)
            return []
        view = memoryview(buf)
        out: list[tuple[Any, list[bytes]]] = []
        pos = 0
        try:
            while True:
                have = len(buf) - pos
                if have < framing.PREFIX_BYTES:
                    self._need = framing.PREFIX_BYTES - have
                    break
                nframes, header_len = framing.unpack_first(view[pos : pos + framing.PREFIX_BYTES])
                framing.check_nframes(nframes)
                extra = 8 * (nframes - 1)
                if have < framing.PREFIX_BYTES + extra:
                    self._need = framing.PREFIX_BYTES + extra - have
                    break
                start = pos + framing.PREFIX_BYTES
                lengths: tuple[int, ...] = (header_len,)
                if nframes > 1:
                    lengths += framing.unpack_lengths(view[start : start + extra], nframes - 1)
                framing.check_lengths(lengths, max_frame_bytes=self._max_frame_bytes)
                total = framing.PREFIX_BYTES + extra + sum(lengths)
                if have < total:
                    self._need = total - have
                    break
                start += extra
                frames: list[bytes] = []
                for n in lengths:
                    frames.append(bytes(view[start : start + n]))
                    start += n
                out.append((loads_header(frames[0]), frames[1:]))
                pos += total
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return out

    def close(self) -> None:
        """Close now; a thread blocked in ``read_batch`` wakes with ``CommClosedError``."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<BlockingComm {self.peer}>"


def check_header(header: Any) -> list[dict[str, Any]]:
    """A batch header must be a list of op dicts (else ``ProtocolError``)."""
    if not isinstance(header, list) or not all(isinstance(op, dict) for op in header):
        raise ProtocolError(f"expected a list of ops, got {type(header).__name__}")
    return header
