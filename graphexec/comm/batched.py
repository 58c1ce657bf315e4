"""Batched sending and pooled request connections on top of a :class:`Comm`.

Every message on a graphexec connection is a *batch*: the header is a list of op dicts,
and the frames of all ops that carry raw data follow in order (an op that carries frames
says how many in ``"nframes"``). :class:`BatchedSend` gathers the ops produced during one
event-loop iteration into one such message, which is how thousands of ``task-finished``
or ``compute`` ops per second cost a handful of writes.

:class:`ConnectionPool` hands out connections for request/response exchanges
(``get-data``): one exchange at a time per connection, idle ones reused.

Ownership: a BatchedSend's writer coroutine is owned by it; ``close()`` flushes what is
pending and awaits the writer. A pool owns its idle connections and closes them in
``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from graphexec.comm.core import Comm
from graphexec.errors import CommClosedError, ProtocolError

__all__ = ["BatchedSend", "ConnectionPool", "split_frames"]

logger = logging.getLogger("graphexec.comm")

Frame = bytes | memoryview | bytearray


def split_frames(
    ops: list[dict[str, Any]], frames: Sequence[Frame]
) -> list[tuple[dict[str, Any], list[Frame]]]:
    """Pair each op of a batch with its own frames (ops declare ``nframes``).

    Raises ``ProtocolError`` if the batch is malformed (not a list of op dicts, or an
    ``nframes`` that is not a count): the peer broke the protocol, drop its connection.

    >>> split_frames([{"op": "a", "nframes": 2}, {"op": "b"}], [b"x", b"y"])
    [({'op': 'a', 'nframes': 2}, [b'x', b'y']), ({'op': 'b'}, [])]
    >>> split_frames({"op": "a"}, [])
    Traceback (most recent call last):
    ...
    graphexec.errors.ProtocolError: malformed batch: expected a list of ops, got dict
    """
    if not isinstance(ops, list):
        raise ProtocolError(f"malformed batch: expected a list of ops, got {type(ops).__name__}")
    out = []
    i = 0
    for op in ops:
        if not isinstance(op, dict):
            raise ProtocolError(f"malformed batch: an op is a {type(op).__name__}, not a dict")
        n = op.get("nframes", 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ProtocolError(f"malformed batch: op {op.get('op')!r} has nframes={n!r}")
        out.append((op, list(frames[i : i + n])))
        i += n
    return out


class BatchedSend:
    """Queue ops for one comm; they go out together at the next loop iteration."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self._ops: list[dict[str, Any]] = []
        self._frames: list[Frame] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.ensure_future(self._writer())

    def send(self, op: dict[str, Any], frames: Sequence[Frame] = ()) -> None:
        if self._closing:
            raise CommClosedError(f"batched send to {self.comm.peer} is closed")
        if frames:
            op["nframes"] = len(frames)
            self._frames.extend(frames)
        self._ops.append(op)
        self._wake.set()

    async def _writer(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self._ops:
                    if self._closing:
                        return
                    continue
                # let producers in this loop iteration add to the batch
                await asyncio.sleep(0)
                ops, frames = self._ops, self._frames
                self._ops, self._frames = [], []
                await self.comm.write(ops, frames)
                if self._closing and not self._ops:
                    return
        except CommClosedError:
            pass  # the reader side of the owner notices and cleans up
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batched send to %s failed", self.comm.peer)
            self.comm.abort()

    async def close(self, timeout: float = 2.0) -> None:
        """Flush what is pending, then stop the writer (the comm stays open)."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except (asyncio.TimeoutError, CommClosedError):
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def abort(self) -> None:
        self._closing = True
        self._task.cancel()


class ConnectionPool:
    """Reusable connections for request/response exchanges with many peers."""

    def __init__(
        self, token: bytes | str, *, limit_per_peer: int = 4, timeout: float = 10.0
    ) -> None:
        self._token = token
        self._idle: dict[str, list[Comm]] = defaultdict(list)
        self._limit = limit_per_peer
        self._timeout = timeout
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self, address: str) -> AsyncIterator[Comm]:
        from graphexec.comm import connect

        if self._closed:
            raise CommClosedError("connection pool is closed")
        idle = self._idle[address]
        comm = None
        while idle:
            candidate = idle.pop()
            if not candidate.closed():
                comm = candidate
                break
        if comm is None:
            comm = await connect(address, token=self._token, timeout=self._timeout)
        ok = False
        try:
            yield comm
            ok = True
        finally:
            if ok and not comm.closed() and not self._closed and len(idle) < self._limit:
                idle.append(comm)
            else:
                comm.abort()

    async def request(
        self, address: str, op: dict[str, Any], frames: Sequence[Frame] = ()
    ) -> tuple[list[dict[str, Any]], list[Frame]]:
        """Send one op, return the reply batch."""
        async with self.connection(address) as comm:
            await comm.write([op], frames)
            header, reply_frames = await comm.read()
            return header, list(reply_frames)

    async def close(self) -> None:
        self._closed = True
        for comms in self._idle.values():
            for comm in comms:
                comm.abort()
        self._idle.clear()
