"""The store service: the node manager's server for its node's object store.

Every process of the node (workers, the driver) holds one :class:`~graphexec.comm.rpc.
RPCConnection` to it and maps the arena file itself; this server only does bookkeeping
(``StoreManager``: allocation, leases, spilling) and answers peers on other nodes that copy
objects out in chunks. Each connection is one lease *owner*: when it closes, its leases
are released and its half-written objects aborted, so a process that dies mid-write
leaves nothing visible.

Ops (all replied to, except ``store-release``):
``store-allocate {key, nbytes, replace} -> {offset}`` (``replace``: write over a sealed
object of that key), ``store-seal {key, lengths}``,
``store-abort {key}``, ``store-lease {key} -> {offset, lengths, nbytes}``,
``store-release {keys}``, ``store-read {key, start, length} -> one frame`` (a slice of a
leased object, for cross-node copies), ``store-stats -> {...}``,
``store-info -> {path, capacity}``.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from graphexec.comm.batched import BatchedSend, split_frames
from graphexec.comm.core import Comm
from graphexec.comm.rpc import reply, reply_error
from graphexec.errors import CommClosedError, GraphexecError, ProtocolError
from graphexec.store.manager import StoreManager

__all__ = ["StoreServer"]

logger = logging.getLogger("graphexec.store")


class StoreServer:
    """Serves one node's :class:`StoreManager` to the processes that use it."""

    def __init__(
        self,
        manager: StoreManager,
        arena: memoryview,
        *,
        arena_path: str,
        capacity: int,
        node_id: str,
    ) -> None:
        self.manager = manager
        self.arena = arena
        self.arena_path = arena_path
        self.capacity = capacity
        self.node_id = node_id
        self._owners = itertools.count()
        self._handlers = {
            "store-allocate": self._allocate,
            "store-seal": self._seal,
            "store-abort": self._abort,
            "store-lease": self._lease,
            "store-release": self._release,
            "store-read": self._read,
            "store-stats": self._stats,
            "store-info": self._info,
        }

    async def handle_comm(self, comm: Comm) -> None:
        owner = f"conn-{next(self._owners)}"
        out = BatchedSend(comm)
        try:
            while True:
                ops, frames = await comm.read()
                for op, op_frames in split_frames(ops, frames):
                    self._dispatch(owner, op, op_frames, out)
                if self.manager.validate:
                    self.manager.validate_state()
        except CommClosedError:
            pass
        except ProtocolError as err:  # a broken message: drop this peer, nobody else
            logger.warning("store: dropping %s (%s): %s", comm.peer, owner, err)
        finally:
            self.manager.drop_owner(owner)
            out.abort()

    def _dispatch(
        self, owner: str, op: dict[str, Any], frames: list[Any], out: BatchedSend
    ) -> None:
        handler = self._handlers.get(str(op.get("op")))
        if handler is None:
            logger.warning("store: unknown op %r from %s", op.get("op"), owner)
            if "rid" in op:
                out.send(reply_error(op, ValueError(f"unknown op {op.get('op')!r}")))
            return
        try:
            answer = handler(owner, op)
        except (GraphexecError, KeyError, TypeError, ValueError) as err:
            if "rid" in op:
                out.send(reply_error(op, err))
            return
        if answer is not None and "rid" in op:
            body, answer_frames = answer
            out.send(reply(op, **body), answer_frames)

    # each handler returns (reply body, frames) or None for no reply

    def _allocate(self, owner: str, op: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        offset = self.manager.allocate(
            owner, op["key"], int(op["nbytes"]), replace=bool(op.get("replace"))
        )
        return {"offset": offset}, []

    def _seal(self, owner: str, op: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        self.manager.seal(owner, op["key"], [int(n) for n in op["lengths"]])
        return {}, []

    def _abort(self, owner: str, op: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        self.manager.abort(owner, op["key"])
        return {}, []

    def _lease(self, owner: str, op: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        offset, lengths = self.manager.lease(owner, op["key"])
        nbytes, _ = self.manager.info(op["key"])
        return {"offset": offset, "lengths": lengths, "nbytes": nbytes}, []

    def _release(self, owner: str, op: dict[str, Any]) -> None:
        leases: list[tuple[str, int | None]] = [(key, None) for key in op.get("keys", ())]
        leases += [(key, int(offset)) for key, offset in op.get("leases", ())]
        for key, offset in leases:
            try:
                self.manager.release(owner, key, offset=offset)
            except (KeyError, GraphexecError):
                logger.debug("store: release of unknown lease %s by %s", key, owner)
        return None

    def _read(self, owner: str, op: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        # the caller holds a lease on the key (store-lease first), so the region is stable
        offset, _ = self.manager.lease(owner, op["key"])
        try:
            start, length = int(op["start"]), int(op["length"])
            chunk = bytes(self.arena[offset + start : offset + start + length])
        finally:
            self.manager.release(owner, op["key"], offset=offset)
        return {"length": len(chunk)}, [chunk]

    def _stats(self, owner: str, op: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        return {"stats": {**self.manager.stats(), "node_id": self.node_id}}, []

    def _info(self, owner: str, op: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        return {"path": self.arena_path, "capacity": self.capacity, "node": self.node_id}, []
