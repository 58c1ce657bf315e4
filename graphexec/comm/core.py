"""The ``Comm`` interface, listeners, addresses, and ``connect`` / ``listen``.

Everything above ``comm/`` talks to peers through this module only; Tornado stays in
``comm/tcp.py``.

Addresses
    ``"tcp://host:port"`` (also ``"host:port"``; an omitted host means ``127.0.0.1``;
    IPv6 hosts in brackets, ``"tcp://[::1]:8786"``; port 0 lets ``listen`` pick a free
    port, reported by ``Listener.address``) and ``"inproc://name"`` (same process, same
    event loop; an empty name lets ``listen`` pick one).

Messages
    A message is ``(header, frames)``: the header is a msgpack-able value (see
    :mod:`graphexec.protocol.wire`), the frames are raw buffers sent as they are (see
    :func:`graphexec.protocol.serialize`). Frames are never copied on send: do not mutate
    a buffer until the ``write`` that sends it has returned.

Errors
    ``CommClosedError`` (a ``ConnectionError``): the connection is gone, with the cause
    chained. ``ProtocolError``: on ``read``, the peer broke the protocol and the connection
    was closed (the reason is logged on ``graphexec.comm``); on ``write``, the message
    cannot be encoded (header not msgpack-able, frame too large): nothing was sent and the
    comm is still usable.

Concurrency
    A comm belongs to the event loop that created it and must only be used from that
    loop's thread. Any number of tasks may ``write`` concurrently (each message goes out
    whole); only one task may ``read`` at a time. Cancelling a ``read`` mid-way aborts the
    comm (a half-read message cannot be resumed), so wrap ``read`` in a timeout only if
    losing the connection on expiry is what you want.

Ownership
    A listener owns the handler task of every connection it accepted. The connection
    lives as long as its handler: when the handler returns, its comm is closed (pending
    writes flushed); when it raises, the error is logged and the comm aborted; ``stop``
    cancels every handler. ``await listener.close()`` (or ``async with``) also waits for
    the handlers to finish.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any

from graphexec.comm.framing import MAX_FRAME_BYTES

__all__ = [
    "Comm",
    "Handler",
    "Listener",
    "connect",
    "format_address",
    "listen",
    "parse_address",
]

logger = logging.getLogger("graphexec.comm")

Frame = bytes | bytearray | memoryview
Handler = Callable[["Comm"], Awaitable[None]]

DEFAULT_HOST = "127.0.0.1"


class Comm(abc.ABC):
    """One authenticated, message-oriented, bidirectional connection."""

    #: address of the other end, e.g. ``"tcp://127.0.0.1:53412"``
    peer: str
    #: address of this end
    local: str

    @abc.abstractmethod
    async def read(self) -> tuple[Any, list[memoryview | bytes]]:
        """Wait for the next message and return ``(header, frames)``.

        Raises ``CommClosedError`` once the connection is closed (messages sent before
        the peer closed are still delivered first) and ``ProtocolError`` if the peer
        broke the protocol (the comm is then closed).
        """

    @abc.abstractmethod
    async def write(self, header: Any, frames: Sequence[Frame] = ()) -> None:
        """Send one message and wait until it is handed to the OS (backpressure).

        Raises ``CommClosedError`` if the connection is closed, ``ProtocolError`` if the
        message cannot be encoded (nothing sent, comm still usable).
        """

    @abc.abstractmethod
    def write_nowait(self, header: Any, frames: Sequence[Frame] = ()) -> None:
        """Queue one message for sending and return at once.

        The fast path for code that must not await (a state machine's instructions
        executed synchronously, replies to many small messages). Encoding errors and an
        already closed comm raise here, like :meth:`write`; a connection that fails later
        surfaces on the next ``read`` or ``write``. There is no backpressure: a producer
        that may outrun the peer must ``await write(...)`` now and then.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush what was written (for a short while at most) and close. Idempotent."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close at once, dropping unsent data. Idempotent."""

    @abc.abstractmethod
    def closed(self) -> bool:
        """Whether the comm is closed (by either side)."""

    async def __aenter__(self) -> Comm:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed() else "open"
        return f"<{type(self).__name__} {self.local} -> {self.peer} ({state})>"


class Listener(abc.ABC):
    """A server accepting connections; owns one handler task per connection."""

    #: the bound address, port resolved (``"tcp://127.0.0.1:40123"``)
    address: str

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    @abc.abstractmethod
    def _stop_accepting(self) -> None:
        """Stop taking new connections and release the address."""

    def stop(self) -> None:
        """Stop accepting and cancel every handler task. Idempotent."""
        if not self._stopped:
            self._stopped = True
            self._stop_accepting()
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """:meth:`stop`, then wait until every handler task has finished."""
        self.stop()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task owned by this listener."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, comm: Comm) -> None:
        """Run the user's handler on ``comm``; the comm lives as long as the handler."""
        try:
            await self._handler(comm)
        except asyncio.CancelledError:
            comm.abort()
            raise
        except Exception:  # the handler is user code: log, drop this connection only
            logger.exception("handler for connection %s -> %s failed", comm.peer, comm.local)
            comm.abort()
        else:
            await comm.close()
        finally:
            if not comm.closed():  # e.g. close() itself was cancelled
                comm.abort()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"{len(self._tasks)} connections"
        return f"<{type(self).__name__} {self.address} ({state})>"


