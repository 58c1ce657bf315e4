"""Frame layout in a region: aligned starts, one copy in, zero copies out."""

from __future__ import annotations

import numpy as np
import pytest

from graphexec.protocol.serialize import deserialize, serialize
from graphexec.store.layout import (
    ALIGNMENT,
    Frame,
    frame_offsets,
    frames_layout,
    read_frames,
    write_frames,
)


def test_layout_aligns_every_frame_start() -> None:
    frames: list[Frame] = [
        b"x" * 10,
        memoryview(bytearray(100)),
        b"",
        np.arange(7, dtype=np.int8).data,
    ]
    lengths, total = frames_layout(frames)
    assert lengths == [10, 100, 0, 7]
    starts, end = frame_offsets(lengths)
    assert starts == [0, 64, 192, 192]
    assert total == end == 199
    assert all(s % ALIGNMENT == 0 for s in starts)


def test_non_byte_and_fortran_buffers_count_bytes() -> None:
    f_order = np.asfortranarray(np.ones((3, 5)))
    lengths, _ = frames_layout([np.zeros(4, dtype=np.float64).data, f_order.data])
    assert lengths == [32, 120]


def test_write_then_read_round_trip() -> None:
    x = np.random.default_rng(0).random((50, 40))
    frames = serialize({"x": x, "name": "a"})
    lengths, total = frames_layout(frames)
    region = memoryview(bytearray(total + 13))
    assert write_frames(region, frames) == lengths
    views = read_frames(region, lengths)
    assert all(v.readonly for v in views)
    assert [v.nbytes for v in views] == lengths
    out = deserialize(views)
    assert out["name"] == "a"
    np.testing.assert_array_equal(out["x"], x)
    assert not out["x"].flags.writeable
    assert np.shares_memory(out["x"], np.frombuffer(region, dtype=np.uint8))  # zero-copy


def test_buffers_land_aligned() -> None:
    base = np.zeros(16384 + ALIGNMENT, dtype=np.uint8)
    skew = (-base.ctypes.data) % ALIGNMENT  # make the region itself start aligned
    region = base[skew : skew + 16384].data
    frames = serialize(np.arange(1000.0))
    assert len(frames) == 2  # the array travels out-of-band
    lengths = write_frames(region, frames)
    arr = deserialize(read_frames(region, lengths))
    assert arr.ctypes.data % ALIGNMENT == 0


def test_region_too_small() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        write_frames(memoryview(bytearray(70)), [b"a", b"b" * 10])
    with pytest.raises(ValueError, match="shorter"):
        read_frames(memoryview(bytearray(70)), [1, 10])
