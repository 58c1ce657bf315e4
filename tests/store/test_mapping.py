"""ArenaMapping: writes into the mapped arena, zero-copy read-only views, release tracking.

Arena files live in pytest's tmp_path except where /dev/shm itself is the point (the
cross-process and pre-touch tests), and those remove their files.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from graphexec.protocol.serialize import serialize
from graphexec.store.layout import frames_layout
from graphexec.store.mapping import PAGE, ArenaMapping, deserialize_views

CAPACITY = 8 * 2**20


def _make_arena(path: str, capacity: int = CAPACITY) -> str:
    with open(path, "wb") as f:
        f.truncate(capacity)
    return path


@pytest.fixture
def mapping(tmp_path: Any) -> Iterator[ArenaMapping]:
    m = ArenaMapping(_make_arena(str(tmp_path / "arena")), CAPACITY)
    yield m
    m.close()


@pytest.fixture
def shm_arena() -> Iterator[str]:
    path = f"/dev/shm/graphexec-test-mapping-{os.getpid()}"
    yield _make_arena(path)
    os.unlink(path)


class Released:
    """An ``on_release`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def _arena_array(m: ArenaMapping) -> np.ndarray[Any, Any]:
    return np.frombuffer(m.region(0, m.capacity), dtype=np.uint8)


def _put_get(m: ArenaMapping, obj: Any, offset: int = 0) -> tuple[Any, Released]:
    lengths = m.write(offset, serialize(obj))
    released = Released()
    return deserialize_views(m.views(offset, lengths, released)), released


def test_numpy_is_zero_copy_read_only_and_released_after_use(mapping: ArenaMapping) -> None:
    x = np.random.default_rng(1).random((300, 200))
    out, released = _put_get(mapping, x, offset=4096)
    np.testing.assert_array_equal(out, x)
    assert not out.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0] = 1.0
    arena = _arena_array(mapping)
    assert np.shares_memory(out, arena)
    assert not np.shares_memory(out, x)
    assert out.ctypes.data % 64 == 0
    view = out[10:20]  # derived objects keep the lease too
    del out
    gc.collect()
    assert released.calls == 0
    del view
    gc.collect()
    assert released.calls == 1
    del arena


def test_release_waits_for_every_frame(mapping: ArenaMapping) -> None:
    frames = serialize([np.arange(1000), np.ones(2000)])
    lengths = mapping.write(0, frames)
    released = Released()
    views = mapping.views(0, lengths, released)
    first, second = views[1], views[2]
    del views
    gc.collect()
    assert released.calls == 0 and bytes(first[:8]) == np.arange(1).tobytes()
    del first
    gc.collect()
    assert released.calls == 0
    del second
    gc.collect()
    assert released.calls == 1


def test_pandas_round_trip(mapping: ArenaMapping) -> None:
    df = pd.DataFrame({"a": np.arange(5000.0), "b": np.arange(5000.0) * 2, "c": ["x"] * 5000})
    out, released = _put_get(mapping, df)
    pd.testing.assert_frame_equal(out, df)
    arena = _arena_array(mapping)
    assert np.shares_memory(out["a"].to_numpy(), arena)
    del out, arena
    gc.collect()
    assert released.calls == 1


def test_arrow_round_trip(mapping: ArenaMapping) -> None:
    table = pa.table({"a": np.arange(10_000), "b": [str(i) for i in range(10_000)]})
    out, released = _put_get(mapping, table)
    assert out.equals(table)
    start = _arena_array(mapping).ctypes.data
    address = out.column("a").chunk(0).buffers()[1].address
    assert start <= address < start + CAPACITY  # the Arrow buffer is the arena
    del out
    gc.collect()
    assert released.calls == 1


def test_nested_python_objects(mapping: ArenaMapping) -> None:
    obj = {"k": [1, 2.5, "s", (None, b"bytes")], "arr": np.arange(3000), "set": {1, 2}}
    out, released = _put_get(mapping, obj)
    assert out["k"] == obj["k"] and out["set"] == obj["set"]
    np.testing.assert_array_equal(out["arr"], obj["arr"])
    del out
    gc.collect()
    assert released.calls == 1


def test_writes_check_bounds_and_closed(mapping: ArenaMapping, tmp_path: Any) -> None:
    frames = [np.zeros(1024, dtype=np.uint8).data]
    with pytest.raises(ValueError, match="outside the arena"):
        mapping.write(CAPACITY - 100, frames)
    with pytest.raises(ValueError, match="outside the arena"):
        mapping.views(-64, [10], Released())
    with pytest.raises(ValueError, match="fewer than"):
        ArenaMapping(_make_arena(str(tmp_path / "small"), 100), 4096)
    other = ArenaMapping(_make_arena(str(tmp_path / "other"), 4096), 4096)
    other.close()
    with pytest.raises(ValueError, match="closed"):
        other.write(0, frames)


def test_close_with_views_alive_leaves_them_valid(tmp_path: Any) -> None:
    m = ArenaMapping(_make_arena(str(tmp_path / "arena")), CAPACITY)
    out, released = _put_get(m, np.arange(10_000))
    m.close()  # cannot unmap yet: the views keep the mapping
    assert int(out.sum()) == sum(range(10_000))
    del out
    gc.collect()
    assert released.calls == 1


def test_concurrent_writes_to_different_regions(mapping: ArenaMapping) -> None:
    arrays = [np.full(2**18, i, dtype=np.uint8) for i in range(8)]
    size = frames_layout(serialize(arrays[0]))[1]
    slot = (size + 4095) // 4096 * 4096
    lengths: dict[int, list[int]] = {}

    def put(i: int) -> None:
        lengths[i] = mapping.write(i * slot, serialize(arrays[i]))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        out = deserialize_views(mapping.views(i * slot, lengths[i], Released()))
        np.testing.assert_array_equal(out, arrays[i])


def test_another_process_reads_the_same_bytes(shm_arena: str) -> None:
    with ArenaMapping(shm_arena, CAPACITY) as m:
        x = np.random.default_rng(2).integers(0, 1 << 30, 100_000)
        lengths = m.write(0, serialize(x))
    code = (
        "import gc, hashlib, sys\n"
        "from graphexec.store.mapping import ArenaMapping, deserialize_views\n"
        f"m = ArenaMapping({shm_arena!r}, {CAPACITY})\n"
        f"y = deserialize_views(m.views(0, {lengths!r}, lambda: print('released')))\n"
        "assert not y.flags.writeable\n"
        "print(hashlib.sha256(y.tobytes()).hexdigest())\n"
        "del y; gc.collect(); m.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [hashlib.sha256(x.tobytes()).hexdigest(), "released"]


def test_pretouch_runs_in_background_and_close_joins(shm_arena: str) -> None:
    m = ArenaMapping(shm_arena, CAPACITY)
    try:
        m.pretouch(CAPACITY // 2 + 1)
        m.pretouch(100)  # smaller than what is under way: nothing new
        assert m.wait_pretouched(timeout=30)
        assert m.pretouched == CAPACITY // 2 + PAGE
        m.pretouch(10 * CAPACITY)  # clipped to the arena
        assert m.wait_pretouched(timeout=30)
        assert m.pretouched == CAPACITY
        assert os.stat(shm_arena).st_blocks * 512 >= CAPACITY  # tmpfs pages now exist
        lengths = m.write(0, serialize(np.ones(1000)))  # data still fine after
        assert deserialize_views(m.views(0, lengths, Released())).sum() == 1000
    finally:
        m.close()
    assert not any(t.name == "graphexec-pretouch" for t in threading.enumerate())


def test_pretouch_does_not_clobber_concurrent_writes(shm_arena: str) -> None:
    m = ArenaMapping(shm_arena, CAPACITY)
    try:
        x = np.random.default_rng(3).random(CAPACITY // 8 // 2)
        m.pretouch(CAPACITY)
        lengths = m.write(0, serialize(x))
        m.close()  # joins the pre-touch thread midway or after
        m = ArenaMapping(shm_arena, CAPACITY)
        np.testing.assert_array_equal(deserialize_views(m.views(0, lengths, Released())), x)
    finally:
        m.close()
