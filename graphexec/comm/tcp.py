"""TCP transport on Tornado: ``TCPServer`` to accept, ``TCPClient`` to connect, ``IOStream``.

Every connection runs the :mod:`~graphexec.comm.auth` handshake before a single message
byte is parsed; one that fails it, or stays silent past the handshake timeout, is closed
and logged, and the listener goes on serving everyone else.

Performance policy:

* ``TCP_NODELAY`` on every stream; small messages go out in one ``write`` (prefix, header
  and small frames coalesced, see :func:`graphexec.comm.framing.encode`); large frames are
  written as they are, never concatenated or copied.
* ``write_nowait`` queues messages and writes everything queued in one go on the next
  turn of the event loop: a burst of replies costs one syscall.
* Reads ask the stream for up to 64 KiB at a time and parse every message the chunk
  holds, so a burst of small messages costs one Tornado read in all. Frames up to 64 KiB
  are copied out as ``bytes`` (so keeping one does not pin a whole chunk); larger frames
  are read with ``read_into`` straight into a buffer of their own, allocated once and not
  zero-filled (NumPy ``empty``; ``bytearray(n)`` would write every page first, which
  halves the throughput for 100 MB frames).
* The stream's read buffer is bounded by ``max_frame_bytes`` plus 1 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import DefaultLoopResolver, is_valid_ip
from tornado.tcpclient import TCPClient
from tornado.tcpserver import TCPServer

from graphexec.comm import framing
from graphexec.comm.auth import client_handshake, normalize_token, server_handshake
from graphexec.comm.core import Comm, Frame, Handler, Listener, format_address
from graphexec.errors import CommClosedError, ProtocolError
from graphexec.protocol.wire import dumps_header, loads_header

__all__ = ["TCPComm", "TCPListener", "connect", "listen"]

logger = logging.getLogger("graphexec.comm")

#: frames up to this size are sliced from the chunks read; larger ones get their own buffer
SMALL_READ_BYTES = 64 * 1024
#: how much a read asks the stream for at a time
READ_CHUNK_BYTES = 64 * 1024
#: how long ``close()`` waits for unsent data to drain
CLOSE_FLUSH_TIMEOUT = 2.0
#: the least time a client gets for the handshake, even late in its connect timeout
MIN_CLIENT_HANDSHAKE = 1.0
_BUFFER_SLACK = 1 << 20
_BACKLOG = 4096
_RETRY_FIRST = 0.01
_RETRY_MAX = 0.5


class TCPComm(Comm):
    """A :class:`Comm` over a Tornado ``IOStream`` that has passed the handshake.

    Reads keep the last chunk the stream returned and parse as many messages from it as
    it holds, so a burst of small messages costs one Tornado read, not two per message.
    ``write_nowait`` queues encoded messages and writes them together on the next turn
    of the event loop (one syscall for a burst).
    """

    def __init__(self, stream: IOStream, *, local: str, peer: str, max_frame_bytes: int) -> None:
        self._stream = stream
        self.local = local
        self.peer = peer
        self._max_frame_bytes = max_frame_bytes
        self._loop = asyncio.get_running_loop()
        # read side: the unparsed tail of the last chunk read is _view[_pos:]
        self._view = memoryview(b"")
        self._pos = 0
        # write side: messages queued by write_nowait, written by _flush
        self._pending: list[bytes | memoryview] = []
        self._flush_handle: asyncio.Handle | None = None
        self._closed_here = False

    # ------------------------------------------------------------------ reading

    async def read(self) -> tuple[Any, list[memoryview | bytes]]:
        if self._closed_here:
            raise CommClosedError(f"connection {self.local} -> {self.peer} was closed locally")
        try:
            prefix: bytes | memoryview | None = self._take(framing.PREFIX_BYTES)
            if prefix is None:
                prefix = await self._receive(framing.PREFIX_BYTES)
            nframes, header_len = framing.unpack_first(prefix)
            framing.check_nframes(nframes)
            lengths: Sequence[int] = (header_len,)
            if nframes > 1:
                size = 8 * (nframes - 1)
                rest: bytes | memoryview | None = self._take(size)
                if rest is None:
                    rest = await self._receive(size)
                lengths = (header_len, *framing.unpack_lengths(rest, nframes - 1))
            framing.check_lengths(lengths, max_frame_bytes=self._max_frame_bytes)
            frames = await self._read_frames(lengths)
            header = loads_header(frames[0])
        except StreamClosedError as err:
            raise self._closed_error(err) from (err.real_error or err)
        except ProtocolError as err:
            logger.warning("closing connection %s -> %s: %s", self.peer, self.local, err)
            self.abort()
            raise
        except asyncio.CancelledError:
            self.abort()  # the stream is mid-message (or mid-read): it cannot be resumed
            raise
        del frames[0]
        return header, frames

    def _take(self, n: int) -> memoryview | None:
        """``n`` bytes from the current chunk without waiting, or None if it has fewer."""
        end = self._pos + n
        if end > len(self._view):
            return None
        view = self._view[self._pos : end]
        self._pos = end
        return view

    async def _receive(self, n: int) -> bytes | memoryview:
        """Exactly ``n`` (small) bytes, reading as many more chunks as it takes."""
        pieces: list[bytes | memoryview] = []
        have = len(self._view) - self._pos
        if have:
            pieces.append(self._view[self._pos :])
        while True:
            data = await self._stream.read_bytes(max(n - have, READ_CHUNK_BYTES), partial=True)
            if have + len(data) >= n:
                break
            pieces.append(data)
            have += len(data)
        used = n - have
        self._view = memoryview(data)
        self._pos = used
        if not pieces:
            return self._view[:used]
        pieces.append(self._view[:used])
        return b"".join(pieces)

    async def _read_frames(self, lengths: Sequence[int]) -> list[memoryview | bytes]:
        """The frames of one message; the header (frame 0) may be a view into the chunk.

        Small payload frames are copied out as ``bytes`` so that a caller keeping a tiny
        frame does not keep a whole 64 KiB chunk alive; large frames get their own buffer.
        """
        total = sum(lengths)
        if total <= SMALL_READ_BYTES:
            body = self._take(total)
            if body is None:
                body = memoryview(await self._receive(total))
            frames: list[memoryview | bytes] = [body[: lengths[0]]]
            pos = lengths[0]
            for n in lengths[1:]:
                frames.append(bytes(body[pos : pos + n]))
                pos += n
            return frames
        frames = []
        for n in lengths:
            if n > SMALL_READ_BYTES:
                frames.append(await self._read_large(n))
            else:
                frame: bytes | memoryview | None = self._take(n)
                if frame is None:
                    frame = await self._receive(n)
                frames.append(bytes(frame) if frames else frame)
        return frames

    async def _read_large(self, n: int) -> memoryview:
        """One large frame, read straight into its own buffer."""
        buf = _host_array(n)
        have = min(len(self._view) - self._pos, n)
        if have:
            buf[:have] = self._view[self._pos : self._pos + have]
            self._pos += have
        if have < n:
            await self._stream.read_into(cast(bytearray, buf[have:]))
        return buf

    # ------------------------------------------------------------------ writing

    async def write(self, header: Any, frames: Sequence[Frame] = ()) -> None:
        chunks = framing.encode(dumps_header(header), frames, max_frame_bytes=self._max_frame_bytes)
        if self._closed_here:
            raise CommClosedError(f"connection {self.local} -> {self.peer} was closed locally")
        if self._pending:  # keep the order of messages queued by write_nowait
            self._cancel_flush()
            chunks = [*self._pending, *chunks]
            self._pending = []
        try:
            await self._write_chunks(chunks)
        except StreamClosedError as err:
            raise self._closed_error(err) from (err.real_error or err)

    def write_nowait(self, header: Any, frames: Sequence[Frame] = ()) -> None:
        chunks = framing.encode(dumps_header(header), frames, max_frame_bytes=self._max_frame_bytes)
        if self._closed_here or self._stream.closed():
            raise self._closed_error(StreamClosedError(self._stream.error))
        self._pending.extend(chunks)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, []
        with contextlib.suppress(StreamClosedError):  # the next read or write reports it
            self._write_chunks(pending)

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _write_chunks(self, chunks: list[bytes | memoryview]) -> Awaitable[None]:
        """Hand chunks to the stream, small neighbours joined; return the last future."""
        stream = self._stream
        done: Awaitable[None] | None = None
        small: list[bytes | memoryview] = []
        for chunk in chunks:
            if len(chunk) <= framing.COALESCE_BYTES:
                small.append(chunk)
                continue
            if small:
                stream.write(small[0] if len(small) == 1 else b"".join(small))
                small = []
            done = stream.write(chunk)
        if small:
            done = stream.write(small[0] if len(small) == 1 else b"".join(small))
        return done if done is not None else stream.write(b"")

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        self._closed_here = True
        stream = self._stream
        if stream.closed():
            self._pending = []
            self._cancel_flush()
            return
        try:
            if self._pending:
                self._cancel_flush()
                self._flush()
            if stream.writing():
                await asyncio.wait_for(stream.write(b""), CLOSE_FLUSH_TIMEOUT)
        except (StreamClosedError, asyncio.TimeoutError):
            pass  # closing anyway
        finally:
            stream.close()

    def abort(self) -> None:
        self._closed_here = True
        self._pending = []
        self._cancel_flush()
        self._stream.close()

    def closed(self) -> bool:
        return self._closed_here or self._stream.closed()

    def _closed_error(self, err: StreamClosedError) -> CommClosedError:
        cause = err.real_error or self._stream.error
        reason = f": {type(cause).__name__}: {cause}" if cause else ""
        return CommClosedError(f"connection {self.local} -> {self.peer} closed{reason}")


def _host_array(n: int) -> memoryview:
    """A writable buffer of ``n`` bytes, not zero-filled if NumPy is available."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency
        return memoryview(bytearray(n))
    return numpy.empty(n, dtype=numpy.uint8).data


