"""The node's object-store bookkeeping: which object is where, who reads it, what to spill.

One :class:`StoreManager` per node, owned by the node manager process and driven from its
event loop (single-threaded, no locks). It decides where objects go and copies bytes only to
spill and restore. The other processes move object bytes themselves, each through its own
:class:`~graphexec.store.mapping.ArenaMapping`. Entries move through::

    writing -> sealed <-> spilled        (and each of them -> freed)

``writing``: a region is reserved and one owner (a connection) is filling it; nobody else
sees the object. ``sealed``: readable. ``spilled``: in a file of the spill directory, no
region. ``_TRANSITIONS`` lists the allowed moves; any other raises ``InvalidTransition``.

Policy
------
* **Leases pin.** Readers lease an object before mapping it and release the lease when their
  views are gone. A leased object, or one being written, is never spilled or moved.
* **Spilling.** An allocation that finds no gap, or that would push usage past
  ``capacity * high_water``, first spills the least-recently-used unpinned objects until it
  fits. The high-water mark is where spilling starts, not a limit: with nothing left to
  spill, an allocation may fill the store. If even spilling every unpinned object would
  leave no gap, nothing is spilled and ``ObjectStoreFullError`` gives the sizes.
* **Restoring.** Leasing a spilled object copies it into a new region (which may spill
  others) and deletes its file. Spill files are written from and read into the arena in
  chunks (:func:`graphexec.store.paths.write_spill_file`): no second copy in memory.
* **Freeing.** :meth:`StoreManager.free` hides the key at once. The region is reclaimed at
  the last release. The key may be written anew while old readers finish; ``release(...,
  offset=...)`` then says which copy a lease was on.
* **Owners** are connection ids. :meth:`StoreManager.drop_owner` releases a closed
  connection's leases and aborts its unsealed writes: a writer that dies mid-write leaves
  nothing visible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

from graphexec.errors import InvalidTransition, ObjectLostError, ObjectStoreFullError
from graphexec.store.arena import Allocator
from graphexec.store.layout import frame_offsets
from graphexec.store.paths import read_spill_file, write_spill_file

__all__ = ["State", "StoreEntry", "StoreManager"]

State = Literal["writing", "sealed", "spilled", "freed"]

_ADVICE = (
    "raise object_store_memory (init(object_store_memory=...)) or drop references to "
    "objects that are no longer needed"
)


@dataclasses.dataclass(slots=True, eq=False)
class StoreEntry:
    """One object: its region (or spill file), its frames, its writer and its readers."""

    eid: int
    key: str
    nbytes: int
    offset: int | None
    writer: str | None
    state: State = "writing"
    lengths: list[int] = dataclasses.field(default_factory=list)
    #: owner -> number of leases it holds
    leases: dict[str, int] = dataclasses.field(default_factory=dict)
    #: freed by the cluster while still read or written: reclaimed when that ends
    doomed: bool = False
    spill_path: str | None = None


class StoreManager:
    """Allocation, leases, LRU spilling and freeing for one node's arena.

    Parameters
    ----------
    capacity
        Bytes of the arena.
    arena
        A writable memoryview of the whole arena (for spilling and restoring).
    spill_dir
        Directory for spilled objects (on disk), created when first needed.
    high_water
        Fraction of the capacity past which allocations spill first.
    validate
        Run :meth:`validate_state` after every change (tests).
    """

    def __init__(
        self,
        capacity: int,
        arena: memoryview,
        spill_dir: str,
        *,
        high_water: float = 0.9,
        validate: bool = False,
    ) -> None:
        if not 0 < high_water <= 1:
            raise ValueError(f"high_water must be in (0, 1], got {high_water}")
        if arena.nbytes < capacity:
            raise ValueError(f"arena of {arena.nbytes} bytes is smaller than {capacity}")
        self.capacity = capacity
        self.arena = arena
        self.spill_dir = spill_dir
        self.high_water = high_water
        self.validate = validate
        self._alloc = Allocator(capacity)
        self._ids = itertools.count()
        #: visible or being written, by key
        self._entries: dict[str, StoreEntry] = {}
        #: every entry not yet freed (including freed-while-leased ones), by id
        self._by_id: dict[int, StoreEntry] = {}
        #: sealed entries in memory with a visible key, least recently used first
        self._lru: OrderedDict[str, None] = OrderedDict()
        #: owner -> ids of the entries it writes or leases
        self._owned: dict[str, set[int]] = {}
        self._spilled_bytes = 0
        self._spill_count = 0
        self._restore_count = 0

    # ------------------------------------------------------------------ writing

    def allocate(self, owner: str, key: str, nbytes: int, *, replace: bool = False) -> int:
        """Reserve a region of ``nbytes`` for a new object; return its offset.

        With ``replace``, a sealed (or spilled) object under ``key`` is freed first, as by
        :meth:`free`: a task's retry writes over what an earlier run wrote before its
        worker died unreported. An object still being written is never replaced.
        """
        entry = self._entries.get(key)
        if replace and entry is not None and entry.state != "writing":
            self.free(key)
        if key in self._entries:
            raise ValueError(f"object {key!r} is already in the store")
        if nbytes < 0:
            raise ValueError(f"object size must be >= 0, got {nbytes}")
        offset = self._make_room(key, nbytes)
        entry = StoreEntry(next(self._ids), key, nbytes, offset, owner)
        self._entries[key] = entry
        self._by_id[entry.eid] = entry
        self._owned.setdefault(owner, set()).add(entry.eid)
        self._check()
        return offset

    def seal(self, owner: str, key: str, lengths: Sequence[int]) -> None:
        """The writer is done: the object becomes readable."""
        entry = self._written_by(owner, key, "seal")
        total = frame_offsets(lengths)[1]
        if total > entry.nbytes:
            raise ValueError(f"frames of {total} bytes overflow {key!r}'s {entry.nbytes} bytes")
        entry.lengths = list(lengths)
        self._transition(entry, "sealed")
        if entry.doomed:  # freed while it was being written
            self._transition(entry, "freed")
        self._check()

    def abort(self, owner: str, key: str) -> None:
        """The writer failed: drop the half-written object and its region."""
        self._transition(self._written_by(owner, key, "abort"), "freed")
        self._check()

    # ------------------------------------------------------------------ reading

    def lease(self, owner: str, key: str) -> tuple[int, list[int]]:
        """Pin an object for ``owner``, restoring it if spilled: ``(offset, lengths)``.

        A key freed by the cluster can still be leased again by an owner that holds a
        lease on it (a reader taking a second look).
        """
        entry = self._entries.get(key)
        if entry is None:
            entry = self._find(owner, key, lambda e: owner in e.leases)
        elif entry.state == "writing":
            raise KeyError(f"object {key!r} is still being written")
        if entry.state == "spilled":
            self._transition(entry, "sealed")
        entry.leases[owner] = entry.leases.get(owner, 0) + 1
        self._owned.setdefault(owner, set()).add(entry.eid)
        self._bump(entry)
        self._check()
        assert entry.offset is not None
        return entry.offset, list(entry.lengths)

    def release(self, owner: str, key: str, *, offset: int | None = None) -> None:
        """One lease of ``owner`` on ``key`` fewer (the copy at ``offset``, if given)."""
        entry = self._find(
            owner, key, lambda e: owner in e.leases and offset in (None, e.offset), oldest=True
        )
        entry.leases[owner] -= 1
        if not entry.leases[owner]:
            del entry.leases[owner]
            self._owned[owner].discard(entry.eid)
            self._maybe_reclaim(entry)
        self._check()

    def touch(self, key: str) -> None:
        """Mark ``key`` as just used (it moves to the back of the spill order)."""
        entry = self._entries.get(key)
        if entry is None or entry.state == "writing":
            raise KeyError(f"object {key!r} is not in the store")
        self._bump(entry)

    # ------------------------------------------------------------------ lifetime

    def free(self, key: str) -> None:
        """The cluster no longer needs ``key``: reclaim it now, or after the last lease."""
        entry = self._entries.pop(key, None)
        if entry is None:
            raise KeyError(f"object {key!r} is not in the store")
        self._lru.pop(key, None)
        entry.doomed = True
        if entry.state == "spilled" or (entry.state == "sealed" and not entry.leases):
            self._transition(entry, "freed")
        self._check()

    def drop_owner(self, owner: str) -> None:
        """A connection closed: release its leases and abort its unsealed writes."""
        for eid in sorted(self._owned.pop(owner, ())):
            entry = self._by_id.get(eid)
            if entry is None:
                continue
            if entry.state == "writing" and entry.writer == owner:
                self._transition(entry, "freed")
            elif entry.leases.pop(owner, 0):
                self._maybe_reclaim(entry)
        self._check()

    # ------------------------------------------------------------------ queries

    def __contains__(self, key: object) -> bool:
        entry = self._entries.get(key) if isinstance(key, str) else None
        return entry is not None and entry.state != "writing"

    def info(self, key: str) -> tuple[int, State]:
        """``(nbytes, state)`` of a visible or half-written object."""
        entry = self._entries.get(key)
        if entry is None:
            raise KeyError(f"object {key!r} is not in the store")
        return entry.nbytes, entry.state

    def stats(self) -> dict[str, Any]:
        """Sizes and counts, for introspection and the dashboard."""
        live = self._entries.values()
        return {
            "capacity_bytes": self.capacity,
            "used_bytes": self._alloc.used,
            "high_water_bytes": int(self.capacity * self.high_water),
            "spilled_bytes": self._spilled_bytes,
            "bytes_pinned": sum(size for _, size in self._pinned()),
            "num_objects": sum(e.state != "writing" for e in live),
            "num_spilled": sum(e.state == "spilled" for e in live),
            "num_writing": sum(e.state == "writing" for e in live),
            "num_leased": sum(bool(e.leases) for e in self._by_id.values()),
            "total_spills": self._spill_count,
            "total_restores": self._restore_count,
        }

    # ------------------------------------------------------------------ internals

    def _find(
        self, owner: str, key: str, match: Callable[[StoreEntry], bool], *, oldest: bool = False
    ) -> StoreEntry:
        """The entry named ``key`` that ``match`` accepts, among the visible one and
        ``owner``'s own (copies freed while leased or being written): the visible one
        first, or the oldest when ``oldest``."""
        visible = self._entries.get(key)
        found = [self._by_id[i] for i in self._owned.get(owner, ()) if self._by_id[i].key == key]
        if visible is not None and visible not in found:
            found.append(visible)
        found = [e for e in found if match(e)]
        if not found:
            raise KeyError(f"object {key!r} is not in the store (for {owner})")
        if visible in found and not oldest:
            return visible
        return min(found, key=lambda e: e.eid)

    def _written_by(self, owner: str, key: str, action: str) -> StoreEntry:
        try:
            return self._find(owner, key, lambda e: e.writer == owner)
        except KeyError:
            visible = self._entries.get(key)
            if visible is not None and visible.state != "writing":
                raise InvalidTransition(
                    f"store object {key!r} is {visible.state}: cannot {action} it"
                ) from None
            raise

    def _bump(self, entry: StoreEntry) -> None:
        if entry.key in self._lru and self._entries.get(entry.key) is entry:
            self._lru.move_to_end(entry.key)

    def _maybe_reclaim(self, entry: StoreEntry) -> None:
        if entry.doomed and not entry.leases and entry.state == "sealed":
            self._transition(entry, "freed")

    def _pinned(self) -> Iterator[tuple[int, int]]:
        """``(offset, block size)`` of every region being written or read."""
        for entry in self._by_id.values():
            if entry.offset is not None and (entry.state == "writing" or entry.leases):
                yield entry.offset, self._alloc.size_of(entry.offset)

    def _make_room(self, key: str, nbytes: int) -> int:
        """A region for ``nbytes``, spilling LRU unpinned objects first if need be."""
        alloc = self._alloc
        need = alloc.rounded(nbytes)
        if need > self.capacity:
            raise ObjectStoreFullError(
                f"object {key!r} of {nbytes} bytes is larger than the whole object store "
                f"(capacity {self.capacity} bytes); {_ADVICE}, or split the object into "
                "smaller pieces"
            )
        limit = self.capacity * self.high_water

        def fits() -> bool:
            return alloc.used + need <= limit and alloc.fits(need)

        if not fits():
            if not self._fits_among_pinned(need):
                raise self._full_error(key, nbytes)
            victims = [k for k in self._lru if not self._entries[k].leases]
            for victim in victims:
                if fits():
                    break
                try:
                    self._transition(self._entries[victim], "spilled")
                except OSError as err:
                    raise ObjectStoreFullError(
                        f"cannot make room for object {key!r} of {nbytes} bytes: spilling "
                        f"to {self.spill_dir} failed: {err}"
                    ) from err
        offset = alloc.allocate(nbytes)
        if offset is None:
            raise self._full_error(key, nbytes)
        return offset

    def _fits_among_pinned(self, need: int) -> bool:
        """Whether a gap of ``need`` bytes would exist with only pinned objects in memory."""
        pos = 0
        for offset, size in sorted(self._pinned()):
            if offset - pos >= need:
                return True
            pos = offset + size
        return self.capacity - pos >= need

    def _full_error(self, key: str, nbytes: int) -> ObjectStoreFullError:
        pinned = list(self._pinned())
        pinned_bytes = sum(size for _, size in pinned)
        return ObjectStoreFullError(
            f"cannot store object {key!r} of {nbytes} bytes: the object store (capacity "
            f"{self.capacity} bytes) has {self._alloc.used} bytes in use, {pinned_bytes} of "
            f"them pinned by {len(pinned)} objects being read or written, and no free "
            f"gap that large is left after spilling everything else; {_ADVICE}"
        )

    # ------------------------------------------------------------------ transitions

    def _transition(self, entry: StoreEntry, finish: State) -> None:
        method = self._TRANSITIONS.get((entry.state, finish))
        if method is None:
            raise InvalidTransition(f"store object {entry.key!r}: {entry.state} -> {finish}")
        method(self, entry)

    def _transition_writing_sealed(self, entry: StoreEntry) -> None:
        assert entry.writer is not None
        self._owned[entry.writer].discard(entry.eid)
        entry.writer = None
        entry.state = "sealed"
        if not entry.doomed:
            self._lru[entry.key] = None

    def _transition_sealed_spilled(self, entry: StoreEntry) -> None:
        if entry.leases:
            raise InvalidTransition(f"store object {entry.key!r} is leased: cannot spill it")
        assert entry.offset is not None
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.spill_dir, f"{entry.eid}.obj")
        write_spill_file(path, self.arena[entry.offset : entry.offset + entry.nbytes])
        self._alloc.free(entry.offset)
        self._lru.pop(entry.key, None)
        entry.offset, entry.spill_path, entry.state = None, path, "spilled"
        self._spilled_bytes += entry.nbytes
        self._spill_count += 1

    def _transition_spilled_sealed(self, entry: StoreEntry) -> None:
        assert entry.spill_path is not None
        offset = self._make_room(entry.key, entry.nbytes)
        try:
            read_spill_file(entry.spill_path, self.arena[offset : offset + entry.nbytes])
        except BaseException as err:
            self._alloc.free(offset)
            if isinstance(err, OSError):
                raise ObjectLostError(
                    f"spilled object {entry.key!r} could not be restored from "
                    f"{entry.spill_path}: {err}"
                ) from err
            raise
        _unlink(entry.spill_path)
        self._spilled_bytes -= entry.nbytes
        self._restore_count += 1
        entry.offset, entry.spill_path, entry.state = offset, None, "sealed"
        self._lru[entry.key] = None

    def _transition_to_freed(self, entry: StoreEntry) -> None:
        if entry.offset is not None:
            self._alloc.free(entry.offset)
        if entry.spill_path is not None:
            _unlink(entry.spill_path)
            self._spilled_bytes -= entry.nbytes
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
            self._lru.pop(entry.key, None)
        for owner in [*entry.leases, entry.writer]:
            if owner is not None and owner in self._owned:
                self._owned[owner].discard(entry.eid)
        del self._by_id[entry.eid]
        entry.offset, entry.spill_path, entry.writer, entry.state = None, None, None, "freed"

    _TRANSITIONS: ClassVar[dict[tuple[State, State], Callable[[StoreManager, StoreEntry], None]]]
    _TRANSITIONS = {
        ("writing", "sealed"): _transition_writing_sealed,
        ("writing", "freed"): _transition_to_freed,
        ("sealed", "spilled"): _transition_sealed_spilled,
        ("spilled", "sealed"): _transition_spilled_sealed,
        ("sealed", "freed"): _transition_to_freed,
        ("spilled", "freed"): _transition_to_freed,
    }

    # ------------------------------------------------------------------ invariants

    def _check(self) -> None:
        if self.validate:
            self.validate_state()

    def validate_state(self) -> None:
        """Check every invariant; raise ``AssertionError`` naming the first one broken."""
        self._alloc.validate()
        regions = sorted(
            (e.offset, e.nbytes, e.key) for e in self._by_id.values() if e.offset is not None
        )
        blocks = self._alloc.allocated()
        assert [o for o, _, _ in regions] == sorted(blocks), "entries and allocator disagree"
        for (o1, n1, k1), (o2, _, k2) in itertools.pairwise(regions):
            assert o1 + n1 <= o2, f"regions of {k1!r} and {k2!r} overlap"
        for key, entry in self._entries.items():
            assert entry.key == key and not entry.doomed, f"{entry} visible but freed"
            assert self._by_id.get(entry.eid) is entry, f"{entry} missing from the id index"
            assert (key in self._lru) == (entry.state == "sealed"), f"{entry} LRU out of sync"
        for entry in self._by_id.values():
            assert entry.state != "freed", f"{entry} freed but still indexed"
            assert (entry.offset is None) == (entry.state == "spilled"), f"{entry} region"
            assert (entry.spill_path is not None) == (entry.state == "spilled"), f"{entry} file"
            assert (entry.writer is not None) == (entry.state == "writing"), f"{entry} writer"
            assert all(n > 0 for n in entry.leases.values()), f"{entry} empty lease"
            assert not entry.leases or entry.state == "sealed", f"{entry} leased, not sealed"
            assert entry.doomed == (self._entries.get(entry.key) is not entry), f"{entry} doom"
            assert entry.leases or not (entry.doomed and entry.state == "sealed"), f"{entry} kept"
            for owner in [*entry.leases, entry.writer]:
                assert owner is None or entry.eid in self._owned.get(owner, ()), f"{entry} owner"
            if entry.state == "spilled":
                assert entry.spill_path is not None and os.path.exists(entry.spill_path)
        for owner, eids in self._owned.items():
            for eid in eids:
                held = self._by_id.get(eid)
                assert held is not None, f"{owner} refers to freed entry {eid}"
                assert owner in held.leases or owner == held.writer, f"{owner} on {held}"
        spilled = sum(e.nbytes for e in self._by_id.values() if e.state == "spilled")
        assert spilled == self._spilled_bytes, "spilled bytes out of sync"


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
