"""Where a worker keeps the objects it holds: the storage interface and its in-memory form.

Everything the worker reads or writes goes through :class:`ObjectStorage`, so the
shared-memory store of the next stage (``graphexec/store/``) slots in by implementing the
same five methods. An entry keeps the live Python object (for local dependents: no
deserialization) and/or its serialized frames (for peers and clients: no re-pickling);
whichever is missing is made on first use.

Thread safety: entries are added by executor threads and read by the event loop; every
method is a handful of dict operations, atomic under the GIL, and an entry is never
mutated once stored except to fill in a lazily made half.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from graphexec.errors import ObjectLostError
from graphexec.protocol import serialize as ser

__all__ = ["MemoryStorage", "ObjectStorage", "StoreBackedStorage"]

_MISSING: Any = object()


class ObjectStorage(Protocol):
    """What a worker needs from its object storage."""

    def put(
        self, key: str, value: Any, frames: Sequence[bytes | memoryview] | None, nbytes: int
    ) -> None: ...

    def put_frames(self, key: str, frames: Sequence[bytes | memoryview]) -> None: ...

    def get_value(self, key: str) -> Any: ...

    def get_frames(self, key: str) -> Sequence[bytes | memoryview]: ...

    def delete(self, key: str) -> None: ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...


class _Entry:
    __slots__ = ("value", "frames", "nbytes")

    def __init__(
        self, value: Any, frames: Sequence[bytes | memoryview] | None, nbytes: int
    ) -> None:
        self.value = value
        self.frames = frames
        self.nbytes = nbytes


class MemoryStorage:
    """Objects held in this process's memory."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def put(
        self, key: str, value: Any, frames: Sequence[bytes | memoryview] | None, nbytes: int
    ) -> None:
        self._entries[key] = _Entry(value, frames, nbytes)

    def put_frames(self, key: str, frames: Sequence[bytes | memoryview]) -> None:
        self._entries[key] = _Entry(_MISSING, frames, ser.frames_nbytes(frames))

    def get_value(self, key: str) -> Any:
        entry = self._entries[key]
        if entry.value is _MISSING:
            assert entry.frames is not None
            entry.value = ser.deserialize(list(entry.frames))
        return entry.value

    def get_frames(self, key: str) -> Sequence[bytes | memoryview]:
        entry = self._entries[key]
        if entry.frames is None:
            entry.frames = ser.serialize(entry.value)
        return entry.frames

    def nbytes(self, key: str) -> int:
        return self._entries[key].nbytes

    def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())


class StoreBackedStorage(MemoryStorage):
    """Small objects in this process's memory; large ones in the node's shared store.

    Store objects are not cached here: every read leases the object and returns
    zero-copy views, so the lease lives exactly as long as the objects built on it, and
    a freed object is never kept alive by a worker that once read it.
    """

    def __init__(self, connect_store: Callable[[], Any]) -> None:
        super().__init__()
        #: returns the node's StoreClient, connecting on first call (any thread but the loop)
        self._connect_store = connect_store
        self._in_store: set[str] = set()

    def note_in_store(self, key: str) -> None:
        self._in_store.add(key)

    def get_value(self, key: str) -> Any:
        if key in self._entries or key not in self._in_store:
            return super().get_value(key)
        store = self._connect_store()
        if store is None:
            raise ObjectLostError(f"object {key} is in the node's store, which is unavailable")
        return ser.deserialize(store.get_frames(key))

    def delete(self, key: str) -> None:
        super().delete(key)
        self._in_store.discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self._entries or key in self._in_store
