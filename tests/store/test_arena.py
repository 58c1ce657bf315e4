"""The arena allocator: first fit by address, alignment, coalescing, and its invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphexec.store.arena import Allocator


def test_first_fit_prefers_low_addresses() -> None:
    a = Allocator(64 * 10)
    first, second, third = a.allocate(64), a.allocate(128), a.allocate(64)
    assert (first, second, third) == (0, 64, 192)
    a.free(64)
    assert a.allocate(64) == 64  # the lowest gap, not the end
    assert a.allocate(64) == 128
    assert a.allocate(64) == 256
    a.validate()


def test_alignment_and_rounding() -> None:
    a = Allocator(4096, alignment=64)
    offsets = [a.allocate(n) for n in (1, 63, 64, 65, 0)]
    assert offsets == [0, 64, 128, 192, 320]
    assert all(o is not None and o % 64 == 0 for o in offsets)
    assert a.used == 64 + 64 + 64 + 128 + 64
    assert a.size_of(192) == 128


def test_full_and_largest_free() -> None:
    a = Allocator(1000)
    assert a.largest_free == 1000
    assert a.allocate(1001) is None
    assert a.allocate(960) == 0
    assert a.largest_free == 40  # the unaligned tail of a capacity that is not a multiple
    assert a.allocate(1) is None
    assert not a.fits(1)
    a.free(0)
    assert a.largest_free == 1000 and a.used == 0
    a.validate()


def test_coalesces_both_neighbours() -> None:
    a = Allocator(64 * 3)
    assert [a.allocate(64) for _ in range(3)] == [0, 64, 128]
    assert a.largest_free == 0
    a.free(0)
    a.free(128)
    assert a.largest_free == 64
    a.free(64)
    assert a.largest_free == 64 * 3
    a.validate()


def test_bad_calls() -> None:
    a = Allocator(1024)
    with pytest.raises(KeyError, match="offset 64"):
        a.free(64)
    with pytest.raises(ValueError, match="negative"):
        a.allocate(-1)
    with pytest.raises(ValueError, match="power of two"):
        Allocator(1024, alignment=48)
    assert Allocator(0).allocate(0) is None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 3000)),
        st.tuples(st.just("free"), st.integers(0, 10**6)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops, st.sampled_from([8, 64]), st.integers(1, 20_000))
def test_random_sequences_keep_invariants(
    sequence: list[tuple[str, int]], alignment: int, capacity: int
) -> None:
    a = Allocator(capacity, alignment=alignment)
    live: dict[int, int] = {}  # offset -> requested size
    for op, n in sequence:
        if op == "alloc":
            offset = a.allocate(n)
            if offset is None:
                assert not a.fits(n)
                continue
            assert offset % alignment == 0
            assert offset + n <= capacity
            for other, size in live.items():  # no overlap with any live block
                assert offset + max(n, 1) <= other or other + max(size, 1) <= offset
            live[offset] = n
        elif live:
            offset = sorted(live)[n % len(live)]
            del live[offset]
            a.free(offset)
        a.validate()
        assert a.used + a.free_bytes == capacity
        assert len(a) == len(live)
    for offset in list(live):
        a.free(offset)
    a.validate()
    assert a.used == 0
    assert a.largest_free == capacity  # coalescing restored one block
