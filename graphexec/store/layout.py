"""How an object's frames sit in its region of the arena.

An object is stored as the frames of :func:`graphexec.protocol.serialize.serialize`
(``[pickle_bytes, *out_of_band_buffers]``), one after another. The frame lengths live with
the store's bookkeeping, not in the region, so a region holds nothing but frame bytes.

Policy
------
* Every frame starts at a multiple of :data:`ALIGNMENT` (64 bytes) from the region start.
  Regions themselves start aligned (see :mod:`graphexec.store.arena`), so NumPy and Arrow
  buffers read back from the arena are cache-line aligned.
* Writing copies each frame exactly once, straight into its place, with NumPy. NumPy
  releases the GIL while it copies, so executor threads of one worker can write different
  objects at the same time. ``memoryview`` slice assignment is as fast but holds the GIL.
* Reading copies nothing: the frames are read-only slices of the region.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import numpy as np

__all__ = ["ALIGNMENT", "Frame", "frame_offsets", "frames_layout", "read_frames", "write_frames"]

#: Frame starts are aligned to this many bytes.
ALIGNMENT = 64

Frame = bytes | bytearray | memoryview | pickle.PickleBuffer


def _aligned(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _flat(frame: Frame) -> memoryview:
    # PickleBuffer.raw() is a 1-D byte view of any contiguous buffer (C or Fortran order)
    return pickle.PickleBuffer(frame).raw()


def frame_offsets(lengths: Sequence[int]) -> tuple[list[int], int]:
    """Start of each frame in the region, and the region size the frames need.

    Examples
    --------
    >>> frame_offsets([10, 0, 100])
    ([0, 64, 64], 164)
    >>> frame_offsets([])
    ([], 0)
    """
    starts: list[int] = []
    pos = 0
    for n in lengths:
        pos = _aligned(pos)
        starts.append(pos)
        pos += n
    return starts, pos


def frames_layout(frames: Sequence[Frame]) -> tuple[list[int], int]:
    """Frame lengths in bytes, and the region size they need once aligned.

    Examples
    --------
    >>> frames_layout([b"abc", memoryview(bytearray(100))])
    ([3, 100], 164)
    """
    lengths = [_flat(f).nbytes for f in frames]
    return lengths, frame_offsets(lengths)[1]


def write_frames(dest: memoryview, frames: Sequence[Frame]) -> list[int]:
    """Copy each frame to its aligned place in ``dest``; return the frame lengths.

    ``dest`` must be a writable buffer of at least the size :func:`frames_layout` gives.
    The padding between frames is left as it was.

    Examples
    --------
    >>> region = memoryview(bytearray(128))
    >>> write_frames(region, [b"ab", b"cd"])
    [2, 2]
    >>> bytes(region[:2]), bytes(region[64:66])
    (b'ab', b'cd')
    """
    flat = [_flat(f) for f in frames]
    lengths = [f.nbytes for f in flat]
    starts, total = frame_offsets(lengths)
    target = np.frombuffer(dest, dtype=np.uint8)
    if target.nbytes < total:
        raise ValueError(f"region of {target.nbytes} bytes cannot hold frames of {total} bytes")
    for frame, start, n in zip(flat, starts, lengths, strict=True):
        if n:
            target[start : start + n] = np.frombuffer(frame, dtype=np.uint8)
    return lengths


def read_frames(region: memoryview, lengths: Sequence[int]) -> list[memoryview]:
    """Read-only, zero-copy views of the frames laid out in ``region``.

    Examples
    --------
    >>> region = memoryview(bytearray(128))
    >>> lengths = write_frames(region, [b"ab", b"cd"])
    >>> [bytes(f) for f in read_frames(region, lengths)]
    [b'ab', b'cd']
    >>> read_frames(region, lengths)[0].readonly
    True
    """
    starts, total = frame_offsets(lengths)
    flat = region.cast("B") if region.format != "B" or region.ndim != 1 else region
    if flat.nbytes < total:
        raise ValueError(f"region of {flat.nbytes} bytes is shorter than its frames ({total})")
    ro = flat.toreadonly()
    return [ro[start : start + n] for start, n in zip(starts, lengths, strict=True)]
