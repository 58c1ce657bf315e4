"""StoreManager, driven by hand: leases, LRU spilling and restore, freeing, failures.

The arena is a bytearray here (the manager only needs a memoryview); spill files go to
tmp_path. Every manager runs with ``validate=True``, so each step checks the invariants.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from graphexec.errors import InvalidTransition, ObjectLostError, ObjectStoreFullError
from graphexec.store.manager import StoreManager

KiB = 1024
CAPACITY = 64 * KiB


class Store:
    """A manager over a bytearray arena, plus helpers that play the writer and reader."""

    def __init__(self, spill: Path, capacity: int = CAPACITY, high_water: float = 1.0) -> None:
        self.arena = memoryview(bytearray(capacity))
        self.m = StoreManager(
            capacity, self.arena, str(spill), high_water=high_water, validate=True
        )

    def put(self, key: str, nbytes: int, owner: str = "w", seed: int | None = None) -> str:
        """Write random bytes under ``key``; return their checksum."""
        data = np.random.default_rng(seed if seed is not None else nbytes).bytes(nbytes)
        offset = self.m.allocate(owner, key, nbytes)
        self.arena[offset : offset + nbytes] = data
        self.m.seal(owner, key, [nbytes])
        return hashlib.sha256(data).hexdigest()

    def read(self, key: str, owner: str = "r") -> str:
        """Lease, checksum the bytes, release."""
        offset, (n,) = self.m.lease(owner, key)
        digest = hashlib.sha256(self.arena[offset : offset + n]).hexdigest()
        self.m.release(owner, key)
        return digest

    def state(self, key: str) -> str:
        return self.m.info(key)[1]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "spill")


def test_write_seal_lease_release(store: Store) -> None:
    m = store.m
    offset = m.allocate("w", "a", 1000)
    assert "a" not in m and m.info("a") == (1000, "writing")
    with pytest.raises(KeyError, match="being written"):
        m.lease("r", "a")
    m.seal("w", "a", [100, 800])
    assert "a" in m and m.info("a") == (1000, "sealed")
    assert m.lease("r", "a") == (offset, [100, 800])
    assert m.lease("r", "a") == (offset, [100, 800])
    stats = m.stats()
    assert stats["num_leased"] == 1 and stats["bytes_pinned"] == 1024
    assert stats["used_bytes"] == 1024 and stats["num_objects"] == 1
    m.release("r", "a")
    m.release("r", "a")
    assert m.stats()["bytes_pinned"] == 0
    with pytest.raises(KeyError):
        m.release("r", "a")
    with pytest.raises(ValueError, match="already"):
        m.allocate("w", "a", 10)
    with pytest.raises(KeyError):
        m.lease("r", "missing")


def test_allocate_with_replace_writes_over_a_sealed_object_only(store: Store) -> None:
    """A retried task writes over what a run whose worker died unreported left sealed."""
    m = store.m
    old = m.allocate("dead", "a", 100)
    m.seal("dead", "a", [100])
    first = m.lease("r", "a")
    new = m.allocate("w", "a", 200, replace=True)
    assert new != old and m.info("a") == (200, "writing")
    m.seal("w", "a", [200])
    assert m.lease("r2", "a") == (new, [200])
    m.release("r", "a", offset=first[0])  # the old copy goes with its last reader
    assert m.stats()["num_objects"] == 1
    m.allocate("w", "b", 10)
    with pytest.raises(ValueError, match="already"):  # never over a write in progress
        m.allocate("w2", "b", 10, replace=True)


def test_seal_checks_lengths_and_transitions(store: Store) -> None:
    m = store.m
    m.allocate("w", "a", 100)
    with pytest.raises(ValueError, match="overflow"):
        m.seal("w", "a", [50, 50])  # the second frame starts at 64
    with pytest.raises(KeyError):
        m.seal("someone-else", "a", [10])
    m.seal("w", "a", [100])
    with pytest.raises(InvalidTransition, match="sealed: cannot seal"):
        m.seal("w", "a", [100])
    with pytest.raises(InvalidTransition, match="sealed: cannot abort"):
        m.abort("w", "a")
    m.free("a")
    with pytest.raises(KeyError):
        m.seal("w", "a", [100])


def test_spill_and_restore_with_checksums(tmp_path: Path) -> None:
    store = Store(tmp_path / "spill", capacity=CAPACITY)
    digests = {f"k{i}": store.put(f"k{i}", 10 * KiB, seed=i) for i in range(20)}
    stats = store.m.stats()
    assert stats["num_spilled"] > 0 and stats["spilled_bytes"] == stats["num_spilled"] * 10 * KiB
    assert stats["used_bytes"] <= CAPACITY
    assert len(os.listdir(tmp_path / "spill")) == stats["num_spilled"]
    for key, digest in digests.items():  # each read restores (and spills others)
        assert store.read(key) == digest
    assert store.m.stats()["total_restores"] > 0
    for key in digests:
        store.m.free(key)
    assert os.listdir(tmp_path / "spill") == []
    stats = store.m.stats()
    assert stats["used_bytes"] == stats["spilled_bytes"] == stats["num_objects"] == 0


def test_lru_order_respected(store: Store) -> None:
    for key in "abcd":
        store.put(key, 16 * KiB)  # fills the 64 KiB arena
    store.m.touch("a")
    store.read("b")  # a lease counts as a use
    store.put("e", 16 * KiB)
    assert [store.state(k) for k in "abcde"] == ["sealed", "sealed", "spilled", "sealed", "sealed"]
    store.put("f", 16 * KiB)
    assert store.state("d") == "spilled"  # next oldest: d (c is gone already)
    assert store.state("a") == "sealed"


def test_leased_objects_are_never_spilled(store: Store) -> None:
    for key in "abcd":
        store.put(key, 16 * KiB)
    offset, _ = store.m.lease("r", "a")  # the oldest, but pinned
    store.put("e", 16 * KiB)
    assert store.state("a") == "sealed" and store.state("b") == "spilled"
    assert store.m.lease("r2", "a")[0] == offset
    with pytest.raises(InvalidTransition, match="leased"):
        store.m._transition(store.m._entries["a"], "spilled")


def test_high_water_spills_before_the_store_is_full(tmp_path: Path) -> None:
    store = Store(tmp_path / "spill", high_water=0.5)
    for key in "abc":
        store.put(key, 16 * KiB)
    assert store.state("a") == "spilled"  # 48 KiB would pass the 32 KiB mark
    assert store.m.stats()["used_bytes"] <= 32 * KiB
    assert store.m.stats()["high_water_bytes"] == 32 * KiB


def test_object_larger_than_the_store(store: Store) -> None:
    with pytest.raises(ObjectStoreFullError) as err:
        store.m.allocate("w", "huge", CAPACITY + 1)
    message = str(err.value)
    assert "65537 bytes is larger than the whole object store" in message
    assert "capacity 65536" in message and "object_store_memory" in message
    assert isinstance(err.value, MemoryError)


def test_everything_pinned(store: Store) -> None:
    store.put("a", 24 * KiB)
    store.put("b", 16 * KiB)
    store.m.lease("r", "a")
    store.m.allocate("w", "c", 24 * KiB)  # being written: pinned too
    with pytest.raises(ObjectStoreFullError) as err:
        store.m.allocate("w", "d", 20 * KiB)  # b's 16 KiB gap would not do
    message = str(err.value)
    assert "object 'd' of 20480 bytes" in message and "capacity 65536" in message
    assert "65536 bytes in use, 49152 of them pinned by 2 objects" in message
    assert "object_store_memory" in message
    assert store.state("b") == "sealed"  # nothing spilled in vain
    store.m.allocate("w", "e", 4 * KiB)  # what does fit still goes in (b spilled)
    assert store.state("b") == "spilled"


def test_free_with_lease_reclaims_after_release(store: Store) -> None:
    store.put("a", 10 * KiB)
    offset, _ = store.m.lease("r", "a")
    store.m.free("a")
    assert "a" not in store.m
    with pytest.raises(KeyError):
        store.m.lease("other", "a")
    assert store.m.stats()["used_bytes"] == 10 * KiB  # still mapped by the reader
    assert store.m.lease("r", "a")[0] == offset  # the reader itself may look again
    store.m.release("r", "a")
    store.m.release("r", "a")
    assert store.m.stats()["used_bytes"] == 0


def test_same_key_again_while_the_old_copy_is_read(store: Store) -> None:
    store.put("a", 1 * KiB, seed=1)
    old, _ = store.m.lease("r", "a")
    store.m.free("a")
    new_digest = store.put("a", 2 * KiB, seed=2)
    new, _ = store.m.lease("r", "a")
    assert new != old
    store.m.release("r", "a", offset=new)
    assert store.m.stats()["used_bytes"] == 3 * KiB
    store.m.release("r", "a", offset=old)  # the old copy goes now
    assert store.m.stats()["used_bytes"] == 2 * KiB
    assert store.read("a") == new_digest


def test_drop_owner_aborts_half_written_objects(store: Store) -> None:
    store.put("done", 1 * KiB, owner="w")
    store.m.allocate("w", "half", 8 * KiB)
    store.m.lease("w", "done")
    store.put("other", 1 * KiB, owner="x")
    store.m.drop_owner("w")  # the writer's connection closed mid-write
    assert "half" not in store.m
    with pytest.raises(KeyError):
        store.m.info("half")
    with pytest.raises(KeyError):
        store.m.lease("r", "half")
    assert store.state("done") == "sealed" and store.m.stats()["num_leased"] == 0
    assert store.m.stats()["used_bytes"] == 2 * KiB
    store.m.allocate("w2", "half", 8 * KiB)  # another writer may try again
    store.m.abort("w2", "half")
    assert "half" not in store.m


def test_drop_owner_reclaims_freed_objects_it_was_reading(store: Store) -> None:
    store.put("a", 4 * KiB)
    store.m.lease("r", "a")
    store.m.lease("r", "a")
    store.m.free("a")
    store.m.drop_owner("r")
    assert store.m.stats()["used_bytes"] == 0


def test_free_while_writing_frees_at_seal(store: Store) -> None:
    store.m.allocate("w", "a", 4 * KiB)
    store.m.free("a")
    assert store.m.stats()["num_writing"] == 0 and store.m.stats()["bytes_pinned"] == 4 * KiB
    store.m.seal("w", "a", [4 * KiB])
    assert "a" not in store.m and store.m.stats()["used_bytes"] == 0


def test_free_of_spilled_object_deletes_its_file(tmp_path: Path, store: Store) -> None:
    for key in "abcde":
        store.put(key, 16 * KiB)
    assert store.state("a") == "spilled"
    assert len(os.listdir(tmp_path / "spill")) == 1
    store.m.free("a")
    assert os.listdir(tmp_path / "spill") == []
    assert store.m.stats()["spilled_bytes"] == 0
    with pytest.raises(KeyError):
        store.m.free("a")


def test_spill_failure_keeps_the_object_and_says_why(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    store = Store(blocked)
    for key in "abcd":
        store.put(key, 16 * KiB)
    with pytest.raises(ObjectStoreFullError, match=r"spilling to .* failed"):
        store.put("e", 16 * KiB)
    assert store.state("a") == "sealed"


def test_lost_spill_file_raises_object_lost(tmp_path: Path, store: Store) -> None:
    for key in "abcde":
        store.put(key, 16 * KiB)
    for name in os.listdir(tmp_path / "spill"):
        os.unlink(tmp_path / "spill" / name)
    store.m.validate = False  # the invariant check would (rightly) see the missing file
    with pytest.raises(ObjectLostError, match="could not be restored"):
        store.m.lease("r", "a")
    assert store.state("a") == "spilled"


def test_validate_state_catches_corruption(store: Store) -> None:
    store.put("a", 1 * KiB)
    store.m._entries["a"].offset = 4096
    with pytest.raises(AssertionError):
        store.m.validate_state()


# --------------------------------------------------------------------------- property

actions = st.lists(
    st.tuples(
        # puts and leases most often, so that spilling and restoring happen
        st.sampled_from(
            ["put"] * 4 + ["lease"] * 3 + ["release"] * 2 + ["half", "free", "drop", "touch"]
        ),
        st.integers(0, 7),  # key
        st.integers(0, 2),  # owner
        st.sampled_from([1, 100, 2 * KiB, 4 * KiB - 1, 5 * KiB, 6 * KiB]),  # 16 KiB arena
    ),
    min_size=10,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(actions, st.sampled_from([0.6, 1.0]))
def test_random_workloads_keep_data_and_invariants(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, int, int, int]],
    high_water: float,
) -> None:
    store = Store(tmp_path_factory.mktemp("spill"), capacity=16 * KiB, high_water=high_water)
    m = store.m
    digests: dict[str, str] = {}
    leases: list[tuple[str, str]] = []
    for action, k, o, size in steps:
        key, owner = f"k{k}", f"o{o}"
        try:
            if action == "put":
                digests[key] = store.put(key, size, owner=owner, seed=k * 1000 + size)
            elif action == "half":
                m.allocate(owner, key, size)
            elif action == "lease":
                offset, (n,) = m.lease(owner, key)
                leases.append((owner, key))
                assert hashlib.sha256(store.arena[offset : offset + n]).hexdigest() == digests[key]
            elif action == "release" and leases:
                m.release(*leases.pop(k % len(leases)))
            elif action == "free":
                m.free(key)
                digests.pop(key, None)
            elif action == "drop":
                m.drop_owner(owner)
                leases = [(w, kk) for w, kk in leases if w != owner]
            elif action == "touch":
                m.touch(key)
        except (KeyError, ValueError, ObjectStoreFullError):
            pass  # refused cleanly; the invariants are still checked after every step
        for key in list(digests):
            if key not in m:
                digests.pop(key)
    event(f"spilled: {m.stats()['total_spills'] > 0}, restored: {m.stats()['total_restores'] > 0}")
    for owner in ("o0", "o1", "o2"):
        m.drop_owner(owner)
    for key in list(digests):
        assert store.read(key) == digests[key]
        m.free(key)
    stats = m.stats()
    assert stats["used_bytes"] == stats["spilled_bytes"] == 0