def parse_address(address: str) -> tuple[str, str, int | str]:
    """Split an address into ``(scheme, host, port_or_name)``.

    Examples
    --------
    >>> parse_address("tcp://10.0.0.1:8786")
    ('tcp', '10.0.0.1', 8786)
    >>> parse_address("localhost:8786")
    ('tcp', 'localhost', 8786)
    >>> parse_address("tcp://:0")
    ('tcp', '127.0.0.1', 0)
    >>> parse_address("tcp://[::1]:80")
    ('tcp', '::1', 80)
    >>> parse_address("inproc://scheduler")
    ('inproc', '', 'scheduler')
    """
    if not isinstance(address, str):
        raise TypeError(f"address must be a str, got {type(address).__name__}")
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme == "inproc":
        return "inproc", "", rest
    if scheme != "tcp":
        raise ValueError(f"unknown scheme {scheme!r} in address {address!r} (tcp or inproc)")
    if rest.startswith("["):
        host, bracket, port_str = rest[1:].partition("]")
        if not bracket or (port_str and not port_str.startswith(":")):
            raise ValueError(f"malformed IPv6 address {address!r}")
        port_str = port_str[1:]
    else:
        host, _, port_str = rest.rpartition(":") if ":" in rest else (rest, "", "0")
    try:
        port = int(port_str) if port_str else 0
    except ValueError:
        raise ValueError(f"bad port {port_str!r} in address {address!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in address {address!r}")
    return "tcp", host or DEFAULT_HOST, port


def format_address(scheme: str, host: str, port_or_name: int | str) -> str:
    """Inverse of :func:`parse_address`.

    Examples
    --------
    >>> format_address("tcp", "::1", 80)
    'tcp://[::1]:80'
    >>> format_address("inproc", "", "scheduler")
    'inproc://scheduler'
    """
    if scheme == "inproc":
        return f"inproc://{port_or_name}"
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"{scheme}://{host}:{port_or_name}"


async def connect(
    address: str,
    *,
    token: bytes | str,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Comm:
    """Connect to ``address`` and authenticate with ``token``.

    While the peer refuses the connection (it may still be starting) this retries with
    backoff until ``timeout`` seconds have passed. Gives up at once on a failed handshake.

    Raises
    ------
    CommClosedError
        The connection or the handshake failed; the message names the address and the
        cause is chained.

    Examples
    --------
    >>> async def main():
    ...     async def echo(comm):
    ...         header, frames = await comm.read()
    ...         await comm.write(header, frames)
    ...
    ...     async with await listen("inproc://", echo, token="t") as listener:
    ...         async with await connect(listener.address, token="t") as comm:
    ...             await comm.write({"op": "ping"}, [b"data"])
    ...             return await comm.read()
    >>> asyncio.run(main())
    ({'op': 'ping'}, [b'data'])
    """
    scheme, host, port_or_name = parse_address(address)
    if scheme == "inproc":
        from graphexec.comm.inproc import connect as inproc_connect

        return await inproc_connect(
            str(port_or_name), token=token, timeout=timeout, max_frame_bytes=max_frame_bytes
        )
    from graphexec.comm.tcp import connect as tcp_connect
    from graphexec.comm.tls import client_context

    assert isinstance(port_or_name, int)
    return await tcp_connect(
        host,
        port_or_name,
        token=token,
        timeout=timeout,
        ssl_context=ssl_context or client_context(),
        max_frame_bytes=max_frame_bytes,
    )


async def listen(
    address: str,
    handler: Handler,
    *,
    token: bytes | str,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    handshake_timeout: float | None = None,
) -> Listener:
    """Listen on ``address``; run ``await handler(comm)`` for each authenticated peer.

    ``sock`` (tcp only) adopts an already bound socket (listening or not), typically one
    the parent process bound and passed down so that early connections queue in its
    backlog; the listener owns it from then on. ``handshake_timeout`` (default 5 s)
    bounds how long a new connection may take to authenticate.
    """
    from graphexec.comm.auth import HANDSHAKE_TIMEOUT

    if handshake_timeout is None:
        handshake_timeout = HANDSHAKE_TIMEOUT
    scheme, host, port_or_name = parse_address(address)
    if scheme == "inproc":
        if sock is not None or ssl_context is not None:
            raise ValueError("sock= and ssl_context= apply to tcp addresses only")
        from graphexec.comm.inproc import listen as inproc_listen

        return await inproc_listen(
            str(port_or_name), handler, token=token, max_frame_bytes=max_frame_bytes
        )
    from graphexec.comm.tcp import listen as tcp_listen
    from graphexec.comm.tls import server_context

    assert isinstance(port_or_name, int)
    return await tcp_listen(
        host,
        port_or_name,
        handler,
        token=token,
        sock=sock,
        ssl_context=ssl_context or server_context(),
        max_frame_bytes=max_frame_bytes,
        handshake_timeout=handshake_timeout,
    )
