"""Request/response over one connection, many requests in flight.

:class:`RPCConnection` tags each request op with a ``rid`` and matches the ``reply`` op
that carries the same ``rid``; replies may come in any order. A reply with an ``error``
field raises :class:`RemoteError` (its ``kind`` names the error class on the far side).

Servers answer with :func:`reply` / :func:`reply_error`. The reader coroutine is owned by
the connection: ``close()`` cancels it and fails whatever is still waiting with
``CommClosedError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

from graphexec import errors
from graphexec.comm.batched import BatchedSend, split_frames
from graphexec.comm.core import Comm
from graphexec.errors import CommClosedError, GraphexecError

__all__ = ["RPCConnection", "RemoteError", "reply", "reply_error"]

Frame = bytes | memoryview | bytearray


class RemoteError(GraphexecError):
    """The far side failed the request; ``kind`` is its error class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_OWN_ERRORS: dict[str, type[GraphexecError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, GraphexecError) and name != "TaskError"
}


def reply(op: dict[str, Any], **body: Any) -> dict[str, Any]:
    """The reply op for request ``op``."""
    return {"op": "reply", "rid": op.get("rid"), **body}


def reply_error(op: dict[str, Any], err: BaseException) -> dict[str, Any]:
    return {"op": "reply", "rid": op.get("rid"), "error": str(err), "kind": type(err).__name__}


class RPCConnection:
    """Many concurrent requests over one comm (use from the comm's event loop only)."""

    def __init__(self, comm: Comm, *, first: Sequence[dict[str, Any]] = ()) -> None:
        self.comm = comm
        self._send = BatchedSend(comm)
        for op in first:
            self._send.send(op)
        self._rids = itertools.count()
        self._waiting: dict[int, asyncio.Future[tuple[dict[str, Any], list[Frame]]]] = {}
        self._reader = asyncio.ensure_future(self._read())
        self._error: BaseException | None = None

    async def call(
        self, op: dict[str, Any], frames: Sequence[Frame] = ()
    ) -> tuple[dict[str, Any], list[Frame]]:
        """Send ``op`` and wait for its reply (op, frames); raises RemoteError on failure."""
        if self._error is not None:
            raise CommClosedError(f"connection to {self.comm.peer} is closed") from self._error
        rid = next(self._rids)
        fut: asyncio.Future[tuple[dict[str, Any], list[Frame]]]
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._send.send({**op, "rid": rid}, frames)
        answer, answer_frames = await fut
        if "error" in answer:
            kind = str(answer.get("kind", "Error"))
            own = _OWN_ERRORS.get(kind)
            if own is not None:  # graphexec's own errors keep their class across the wire
                raise own(answer["error"])
            raise RemoteError(kind, answer["error"])
        return answer, answer_frames

    def notify(self, op: dict[str, Any], frames: Sequence[Frame] = ()) -> None:
        """Send ``op`` without waiting for anything."""
        if self._error is None:
            with contextlib.suppress(CommClosedError):
                self._send.send(op, frames)

    async def _read(self) -> None:
        try:
            while True:
                ops, frames = await self.comm.read()
                for op, op_frames in split_frames(ops, frames):
                    fut = self._waiting.pop(op.get("rid", -1), None)
                    if fut is not None and not fut.done():
                        fut.set_result((op, op_frames))
        except (CommClosedError, asyncio.CancelledError) as err:
            self._fail(err)
            if isinstance(err, asyncio.CancelledError):
                raise

    def _fail(self, err: BaseException) -> None:
        self._error = err
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(CommClosedError(f"connection to {self.comm.peer} closed"))
        self._waiting.clear()

    @property
    def closed(self) -> bool:
        return self._error is not None or self.comm.closed()

    async def close(self) -> None:
        await self._send.close(timeout=1.0)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self.comm.close()
