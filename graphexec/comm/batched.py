"""Batched sending and pooled request connections on top of a :class:`Comm`.

Every message on a graphexec connection is a *batch*: the header is a list of op dicts,
and the frames of all ops that carry raw data follow in order (an op that carries frames
says how many in ``"nframes"``). :class:`BatchedSend` gathers the ops produced during one
event-loop iteration into one such message, which is how thousands of ``task-finished``
or ``compute`` ops per second cost a handful of writes. A batch with more frames than a
message may hold (:data:`~graphexec.comm.framing.MAX_FRAMES`) goes out as several messages.

What waits for a slow peer is bounded: while a write is in progress, the ops queued
behind it are counted (frames exactly, headers estimated), all but the first one, so one
message of any size the framing allows always goes through. Past ``max_pending_bytes``
(``GRAPHEXEC_MAX_PENDING_BYTES``, default :data:`MAX_PENDING_BYTES`), *and* with the
write in progress stuck for ``stall_seconds`` (default :data:`STALL_SECONDS`), the peer
is taken for one that stopped reading: a warning says so, the queue is dropped and the
comm aborted, so the owner's reader sees the connection closed and its usual disconnect
path runs; later ``send`` calls are dropped quietly. A peer that reads, however slowly,
is never dropped for a burst: the stall condition spares it. Producers that can wait use
``send_when_room`` instead, which waits until the op fits.

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
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import islice
from typing import Any

from graphexec.comm import framing
from graphexec.comm.core import Comm
from graphexec.errors import CommClosedError, ProtocolError

__all__ = [
    "MAX_PENDING_BYTES",
    "BatchedSend",
    "ConnectionPool",
    "pending_bytes_limit",
    "split_frames",
]

logger = logging.getLogger("graphexec.comm")

Frame = bytes | memoryview | bytearray

#: default bound for what waits behind a write to one peer (``GRAPHEXEC_MAX_PENDING_BYTES``)
MAX_PENDING_BYTES = 256 * 2**20
#: a write stuck this long, with too much queued behind it, means the peer stopped reading
STALL_SECONDS = 30.0


def pending_bytes_limit() -> int:
    """Bytes that may wait for one peer (``GRAPHEXEC_MAX_PENDING_BYTES``)."""
    return framing.env_limit("GRAPHEXEC_MAX_PENDING_BYTES", MAX_PENDING_BYTES)


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

    def __init__(
        self,
        comm: Comm,
        *,
        max_pending_bytes: int | None = None,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self.comm = comm
        self.stall_seconds = stall_seconds
        #: when the write in progress started (monotonic)
        self._write_started = 0.0
        #: what may wait behind a write before the peer is dropped (see the module doc)
        self.max_pending_bytes = max_pending_bytes or pending_bytes_limit()
        self._ops: list[dict[str, Any]] = []
        self._frames: list[Frame] = []
        self._wake = asyncio.Event()
        self._closing = False
        #: a write is in progress: what is queued now waits for the peer
        self._writing = False
        #: bytes queued behind the write, the first op excluded
        self._pending_bytes = 0
        #: set whenever the queue is taken (or can never be): wakes ``send_when_room``
        self._room = asyncio.Event()
        #: dropped for not reading: sends are ignored
        self._overflowed = False
        self._task = asyncio.ensure_future(self._writer())

    def send(self, op: dict[str, Any], frames: Sequence[Frame] = ()) -> None:
        if self._overflowed:
            return  # the comm is aborted; its reader runs the disconnect path
        if self._closing:
            raise CommClosedError(f"batched send to {self.comm.peer} is closed")
        if self._writing and self._ops:
            self._pending_bytes += _approx_nbytes(op) + _frames_nbytes(frames)
            if (
                self._pending_bytes > self.max_pending_bytes
                and time.monotonic() - self._write_started > self.stall_seconds
            ):
                self._overflow()
                return
        if frames:
            op["nframes"] = len(frames)
            self._frames.extend(frames)
        self._ops.append(op)
        self._wake.set()

    async def send_when_room(self, op: dict[str, Any], frames: Sequence[Frame] = ()) -> None:
        """``send``, first waiting until the op fits under ``max_pending_bytes``."""
        nbytes = _approx_nbytes(op) + _frames_nbytes(frames)
        while (
            self._writing
            and self._ops
            and not (self._closing or self._overflowed)
            and self._pending_bytes + nbytes > self.max_pending_bytes
        ):
            self._room.clear()
            await self._room.wait()
        self.send(op, frames)

    def _overflow(self) -> None:
        logger.warning(
            "dropping the connection to %s: more than %d bytes are queued for it behind "
            "a write it has not taken (GRAPHEXEC_MAX_PENDING_BYTES): it stopped reading, "
            "or reads far slower than it is sent to",
            self.comm.peer,
            self.max_pending_bytes,
        )
        self._overflowed = True
        self._ops, self._frames = [], []
        self._pending_bytes = 0
        self._room.set()
        self._wake.set()
        self.comm.abort()  # fails the write in progress: the writer ends

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
                self._pending_bytes = 0
                self._room.set()
                self._writing = True
                for part_ops, part_frames in _messages(ops, frames):
                    self._write_started = time.monotonic()
                    await self.comm.write(part_ops, part_frames)
                self._writing = False
                if self._closing and not self._ops:
                    return
        except CommClosedError:
            pass  # the reader side of the owner notices and cleans up
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batched send to %s failed", self.comm.peer)
            self.comm.abort()
        finally:
            self._writing = False
            self._room.set()

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


def _messages(
    ops: list[dict[str, Any]], frames: list[Frame]
) -> list[tuple[list[dict[str, Any]], list[Frame]]]:
    """A batch as messages of at most ``MAX_FRAMES`` frames each (the header included).

    >>> ops = [{"op": "a", "nframes": 6000}, {"op": "b", "nframes": 6000}]
    >>> [(len(o), len(f)) for o, f in _messages(ops, [b""] * 12000)]
    [(1, 6000), (1, 6000)]
    """
    if len(frames) < framing.MAX_FRAMES:
        return [(ops, frames)]
    out = []
    first_op = first_frame = end = 0
    for i, op in enumerate(ops):
        n = op.get("nframes", 0)
        if end > first_frame and end + n - first_frame >= framing.MAX_FRAMES:
            out.append((ops[first_op:i], frames[first_frame:end]))
            first_op, first_frame = i, end
        end += n
    out.append((ops[first_op:], frames[first_frame:]))
    return out


def _frames_nbytes(frames: Sequence[Frame]) -> int:
    return sum(len(f) if isinstance(f, bytes) else memoryview(f).nbytes for f in frames)


_TEXT = (bytes, str, bytearray)
#: entries of a container measured; the rest are taken to be alike
_SAMPLE = 8


def _approx_nbytes(op: dict[str, Any]) -> int:
    """A cheap estimate of an op's encoded size: its strings and bytes, up to three levels
    deep, long containers estimated from their first entries.

    >>> _approx_nbytes({"op": "key-in-memory", "inline": [bytes(90_000)]}) > 90_000
    True
    """
    n = 0
    for value in op.values():
        kind = type(value)
        if kind in _TEXT:
            n += len(value) + 24
        elif kind is list or kind is tuple:
            n += _container_nbytes(value, len(value), True) + 24
        elif kind is dict:
            n += _container_nbytes(value.values(), len(value), True) + 24
        else:
            n += 24
    return n


def _container_nbytes(values: Iterable[Any], count: int, deep: bool) -> int:
    total = seen = 0
    for value in islice(values, _SAMPLE):
        seen += 1
        kind = type(value)
        if kind in _TEXT:
            total += len(value) + 8
        elif deep and kind is dict:
            total += _container_nbytes(value.values(), len(value), False) + 8 * len(value)
        elif deep and (kind is list or kind is tuple):
            total += _container_nbytes(value, len(value), False)
        else:
            total += 16
    return total if count <= seen else total * count // seen


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
