"""Runs task functions on threads, at most as many CPUs' worth at once.

The executor is the worker's admission control. Tasks arrive in priority order; a
runner thread starts the next one when the CPUs it asks for are free (a task asking for
more than the worker has starts when the worker is idle; a zero-CPU task always starts).
Each finished item is handed back at once through ``on_done``, called from the runner
thread; the server coalesces those calls into one wake-up of its event loop per burst,
which is what lets tiny tasks run at thousands per second.

Nested tasks: a task that blocks in ``get`` calls :meth:`Executor.block`, which hands
its CPUs back so another task (on another thread, started on demand) can run; when the
``get`` returns, :meth:`Executor.unblock` takes them again (briefly oversubscribing, as
Ray does). That is what keeps a pool whose every slot waits on a child from deadlocking.

Shutdown order: ``close()`` stops taking items, wakes every idle runner and joins them;
an item still running in user code cannot be interrupted and its thread is left to end
on its own (runner threads are daemons so they never hold the process open).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from graphexec._context import notify_blocked, running_task

__all__ = ["ExecItem", "Executor", "current_item", "notify_blocked"]

_current = running_task


class ExecItem:
    """One unit of work: ``run()`` is called on a runner thread, its result kept."""

    __slots__ = ("key", "cpus", "run", "result", "cancelled", "blocked", "task")

    def __init__(self, key: str, cpus: float, run: Callable[[], Any]) -> None:
        self.key = key
        self.task: Any = None  # the owner's record of what this item runs
        self.cpus = cpus
        self.run = run
        self.result: Any = None
        self.cancelled = False
        self.blocked = False


def current_item() -> ExecItem | None:
    """The item the calling thread is running, if it is a runner thread."""
    return getattr(_current, "item", None)


class Executor:
    """Elastic pool of runner threads with CPU-based admission."""

    def __init__(
        self,
        cpus: float,
        on_done: Callable[[list[ExecItem]], None],
        *,
        name: str = "graphexec-runner",
        on_block: Callable[[ExecItem, bool], None] | None = None,
        lend: bool = True,
    ) -> None:
        self.cpus = cpus
        self.on_block = on_block
        #: False for actors: a call blocking in ``get`` keeps its slot (no other call starts)
        self.lend = lend
        self._on_done = on_done
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[ExecItem] = deque()
        self._running_cpus = 0.0
        self._running = 0
        self._idle = 0
        #: runners woken or started for the queue head that have not taken it yet: while
        #: one is on its way no other is woken (it wakes the next itself if more fit)
        self._waking = 0
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- called from the event loop -------------------------------------------------

    def submit(self, items: list[ExecItem]) -> None:
        with self._cond:
            if self._closed:
                return
            self._queue.extend(items)
            self._wake_or_spawn()

    def cancel(self, key: str) -> bool:
        """Drop a queued item; returns False when it already started (or is unknown)."""
        with self._cond:
            for item in self._queue:
                if item.key == key:
                    self._queue.remove(item)
                    return True
        return False

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- called from runner threads (tasks blocking in get) -------------------------

    def block(self, item: ExecItem) -> None:
        if not self.lend:
            return
        with self._cond:
            if item.blocked:
                return
            item.blocked = True
            self._running_cpus -= item.cpus
            self._wake_or_spawn()

    def set_blocked(self, item: ExecItem, blocked: bool) -> None:
        """Block or unblock ``item`` and tell the owner (``on_block``)."""
        if not self.lend:
            return
        if blocked:
            self.block(item)
        else:
            self.unblock(item)
        if self.on_block is not None:
            self.on_block(item, blocked)

    def unblock(self, item: ExecItem) -> None:
        with self._cond:
            if not item.blocked:
                return
            item.blocked = False
            self._running_cpus += item.cpus

    # -- internals -----------------------------------------------------------------

    def _admissible(self) -> bool:
        if not self._queue:
            return False
        need = self._queue[0].cpus
        return (
            need == 0
            or self._running_cpus <= 1e-9
            or (self._running_cpus + need <= self.cpus + 1e-9)
        )

    def _wake_or_spawn(self) -> None:
        """Called with the lock held when the queue head may be admissible."""
        if not self._admissible() or self._waking:
            return
        self._waking += 1
        if self._idle:
            self._idle -= 1  # claimed: the woken runner is no longer idle
            self._cond.notify()
        else:
            thread = threading.Thread(
                target=self._runner, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _take(self, fresh: bool = False) -> ExecItem | None:
        """Wait for an admissible item (lock held); None when closed.

        ``fresh``: the runner's first call, after ``_wake_or_spawn`` started it.
        """
        if fresh:
            self._waking -= 1
        while not self._closed and not self._admissible():
            self._idle += 1
            self._cond.wait()
            if self._waking:
                self._waking -= 1  # the wake-up was for this runner
        if self._closed:
            return None
        item = self._queue.popleft()
        self._running_cpus += item.cpus
        self._running += 1
        self._wake_or_spawn()  # another item may fit beside this one
        return item

    def _release(self, item: ExecItem) -> None:
        if not item.blocked:
            self._running_cpus -= item.cpus
        item.blocked = False
        self._running -= 1
        if self._running_cpus < 1e-9:
            self._running_cpus = 0.0

    def _runner(self) -> None:
        item: ExecItem | None = None
        fresh = True
        while True:
            with self._cond:
                if item is not None:
                    self._release(item)
                item = self._take(fresh)
                fresh = False
                if item is None:
                    break
            _current.item = item
            _current.executor = self
            try:
                item.result = item.run()
            finally:
                _current.item = None
            # each result goes back at once; the owner coalesces wake-ups, so a burst of
            # tiny tasks still costs one loop wake-up, and a fast result never waits
            # behind a slow neighbour
            self._on_done([item])
