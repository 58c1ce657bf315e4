"""One node's object store as the node manager owns it: directory, arena, bookkeeping.

Lifecycle (``open`` then ``close``): clean up store directories that dead clusters left
behind, create this node's directory (``/dev/shm/graphexec-<cluster>-<node>``, or a
directory on disk with a warning when ``/dev/shm`` is missing or too small), create the
sparse arena file of ``capacity`` bytes, map it, and serve it; ``close`` removes the
directory and the spill directory. The node manager closes the store only after its
workers have exited.
"""

from __future__ import annotations

import logging

from graphexec.store.client import pretouch_bytes
from graphexec.store.manager import StoreManager
from graphexec.store.mapping import ArenaMapping
from graphexec.store.paths import (
    cleanup_stale,
    create_arena,
    create_store_dir,
    remove_store_dir,
    spill_dir,
)
from graphexec.store.server import StoreServer

__all__ = ["NodeStore"]

logger = logging.getLogger("graphexec.store")


class NodeStore:
    def __init__(self, cluster: str, node_id: str, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"object_store_memory must be positive, got {capacity}")
        self.cluster = cluster
        self.node_id = node_id
        self.capacity = capacity
        self.address = ""
        self.path = ""
        self.on_shm = False
        self._mapping: ArenaMapping | None = None
        self._manager: StoreManager | None = None
        self._server: StoreServer | None = None

    def open(self) -> None:
        removed = cleanup_stale()
        if removed:
            logger.info("removed stale object store directories: %s", removed)
        self.path, self.on_shm = create_store_dir(self.cluster, self.node_id, self.capacity)
        arena_path = create_arena(self.path, self.capacity)
        self._mapping = ArenaMapping(arena_path, self.capacity)
        self._mapping.pretouch(pretouch_bytes(self.capacity))  # allocates those pages once
        arena = self._mapping.region(0, self.capacity)
        self._manager = StoreManager(self.capacity, arena, spill_dir(self.path))
        self._server = StoreServer(
            self._manager,
            arena,
            arena_path=arena_path,
            capacity=self.capacity,
            node_id=self.node_id,
        )

    @property
    def server(self) -> StoreServer:
        assert self._server is not None, "open() the store first"
        return self._server

    def free(self, key: str) -> None:
        if self._manager is not None:
            try:
                self._manager.free(key)
            except KeyError:
                logger.debug("free of unknown store object %s", key)

    def close(self) -> None:
        if self._server is not None:
            self._server.arena.release()
        if self._mapping is not None:
            self._mapping.close()
        if self.path:
            remove_store_dir(self.path)
        self._mapping = self._manager = self._server = None
