"""The arena allocator: which byte ranges of the node's one shared-memory file are in use.

Pure bookkeeping over integers: no I/O and no memory is touched here. The store maps a single
large *arena* file once per process and carves objects out of it with :class:`Allocator`.

Policy
------
* **First fit, address ordered.** A request takes the lowest-addressed free block that can
  hold it. Memory at low addresses is reused again and again, so its pages are already
  allocated by tmpfs and already in every process's page tables. Writes into it run at copy
  speed, not at page-fault speed (about 12 GB/s against 1.2 GB/s on the reference machine).
* **Alignment.** Every block starts on, and is a multiple of, ``alignment`` bytes (64: one
  cache line, and what NumPy and Arrow want for their buffers). A request of 0 bytes still
  takes one unit, so every live block has its own offset. Only the block at the end of the
  arena can be smaller, when the capacity is not itself a multiple of the alignment.
* **Coalescing.** A freed block merges with free neighbours on both sides, so freeing
  everything leaves one free block that spans the whole capacity.
* **Cost.** ``allocate`` scans the free list (O(free blocks)); ``free`` is O(log n) plus a
  list insertion. That is ample for the thousands of objects a node holds.
"""

from __future__ import annotations

import bisect

__all__ = ["Allocator"]


class Allocator:
    """First-fit, address-ordered allocator with coalescing over ``[0, capacity)``.

    Parameters
    ----------
    capacity
        Bytes managed.
    alignment
        Every offset handed out is a multiple of this (a power of two).

    Examples
    --------
    >>> a = Allocator(1024)
    >>> a.allocate(100), a.allocate(1), a.used
    (0, 128, 192)
    >>> a.free(0)
    >>> a.allocate(64)  # the lowest gap that fits is reused first
    0
    >>> a.allocate(2000) is None
    True
    """

    __slots__ = ("capacity", "alignment", "_starts", "_free", "_used_blocks", "_used")

    def __init__(self, capacity: int, alignment: int = 64) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment}")
        self.capacity = capacity
        self.alignment = alignment
        #: start offsets of the free blocks, sorted
        self._starts: list[int] = [0] if capacity else []
        #: free block start -> size
        self._free: dict[int, int] = {0: capacity} if capacity else {}
        #: allocated block start -> size (rounded up to the alignment)
        self._used_blocks: dict[int, int] = {}
        self._used = 0

    # ------------------------------------------------------------------ queries

    @property
    def used(self) -> int:
        """Bytes in allocated blocks (each rounded up to the alignment)."""
        return self._used

    @property
    def free_bytes(self) -> int:
        """Bytes in free blocks: ``capacity - used``."""
        return self.capacity - self._used

    @property
    def largest_free(self) -> int:
        """Size of the largest free block (0 when full)."""
        return max(self._free.values(), default=0)

    def size_of(self, offset: int) -> int:
        """Size of the allocated block at ``offset`` (``KeyError`` if none starts there)."""
        return self._used_blocks[offset]

    def allocated(self) -> dict[int, int]:
        """A copy of the allocated blocks: offset -> size."""
        return dict(self._used_blocks)

    def __len__(self) -> int:
        """Number of allocated blocks."""
        return len(self._used_blocks)

    def rounded(self, nbytes: int) -> int:
        """The block size a request of ``nbytes`` takes (at least one alignment unit)."""
        unit = self.alignment
        return max(unit, (nbytes + unit - 1) // unit * unit)

    def fits(self, nbytes: int) -> bool:
        """Whether :meth:`allocate` of ``nbytes`` would succeed now."""
        need = self.rounded(nbytes)
        return any(size >= need for size in self._free.values())

    # ------------------------------------------------------------------ changes

    def allocate(self, nbytes: int) -> int | None:
        """Take the lowest free block that holds ``nbytes``; return its offset or None."""
        if nbytes < 0:
            raise ValueError(f"cannot allocate a negative size ({nbytes})")
        need = self.rounded(nbytes)
        for i, start in enumerate(self._starts):
            size = self._free[start]
            if size < need:
                continue
            del self._free[start]
            if size == need:
                del self._starts[i]
            else:
                self._starts[i] = start + need  # still sorted: the remainder stays in place
                self._free[start + need] = size - need
            self._used_blocks[start] = need
            self._used += need
            return start
        return None

    def free(self, offset: int) -> None:
        """Return the block at ``offset``, merging it with free neighbours."""
        try:
            size = self._used_blocks.pop(offset)
        except KeyError:
            raise KeyError(f"no allocated block starts at offset {offset}") from None
        self._used -= size
        start, end = offset, offset + size
        i = bisect.bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == end:  # merge with the next block
            end += self._free.pop(end)
            del self._starts[i]
        if i > 0:
            prev = self._starts[i - 1]
            if prev + self._free[prev] == start:  # merge with the previous block
                self._free[prev] = end - prev
                return
        self._starts.insert(i, start)
        self._free[start] = end - start

    # ------------------------------------------------------------------ invariants

    def validate(self) -> None:
        """Check every invariant; raise ``AssertionError`` naming the first one broken."""
        assert self._starts == sorted(self._free), "free list out of order or out of sync"
        blocks = sorted(
            [(s, n, "free") for s, n in self._free.items()]
            + [(s, n, "used") for s, n in self._used_blocks.items()]
        )
        pos = 0
        prev_kind = ""
        for start, size, kind in blocks:
            assert start == pos, f"gap or overlap at {pos}: next block starts at {start}"
            assert size > 0, f"empty {kind} block at {start}"
            assert start % self.alignment == 0, f"misaligned {kind} block at {start}"
            assert not (kind == prev_kind == "free"), f"free blocks not coalesced at {start}"
            pos, prev_kind = start + size, kind
        assert pos == self.capacity, f"blocks cover {pos} bytes, capacity is {self.capacity}"
        assert self._used == sum(self._used_blocks.values()), "used bytes out of sync"
