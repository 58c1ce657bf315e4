"""A process's handle on its node's object store.

Every process of a node that reads or writes large objects (workers, the driver) has
one :class:`StoreClient`: an RPC connection to the node manager's store service plus its
own mapping of the node's arena file. The mapping is made once per process and reused,
which is what makes writes run at memory speed instead of paying a page fault per page.

* write: ``store-allocate`` -> copy the frames into the mapping -> ``store-seal``;
* read: ``store-lease`` -> read-only views of the mapping; one server lease per object
  per process, counted locally, released when the last object built on any of its views
  is garbage collected (a second ``get`` of an object still in use costs no round trip);
* copy from another node: lease there, pull chunks (``CHUNK_BYTES`` at a time) straight
  into a freshly allocated region here, seal; never two full copies in Python memory.

The async methods run on the owning event loop; the sync ones may be called from any
other thread (executor threads, the driver's main thread) and hop onto that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Any

from graphexec.comm import connect
from graphexec.comm.rpc import RemoteError, RPCConnection
from graphexec.errors import ObjectStoreFullError
from graphexec.store.layout import frames_layout, read_frames
from graphexec.store.mapping import ArenaMapping

__all__ = ["CHUNK_BYTES", "StoreClient", "read_remote"]

CHUNK_BYTES = 8 * 1024 * 1024
#: seconds to keep retrying a refused connection to another node's store. Its socket
#: listens from its node manager's start, before anyone learns its address, so a refusal
#: means the store is gone: fail soon (the task is retried, the object recomputed)
#: rather than after ``connect``'s default 10 s.
PEER_CONNECT_TIMEOUT = 3.0
#: how much of the arena's start every process pre-faults (objects are placed low first)
PRETOUCH_BYTES = 256 * 1024 * 1024


def pretouch_bytes(capacity: int) -> int:
    """Bytes to pre-fault: ``GRAPHEXEC_STORE_PRETOUCH`` or 256 MiB, at most the capacity."""
    wanted = int(os.environ.get("GRAPHEXEC_STORE_PRETOUCH", PRETOUCH_BYTES))
    return max(0, min(capacity, wanted))


class StoreClient:
    def __init__(self, address: str, *, token: str, node_id: str = "") -> None:
        self.address = address
        self.token = token
        self.node_id = node_id
        self.mapping: ArenaMapping | None = None
        self.capacity = 0
        self.path = ""
        self._rpc: RPCConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._releases: list[tuple[str, int]] = []
        #: objects this process leases: key -> [offset, lengths, live local views]
        self._held: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        comm = await connect(self.address, token=self.token)
        self._rpc = RPCConnection(comm)
        info, _ = await self._rpc.call({"op": "store-info"})
        self.path = info["path"]
        self.capacity = int(info["capacity"])
        self.node_id = self.node_id or info.get("node", "")
        self.mapping = ArenaMapping(self.path, self.capacity)
        self.mapping.pretouch(pretouch_bytes(self.capacity))

    async def close(self) -> None:
        if self._rpc is not None:
            self._flush_releases()
            await self._rpc.close()
        if self.mapping is not None:
            self.mapping.close()

    # ------------------------------------------------------------------ async API

    async def put_frames_async(self, key: str, frames: Sequence[Any]) -> int:
        """Write an object; returns the bytes it takes in the store.

        A sealed object already under ``key`` is replaced: the result of an earlier run
        of the same task, whose worker died after writing it and before reporting it.
        """
        rpc, mapping = self._ready()
        _, total = frames_layout(frames)
        answer, _ = await rpc.call(
            {"op": "store-allocate", "key": key, "nbytes": total, "replace": True}
        )
        offset = int(answer["offset"])
        try:
            lengths = mapping.write(offset, frames)
        except BaseException:
            rpc.notify({"op": "store-abort", "key": key, "rid": -1})
            raise
        await rpc.call({"op": "store-seal", "key": key, "lengths": lengths})
        return total

    async def get_frames_async(self, key: str) -> list[memoryview]:
        """Zero-copy, read-only views of an object's frames (leased until collected)."""
        views = self._views_of_held(key)
        if views is not None:
            return views
        rpc, _ = self._ready()
        answer, _ = await rpc.call({"op": "store-lease", "key": key})
        return self._hold(key, int(answer["offset"]), [int(n) for n in answer["lengths"]])

    def _views_of_held(self, key: str) -> list[memoryview] | None:
        """Views of an object this process already leases: no round trip."""
        with self._lock:
            held = self._held.get(key)
            if held is None:
                return None
            held[2] += 1
            offset, lengths = held[0], held[1]
        assert self.mapping is not None
        return self.mapping.views(offset, lengths, lambda: self._view_dropped(key))

    def _hold(self, key: str, offset: int, lengths: list[int]) -> list[memoryview]:
        """A fresh server lease: count local views of it until the last one is dropped."""
        with self._lock:
            held = self._held.get(key)
            extra_lease = held is not None and held[0] == offset
            if held is not None and extra_lease:
                held[2] += 1  # a concurrent get leased it too: give that lease back
            else:
                self._held[key] = [offset, lengths, 1]
        if extra_lease:
            self._release_later(key, offset)
        assert self.mapping is not None
        return self.mapping.views(offset, lengths, lambda: self._view_dropped(key))

    def _view_dropped(self, key: str) -> None:
        """A finalizer: one local view fewer; the last one releases the server lease."""
        with self._lock:
            held = self._held.get(key)
            if held is None:
                return
            held[2] -= 1
            if held[2] > 0:
                return
            del self._held[key]
            offset = held[0]
        self._release_later(key, offset)

    async def copy_from(self, key: str, peer: str) -> int:
        """Copy ``key`` from the store service at ``peer`` into this node's store."""
        rpc, mapping = self._ready()
        remote = RPCConnection(await connect(peer, token=self.token, timeout=PEER_CONNECT_TIMEOUT))
        try:
            answer, _ = await remote.call({"op": "store-lease", "key": key})
            lengths = [int(n) for n in answer["lengths"]]
            total = int(answer["nbytes"])
            try:
                local, _ = await rpc.call({"op": "store-allocate", "key": key, "nbytes": total})
            except RemoteError as err:
                if err.kind == "ValueError":  # another process is copying it here already
                    return total
                raise
            offset = int(local["offset"])
            region = mapping.region(offset, total)
            try:
                for start in range(0, total, CHUNK_BYTES):
                    length = min(CHUNK_BYTES, total - start)
                    _, frames = await remote.call(
                        {"op": "store-read", "key": key, "start": start, "length": length}
                    )
                    region[start : start + length] = frames[0]
            except BaseException:
                rpc.notify({"op": "store-abort", "key": key, "rid": -1})
                raise
            finally:
                region.release()
            await rpc.call({"op": "store-seal", "key": key, "lengths": lengths})
            remote.notify({"op": "store-release", "keys": [key]})
            return total
        finally:
            await remote.close()

    async def stats_async(self) -> dict[str, Any]:
        rpc, _ = self._ready()
        answer, _ = await rpc.call({"op": "store-stats"})
        stats: dict[str, Any] = answer["stats"]
        return stats

    # ------------------------------------------------------------------ sync API

    def put_frames(self, key: str, frames: Sequence[Any]) -> int:
        result: int = self._sync(self.put_frames_async(key, frames))
        return result

    def get_frames(self, key: str) -> list[memoryview]:
        views = self._views_of_held(key)  # already leased here: no hop to the loop
        if views is not None:
            return views
        result: list[memoryview] = self._sync(self.get_frames_async(key))
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._sync(self.stats_async())
        return result

    def _sync(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # ------------------------------------------------------------------ internals

    def _ready(self) -> tuple[RPCConnection, ArenaMapping]:
        if self._rpc is None or self.mapping is None:
            raise ObjectStoreFullError("the object store is not connected")
        return self._rpc, self.mapping

    def _release_later(self, key: str, offset: int) -> None:
        """Called by a finalizer, from any thread: batch the release for the loop."""
        with self._lock:
            self._releases.append((key, offset))
            first = len(self._releases) == 1
        if first and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._flush_releases)

    def _flush_releases(self) -> None:
        with self._lock:
            leases, self._releases = self._releases, []
        if leases and self._rpc is not None:
            self._rpc.notify({"op": "store-release", "leases": leases})


async def read_remote(key: str, peer: str, token: str) -> list[memoryview]:
    """Read an object from the store service at ``peer`` into this process's memory.

    For processes with no store of their own on that node (a driver on another
    machine): one buffer of the object's size, filled chunk by chunk, then sliced into
    frames. The remote lease is held only while the chunks are read.
    """
    remote = RPCConnection(await connect(peer, token=token, timeout=PEER_CONNECT_TIMEOUT))
    try:
        answer, _ = await remote.call({"op": "store-lease", "key": key})
        lengths = [int(n) for n in answer["lengths"]]
        total = int(answer["nbytes"])
        buffer = bytearray(total)
        view = memoryview(buffer)
        for start in range(0, total, CHUNK_BYTES):
            length = min(CHUNK_BYTES, total - start)
            _, frames = await remote.call(
                {"op": "store-read", "key": key, "start": start, "length": length}
            )
            view[start : start + length] = frames[0]
        remote.notify({"op": "store-release", "keys": [key]})
        return read_frames(view, lengths)
    finally:
        await remote.close()
