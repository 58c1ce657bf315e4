"""In-process transport: the :class:`~graphexec.comm.core.Comm` semantics without sockets.

For tests and in-process clusters. Both ends must live on the same event loop. A
connection is a pair of ``asyncio.Queue`` objects, one per direction.

Fidelity with TCP: the token is checked on connect (a wrong one raises
``CommClosedError`` and logs a warning on the listener side); headers go through
``dumps_header`` / ``loads_header`` so a header that TCP could not send fails here too;
frame count and size limits are enforced on read; messages written before a close are
still delivered. Frames are passed by reference, not copied (as on TCP, do not mutate a
frame after writing it). Writes never block: there is no backpressure.

Listeners are registered by name in :data:`_LISTENERS`, the in-process counterpart of
the operating system's table of bound ports; it is the one piece of process-wide state
in ``comm/`` and holds only listeners that are running.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from collections.abc import Sequence
from typing import Any

from graphexec.comm import framing
from graphexec.comm.auth import normalize_token
from graphexec.comm.core import Comm, Frame, Handler, Listener, format_address
from graphexec.errors import CommClosedError, ProtocolError
from graphexec.protocol.wire import dumps_header, loads_header

__all__ = ["InprocComm", "InprocListener", "connect", "listen"]

logger = logging.getLogger("graphexec.comm")

_LISTENERS: dict[str, InprocListener] = {}
_ids = itertools.count(1)
_RETRY_FIRST = 0.005
_RETRY_MAX = 0.1


class _Closed:
    """End-of-stream marker, optionally carrying why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_Item = tuple[bytes, list[Frame]] | _Closed


class InprocComm(Comm):
    """One end of an in-process connection."""

    def __init__(
        self,
        inbox: asyncio.Queue[_Item],
        *,
        local: str,
        peer: str,
        max_frame_bytes: int,
    ) -> None:
        self._inbox = inbox
        self._peer_comm: InprocComm | None = None
        self.local = local
        self.peer = peer
        self._max_frame_bytes = max_frame_bytes
        self._closed_here = False
        self._peer_gone = False
        self._eof: _Closed | None = None

    async def read(self) -> tuple[Any, list[memoryview | bytes]]:
        if self._closed_here:
            raise self._closed_error(_Closed("closed locally"))
        if self._eof is not None:
            raise self._closed_error(self._eof)
        item = await self._inbox.get()
        if isinstance(item, _Closed):
            self._eof = item
            raise self._closed_error(item)
        header_bytes, frames = item
        try:
            framing.check_nframes(len(frames) + 1)
            framing.check_lengths(
                [len(header_bytes), *(memoryview(f).nbytes for f in frames)],
                max_frame_bytes=self._max_frame_bytes,
            )
            header = loads_header(header_bytes)
        except ProtocolError as err:
            logger.warning("closing connection %s -> %s: %s", self.peer, self.local, err)
            self.abort()
            raise
        return header, [f if isinstance(f, bytes) else memoryview(f) for f in frames]

    async def write(self, header: Any, frames: Sequence[Frame] = ()) -> None:
        self.write_nowait(header, frames)

    def write_nowait(self, header: Any, frames: Sequence[Frame] = ()) -> None:
        header_bytes = dumps_header(header)
        peer = self._peer_comm
        if self.closed() or peer is None:
            raise CommClosedError(f"connection {self.local} -> {self.peer} closed")
        peer._inbox.put_nowait((header_bytes, list(frames)))

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed_here:
            return
        self._closed_here = True
        self._inbox.put_nowait(_Closed("closed locally"))  # wakes our own pending read
        peer = self._peer_comm
        if peer is not None and not peer._closed_here:
            peer._peer_gone = True
            peer._inbox.put_nowait(_Closed("closed by the peer"))

    def closed(self) -> bool:
        return self._closed_here or self._peer_gone

    def _closed_error(self, eof: _Closed) -> CommClosedError:
        return CommClosedError(f"connection {self.local} -> {self.peer} {eof.reason}")


class InprocListener(Listener):
    """Accepts in-process connections under ``inproc://<name>``."""

    def __init__(self, name: str, handler: Handler, *, token: bytes, max_frame_bytes: int) -> None:
        super().__init__(handler)
        self.name = name
        self.address = format_address("inproc", "", name)
        self._token = token
        self._max_frame_bytes = max_frame_bytes
        self.loop = asyncio.get_running_loop()

    def _stop_accepting(self) -> None:
        if _LISTENERS.get(self.name) is self:
            del _LISTENERS[self.name]

    def _accept(self, token: bytes, *, max_frame_bytes: int) -> InprocComm:
        if not hmac.compare_digest(token, self._token):
            logger.warning("rejected connection to %s: wrong token", self.address)
            raise CommClosedError(f"authentication with {self.address} failed: wrong token")
        client_address = f"{self.address}/{next(_ids)}"
        server = InprocComm(
            asyncio.Queue(),
            local=self.address,
            peer=client_address,
            max_frame_bytes=self._max_frame_bytes,
        )
        client = InprocComm(
            asyncio.Queue(),
            local=client_address,
            peer=self.address,
            max_frame_bytes=max_frame_bytes,
        )
        server._peer_comm, client._peer_comm = client, server
        self._spawn(self._run_handler(server), name=f"graphexec.comm {client_address}")
        return client


async def listen(
    name: str,
    handler: Handler,
    *,
    token: bytes | str,
    max_frame_bytes: int = framing.MAX_FRAME_BYTES,
) -> InprocListener:
    """Listen on ``inproc://<name>`` (an empty name picks a fresh one)."""
    token_bytes = normalize_token(token)
    if not name:
        name = f"auto-{next(_ids)}"
    if name in _LISTENERS:
        raise OSError(f"address already in use: inproc://{name}")
    listener = InprocListener(name, handler, token=token_bytes, max_frame_bytes=max_frame_bytes)
    _LISTENERS[name] = listener
    return listener


async def connect(
    name: str,
    *,
    token: bytes | str,
    timeout: float = 10.0,
    max_frame_bytes: int = framing.MAX_FRAME_BYTES,
) -> InprocComm:
    """Connect to ``inproc://<name>``, waiting up to ``timeout`` for it to appear."""
    token_bytes = normalize_token(token)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = _RETRY_FIRST
    while (listener := _LISTENERS.get(name)) is None:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise CommClosedError(
                f"could not connect to inproc://{name}: no such listener "
                f"(gave up after {timeout} s)"
            )
        logger.debug("no listener at inproc://%s; retrying in %.3f s", name, delay)
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, _RETRY_MAX)
    if listener.loop is not loop:
        raise CommClosedError(
            f"cannot connect to inproc://{name}: it listens on another event loop"
        )
    return listener._accept(token_bytes, max_frame_bytes=max_frame_bytes)