class _Server(TCPServer):
    def __init__(self, listener: TCPListener, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._listener = listener

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        self._listener._accept(stream, address)


class TCPListener(Listener):
    """Accepts TCP connections, authenticates them, hands each to the handler."""

    def __init__(
        self,
        handler: Handler,
        sockets: list[socket.socket],
        *,
        token: bytes,
        ssl_context: ssl.SSLContext | None,
        max_frame_bytes: int,
        handshake_timeout: float,
    ) -> None:
        super().__init__(handler)
        self._token = token
        self._max_frame_bytes = max_frame_bytes
        self._handshake_timeout = handshake_timeout
        self._server = _Server(
            self, ssl_options=ssl_context, max_buffer_size=max_frame_bytes + _BUFFER_SLACK
        )
        self._server.add_sockets(sockets)
        main = next((s for s in sockets if s.family == socket.AF_INET), sockets[0])
        host, port = main.getsockname()[:2]
        self.address = format_address("tcp", host, port)

    def _stop_accepting(self) -> None:
        self._server.stop()

    def _accept(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        peer = format_address("tcp", str(address[0]), address[1]) if address else "tcp://?"
        self._spawn(self._serve(stream, peer), name=f"graphexec.comm {peer} -> {self.address}")

    async def _serve(self, stream: IOStream, peer: str) -> None:
        try:
            stream.set_nodelay(True)
            await asyncio.wait_for(server_handshake(stream, self._token), self._handshake_timeout)
        except (ProtocolError, OSError, asyncio.TimeoutError) as err:  # OSError: StreamClosed
            logger.warning(
                "rejected connection %s -> %s: %s", peer, self.address, _handshake_reason(err)
            )
            stream.close()
            return
        except asyncio.CancelledError:
            stream.close()
            raise
        comm = TCPComm(
            stream,
            local=_sockname(stream, self.address),
            peer=peer,
            max_frame_bytes=self._max_frame_bytes,
        )
        await self._run_handler(comm)


def _handshake_reason(err: BaseException) -> str:
    if isinstance(err, asyncio.TimeoutError):
        return "no handshake within the handshake timeout"
    if isinstance(err, StreamClosedError):
        real = err.real_error
        return "peer closed the connection during the handshake" + (f" ({real})" if real else "")
    return f"{type(err).__name__}: {err}"


def _sockname(stream: IOStream, default: str) -> str:
    try:
        host, port = stream.socket.getsockname()[:2]
    except (OSError, ValueError):
        return default
    return format_address("tcp", host, port)


async def listen(
    host: str,
    port: int,
    handler: Handler,
    *,
    token: bytes | str,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_frame_bytes: int = framing.MAX_FRAME_BYTES,
    handshake_timeout: float = 5.0,
) -> TCPListener:
    """Listen on ``host:port`` (or adopt ``sock``); see :func:`graphexec.comm.listen`."""
    token_bytes = normalize_token(token)
    if sock is not None:
        sockets = [_adopt(sock)]
    else:
        sockets = await _bind(host, port)
    return TCPListener(
        handler,
        sockets,
        token=token_bytes,
        ssl_context=ssl_context,
        max_frame_bytes=max_frame_bytes,
        handshake_timeout=handshake_timeout,
    )


async def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to, all on one port.

    Unlike ``tornado.netutil.bind_sockets`` this closes what it opened when a bind
    fails (say, the port is in use) and names the address in the error.
    """
    if is_valid_ip(host):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    sockets: list[socket.socket] = []
    try:
        for af, kind, proto, _, sockaddr in dict.fromkeys(infos):
            if af not in (socket.AF_INET, socket.AF_INET6):
                continue
            sock = socket.socket(af, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # same port on every address
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            try:
                sock.bind(sockaddr)
            except OSError as err:
                if err.errno == errno.EADDRNOTAVAIL and af == socket.AF_INET6 and len(infos) > 1:
                    sockets.pop().close()  # IPv6 disabled: the IPv4 address will do
                    continue
                raise OSError(
                    err.errno,
                    f"cannot listen on {format_address('tcp', host, port)}: {err.strerror}",
                ) from err
            sock.setblocking(False)
            sock.listen(_BACKLOG)
        if not sockets:
            raise OSError(f"cannot listen on {format_address('tcp', host, port)}: no address")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _adopt(sock: socket.socket) -> socket.socket:
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"sock= must be a TCP socket, got {sock!r}")
    sock.setblocking(False)
    accepting = getattr(socket, "SO_ACCEPTCONN", None)
    if accepting is None or not sock.getsockopt(socket.SOL_SOCKET, accepting):
        sock.listen(_BACKLOG)
    return sock


class _NumericResolver(DefaultLoopResolver):
    """Skips the resolver thread for literal IP addresses (the common case)."""

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        if is_valid_ip(host):
            af = socket.AF_INET6 if ":" in host else socket.AF_INET
            return [(af, (host, port))]
        return await super().resolve(host, port, family)


async def connect(
    host: str,
    port: int,
    *,
    token: bytes | str,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    max_frame_bytes: int = framing.MAX_FRAME_BYTES,
) -> TCPComm:
    """Connect and authenticate; see :func:`graphexec.comm.connect`."""
    token_bytes = normalize_token(token)
    address = format_address("tcp", host, port)
    if port == 0:
        raise ValueError(f"cannot connect to {address}: no port")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stream = await _connect_stream(
        host,
        port,
        address=address,
        deadline=deadline,
        timeout=timeout,
        ssl_context=ssl_context,
        max_buffer_size=max_frame_bytes + _BUFFER_SLACK,
    )
    try:
        stream.set_nodelay(True)
        await asyncio.wait_for(
            client_handshake(stream, token_bytes),
            max(deadline - loop.time(), MIN_CLIENT_HANDSHAKE),
        )
    except (ProtocolError, OSError, asyncio.TimeoutError) as err:
        stream.close()
        if isinstance(err, StreamClosedError):
            reason = "the server closed the connection during the handshake (wrong token?)"
        elif isinstance(err, asyncio.TimeoutError):
            reason = "no handshake from the server in time"
        else:
            reason = str(err)
        raise CommClosedError(f"authentication with {address} failed: {reason}") from err
    except asyncio.CancelledError:
        stream.close()
        raise
    return TCPComm(
        stream, local=_sockname(stream, "tcp://?"), peer=address, max_frame_bytes=max_frame_bytes
    )


async def _connect_stream(
    host: str,
    port: int,
    *,
    address: str,
    deadline: float,
    timeout: float,
    ssl_context: ssl.SSLContext | None,
    max_buffer_size: int,
) -> IOStream:
    """Open the TCP (and TLS) connection, retrying while the peer refuses it."""
    loop = asyncio.get_running_loop()
    client = TCPClient(resolver=_NumericResolver())
    delay = _RETRY_FIRST
    try:
        while True:
            try:
                return await client.connect(
                    host,
                    port,
                    ssl_options=ssl_context,
                    max_buffer_size=max_buffer_size,
                    timeout=max(deadline - loop.time(), 0.001),
                )
            except asyncio.TimeoutError as err:
                raise CommClosedError(f"could not connect to {address} within {timeout} s") from err
            except OSError as err:
                cause = err.real_error if isinstance(err, StreamClosedError) else err
                cause = cause or err
                remaining = deadline - loop.time()
                if not isinstance(cause, ConnectionRefusedError) or remaining <= 0:
                    raise CommClosedError(
                        f"could not connect to {address}: {type(cause).__name__}: {cause}"
                        + (f" (gave up after {timeout} s)" if remaining <= 0 else "")
                    ) from cause
                logger.debug("connection to %s refused; retrying in %.3f s", address, delay)
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, _RETRY_MAX)
    finally:
        client.close()
