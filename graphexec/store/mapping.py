"""One process's view of the node's arena file: write objects into it, read them zero-copy.

Each process of a node (node manager, workers, the driver) opens the arena once with
:class:`ArenaMapping` and keeps that mapping for its whole life. Where objects go is decided
elsewhere (:mod:`graphexec.store.manager` hands out offsets). This module only moves bytes.

Policy
------
* **One mapping per process, reused.** Mapping a file costs little, but every first touch of
  a page costs a page fault in each process. A long-lived mapping, together with an allocator
  that reuses low addresses, keeps writes at memory-copy speed.
* **Writes** copy each frame once, with NumPy, which releases the GIL. Concurrent
  :meth:`ArenaMapping.write` and :meth:`ArenaMapping.views` calls from several threads are
  safe as long as they touch different regions. :meth:`ArenaMapping.close` must not race
  with them.
* **Reads** are read-only memoryviews over the shared pages. They keep one *owner* alive: a
  NumPy array over the object's region. A ``weakref.finalize`` on that owner calls
  ``on_release`` exactly once, when the last view and everything built on the views (arrays,
  frames, Arrow tables) has gone. The caller ties the store's lease to that callback.
  ``on_release`` runs in whichever thread drops the last reference, possibly inside garbage
  collection. It must be quick, thread-safe and must not raise.
* **Pre-touching** (:meth:`ArenaMapping.pretouch`) faults pages in ahead of writes, on a
  background thread that the mapping owns and joins in ``close()``. It uses
  ``madvise(MADV_POPULATE_READ)``, which allocates missing tmpfs pages and fills this
  process's page tables without storing anything. Storing a byte per page would race with
  other processes writing objects into those pages. Shared tmpfs pages are mapped writable
  on a read fault, so later writes take no fault at all. On pages that another process
  already allocated this runs 3x faster than ``MADV_POPULATE_WRITE`` (18 against 6 GB/s
  here). When the filesystem is full the kernel reports an error instead of the ``SIGBUS``
  a plain access would raise, so pre-touching stops with a logged warning. Kernels older
  than 5.14 fall back to reading one byte per page.
* ``close()`` unmaps at once when no view is left. Otherwise the views keep the mapping
  alive, and it is unmapped when the last of them is collected.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import mmap
import os
import pickle
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from graphexec.store.layout import (
    Frame,
    frame_offsets,
    frames_layout,
    read_frames,
    write_frames,
)

__all__ = ["ArenaMapping", "deserialize_views"]

logger = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
#: Bytes pre-touched per step. ``close()`` waits for at most one step (a few milliseconds).
PRETOUCH_CHUNK = 16 * 2**20
_MADV_POPULATE_READ = 22  # linux/mman.h, Linux 5.14+; the mmap module does not export it


def deserialize_views(frames: Sequence[memoryview]) -> Any:
    """Rebuild an object from frames returned by :meth:`ArenaMapping.views` (zero-copy)."""
    return pickle.loads(frames[0], buffers=frames[1:])


class ArenaMapping:
    """The arena file mapped shared and read-write, once, in this process.

    Parameters
    ----------
    path
        The arena file (made by :func:`graphexec.store.paths.create_arena`).
    capacity
        Bytes to map, at most the file's size.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> from graphexec.protocol.serialize import serialize
    >>> fd, path = tempfile.mkstemp()
    >>> os.ftruncate(fd, 1 << 20)
    >>> os.close(fd)
    >>> arena = ArenaMapping(path, 1 << 20)
    >>> lengths = arena.write(0, serialize(np.arange(1000)))
    >>> released = []
    >>> x = deserialize_views(arena.views(0, lengths, lambda: released.append(True)))
    >>> int(x.sum()), x.flags.writeable
    (499500, False)
    >>> del x
    >>> released
    [True]
    >>> arena.close()
    >>> os.unlink(path)
    """

    def __init__(self, path: str, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < capacity:
                raise ValueError(f"arena file {path} has {size} bytes, fewer than {capacity}")
            self._mmap = mmap.mmap(
                fd, capacity, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        finally:
            os.close(fd)  # the mapping keeps the file alive
        self.path = path
        self.capacity = capacity
        self._array: npt.NDArray[np.uint8] | None = np.frombuffer(self._mmap, dtype=np.uint8)
        self._lock = threading.Lock()  # guards the pre-touch state below
        self._closed = False
        self._touch_target = 0
        self._touched = 0
        self._touch_running = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ArenaMapping:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _live_array(self) -> npt.NDArray[np.uint8]:
        if self._array is None:
            raise ValueError(f"arena mapping of {self.path} is closed")
        return self._array

    def _check_bounds(self, offset: int, nbytes: int) -> None:
        if offset < 0 or offset + nbytes > self.capacity:
            raise ValueError(
                f"region [{offset}, {offset + nbytes}) is outside the arena (capacity "
                f"{self.capacity})"
            )

    # ------------------------------------------------------------------ data

    def write(self, offset: int, frames: Sequence[Frame]) -> list[int]:
        """Copy ``frames`` into the region at ``offset``; return the frame lengths.

        The region must have been allocated for at least
        :func:`~graphexec.store.layout.frames_layout` bytes.
        """
        arr = self._live_array()
        total = frames_layout(frames)[1]
        self._check_bounds(offset, total)
        return write_frames(arr[offset : offset + total].data, frames)

    def region(self, offset: int, nbytes: int) -> memoryview:
        """A writable memoryview of ``nbytes`` at ``offset`` (no copy).

        For the store's own bookkeeping (spilling, chunked copies from peers). Call
        ``release()`` on it when done: ``close()`` cannot unmap while it is alive.
        """
        self._live_array()
        self._check_bounds(offset, nbytes)
        return memoryview(self._mmap)[offset : offset + nbytes]

    def views(
        self, offset: int, lengths: Sequence[int], on_release: Callable[[], None]
    ) -> list[memoryview]:
        """Read-only, zero-copy views of the frames at ``offset``.

        ``on_release`` is called once, when the views and everything made from them are
        gone (see the module docstring for the thread it runs in).
        """
        self._live_array()
        total = frame_offsets(lengths)[1]
        self._check_bounds(offset, total)
        # The owner must be made from the mmap itself. A slice of self._array would have
        # self._array as its base (NumPy collapses chains of views), and the finalizer would
        # fire while the frames are still in use.
        owner = np.frombuffer(self._mmap, dtype=np.uint8, count=total, offset=offset)
        owner.flags.writeable = False
        finalizer = weakref.finalize(owner, on_release)
        finalizer.atexit = False  # at exit the store's connections are gone anyway
        return read_frames(owner.data, lengths)

    # ------------------------------------------------------------------ pre-touch

    def pretouch(self, nbytes: int) -> None:
        """Fault in the first ``nbytes`` of the arena in this process, in the background.

        Returns at once. Calling it again with a larger size extends the range. Pages
        already touched cost little the second time.
        """
        target = min(self.capacity, (max(0, nbytes) + PAGE - 1) // PAGE * PAGE)
        with self._lock:
            if self._closed:
                raise ValueError(f"arena mapping of {self.path} is closed")
            if target <= self._touch_target:
                return
            self._touch_target = target
            if self._touch_running:
                return  # the running thread picks up the new target
            self._touch_running = True
            previous = self._thread
            self._thread = threading.Thread(
                target=self._run_pretouch, name="graphexec-pretouch", daemon=True
            )
            self._thread.start()
        if previous is not None:
            previous.join()  # it has left its loop and is only returning

    @property
    def pretouched(self) -> int:
        """Bytes pre-touched so far, from the start of the arena."""
        with self._lock:
            return self._touched

    def wait_pretouched(self, timeout: float | None = None) -> bool:
        """Wait until pre-touching stops (done, failed or closed); return whether it did."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run_pretouch(self) -> None:
        _lower_this_threads_priority()  # pre-faulting uses idle CPU only, never real work's
        while True:
            with self._lock:
                if self._closed or self._touched >= self._touch_target:
                    self._touch_running = False
                    return
                start = self._touched
                end = min(self._touch_target, start + PRETOUCH_CHUNK)
            try:
                self._populate(start, end)
            except OSError as err:
                logger.warning(
                    "pre-touching the object store arena %s stopped at %d bytes: %s",
                    self.path,
                    start,
                    err,
                )
                with self._lock:
                    self._touch_target = self._touched
                    self._touch_running = False
                return
            with self._lock:
                self._touched = end

    def _populate(self, start: int, end: int) -> None:
        arr = self._live_array()  # close() joins this thread before it drops the array
        if _madvise_populate(arr.ctypes.data + start, end - start):
            return
        int(arr[start:end:PAGE].sum())  # fallback: a read fault per page

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop pre-touching and unmap, unless views are still alive (then GC unmaps)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join()
        self._array = None
        # With views alive the mmap object stays mapped and unmaps when they are collected.
        with contextlib.suppress(BufferError):
            self._mmap.close()


@functools.cache
def _lower_this_threads_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: nice is per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def _madvise_populate(address: int, length: int) -> bool:
    """``madvise(MADV_POPULATE_READ)``; False when the kernel does not support it.

    Called through ctypes, which releases the GIL for the call's duration.
    """
    if not sys.platform.startswith("linux"):
        return False
    if _libc().madvise(address, length, _MADV_POPULATE_READ) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EINVAL:
        return False  # kernel older than 5.14
    if err == errno.EFAULT:
        raise OSError(err, "the arena's filesystem is full (an access would raise SIGBUS)")
    raise OSError(err, os.strerror(err))
