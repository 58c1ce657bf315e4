"""``Queue``: a FIFO queue shared by tasks, actors and the driver (Ray's ``ray.util.queue``).

The items live in an ``asyncio.Queue`` inside one async actor (``_QueueActor``); the
:class:`Queue` object is a thin client holding that actor's handle. It pickles with the
handle, so a ``Queue`` passed to a task or an actor reaches the same items there.
Blocking calls block *in the actor* (an ``asyncio.wait_for`` on the actor's event loop,
which runs up to ``max_concurrency`` such waits at once), and the caller waits for the
reply, so ``get(timeout=0.1)`` on an empty queue raises :class:`Empty` after about 0.1 s.
Built on the public API only (``graphexec.remote`` on a class, ``get``, ``wait``, ``kill``).

Policy
------
* Stdlib semantics: ``put`` / ``get`` block by default; ``block=False`` (or the
  ``*_nowait`` methods) fails at once; a negative ``timeout`` raises ``ValueError``;
  ``maxsize <= 0`` means unbounded. :class:`Empty` and :class:`Full` subclass
  ``queue.Empty`` and ``queue.Full``.
* The actor answers ``(ok, value)`` instead of raising, so a timeout costs no remote
  traceback and the driver raises a clean :class:`Empty` / :class:`Full` of its own.
* Batches are all or nothing: ``put_nowait_batch`` raises :class:`Full` without adding
  anything if the items do not all fit, ``get_nowait_batch`` raises :class:`Empty` without
  taking anything if there are not enough.
* The actor is created with ``num_cpus=0`` unless ``actor_options`` says otherwise. An
  actor without ``num_cpus`` holds no CPU once placed (as in Ray) but needs one free to
  be placed, so creating a queue would wait while tasks fill every CPU; the queue's actor
  only waits, so it needs none.
* ``shutdown()`` gives the calls in progress (e.g. a consumer blocked in ``get``) up to
  ``grace_period_s`` to finish, then kills the actor; ``shutdown(force=True)`` kills it at
  once. The kill is asynchronous, as ``graphexec.kill`` is: a call already on its way may
  still be answered. Later calls through this object raise ``RuntimeError``; copies of it
  held elsewhere fail with ``ActorDiedError``.

Differences from Ray
--------------------
* An item comes out exactly as it went in: an ``ObjectRef`` put in the queue comes out as
  that ``ObjectRef`` (Ray's ``put(ref)`` stores the ref's value, ``put_nowait_batch([ref])``
  the ref itself). Until actors count as holders of the refs they keep, the producer must
  hold its own copy of such a ref until it is consumed, or the object may be released.
* A graceful ``shutdown()`` waits for the calls in progress to end (Ray queues an actor
  exit behind them); either way the actor is killed after ``grace_period_s``.

Examples
--------
>>> q = Queue(maxsize=10)  # doctest: +SKIP
>>> q.put(1)  # doctest: +SKIP
>>> q.get(timeout=1.0)  # doctest: +SKIP
1
>>> q.shutdown()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import functools
import queue as stdlib_queue
from collections.abc import Iterable
from typing import Any

import graphexec

__all__ = ["Empty", "Full", "Queue"]


class Empty(stdlib_queue.Empty):
    """``get`` found the queue empty (at once, or until its timeout)."""


class Full(stdlib_queue.Full):
    """``put`` found the queue full (at once, or until its timeout)."""


def _check_timeout(block: bool, timeout: float | None) -> float | None:
    """The timeout the actor should wait: 0 (do not wait), seconds, or None (forever)."""
    if not block:
        return 0.0
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return float(timeout)


class Queue:
    """A first-in, first-out queue backed by an actor, usable from any task or actor.

    Parameters
    ----------
    maxsize : int
        Most items the queue holds; ``<= 0`` (the default) means no limit.
    actor_options : dict, optional
        Options for the queue's actor, passed to ``.options(...)`` (e.g. ``num_cpus``,
        ``name``, ``max_concurrency``). Default: ``{"num_cpus": 0}``.

    Examples
    --------
    >>> import graphexec
    >>> q = Queue()  # doctest: +SKIP
    >>> @graphexec.remote
    ... def produce(q, n):
    ...     for i in range(n):
    ...         q.put(i)
    >>> done = graphexec.submit(produce.remote(q, 3))  # doctest: +SKIP
    >>> [q.get(timeout=10) for _ in range(3)]  # doctest: +SKIP
    [0, 1, 2]
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"Queue(maxsize=...) must be an int, got {type(maxsize).__name__}")
        self.maxsize = maxsize
        options = {"num_cpus": 0, **(actor_options or {})}
        self._actor: Any = _actor_class().options(**options).remote(maxsize)

    def __repr__(self) -> str:
        state = "" if self._actor is not None else " (shut down)"
        return f"<Queue maxsize={self.maxsize}{state}>"

    def __len__(self) -> int:
        return self.size()

    @property
    def actor(self) -> Any:
        """The handle of the actor holding the items (Ray exposes it too)."""
        return self._live_actor()

    def _live_actor(self) -> Any:
        if self._actor is None:
            raise RuntimeError("this Queue was shut down")
        return self._actor

    # ------------------------------------------------------------------ size

    def size(self) -> int:
        """The number of items in the queue now."""
        return graphexec.get(self._live_actor().qsize.remote())  # type: ignore[no-any-return]

    def qsize(self) -> int:
        """The number of items in the queue now (as ``size``)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no items now."""
        return graphexec.get(self._live_actor().empty.remote())  # type: ignore[no-any-return]

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items now (never, if unbounded)."""
        return graphexec.get(self._live_actor().full.remote())  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``, waiting up to ``timeout`` seconds (forever if None) for room.

        Raises :class:`Full` if there is no room (at once if ``block`` is False), and
        ``ValueError`` if ``timeout`` is negative. The order of items put by several
        producers into a full queue is not guaranteed.
        """
        wait_s = _check_timeout(block, timeout)
        ok = graphexec.get(self._live_actor().put.remote((item,), wait_s))
        if not ok:
            raise Full(self._full_message(wait_s))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for coroutines: awaits instead of blocking the event loop."""
        wait_s = _check_timeout(block, timeout)
        ok = await self._live_actor().put.remote((item,), wait_s)
        if not ok:
            raise Full(self._full_message(wait_s))

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``: raise :class:`Full` at once if there is no room."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all ``items`` in order, or none of them (raise :class:`Full`) if they do not fit."""
        if not isinstance(items, Iterable):
            raise TypeError(f"Argument 'items' must be an Iterable, got {type(items).__name__}")
        batch = list(items)
        message = graphexec.get(self._live_actor().put_nowait_batch.remote(batch))
        if message is not None:
            raise Full(message)

    def _full_message(self, wait_s: float | None) -> str:
        waited = f" for {wait_s:g} s" if wait_s else ""
        return f"the queue is full (maxsize {self.maxsize}){waited}"

    # ------------------------------------------------------------------ get

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the next item, waiting up to ``timeout`` s (forever if None).

        Raises :class:`Empty` if there is none (at once if ``block`` is False), and
        ``ValueError`` if ``timeout`` is negative.
        """
        wait_s = _check_timeout(block, timeout)
        ok, item = graphexec.get(self._live_actor().get.remote(wait_s))
        if not ok:
            raise Empty(_empty_message(wait_s))
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for coroutines: awaits instead of blocking the event loop."""
        wait_s = _check_timeout(block, timeout)
        ok, item = await self._live_actor().get.remote(wait_s)
        if not ok:
            raise Empty(_empty_message(wait_s))
        return item

    def get_nowait(self) -> Any:
        """``get(block=False)``: raise :class:`Empty` at once if there is no item."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return ``num_items`` items in order, or raise :class:`Empty` (taking
        none) if the queue holds fewer."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError(f"Argument 'num_items' must be an int, got {type(num_items).__name__}")
        if num_items < 0:
            raise ValueError(f"'num_items' must be nonnegative, got {num_items}")
        ok, result = graphexec.get(self._live_actor().get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(result)
        return result  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Stop the queue's actor and release what it holds; a second call does nothing.

        Parameters
        ----------
        force : bool
            Kill the actor at once: calls in progress fail with ``ActorDiedError``.
        grace_period_s : float
            Otherwise, how long the calls in progress (a consumer blocked in ``get``, a
            producer blocked in ``put``) get to finish before the actor is killed.
        """
        if grace_period_s < 0:
            raise ValueError(f"'grace_period_s' must be non-negative, got {grace_period_s}")
        actor, self._actor = self._actor, None
        if actor is None:
            return
        if not force:
            graphexec.wait([actor.drain.remote()], timeout=grace_period_s)
        graphexec.kill(actor)


def _empty_message(wait_s: float | None) -> str:
    return f"the queue is empty (waited {wait_s:g} s)" if wait_s else "the queue is empty"


class _QueueActor:
    """The actor that holds the items. Every method is a coroutine on its event loop.

    Replies are values, never exceptions: ``put`` -> ``bool``; ``get`` -> ``(ok, item)``;
    the batch calls -> ``None`` / ``(ok, items)`` or an error message.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._waiting = _CallCounter()

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, boxed: tuple[Any], timeout: float | None) -> bool:
        (item,) = boxed  # boxed so that an ObjectRef item stays a ref
        if not self.queue.full():
            self.queue.put_nowait(item)
            return True
        if timeout is not None and timeout <= 0:
            return False
        with self._waiting:
            try:
                await asyncio.wait_for(self.queue.put(item), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def get(self, timeout: float | None) -> tuple[bool, Any]:
        if not self.queue.empty():
            return True, self.queue.get_nowait()
        # wait_for(..., 0) would cancel the get before it ran: answer now instead
        if timeout is not None and timeout <= 0:
            return False, None
        with self._waiting:
            try:
                return True, await asyncio.wait_for(self.queue.get(), timeout)
            except asyncio.TimeoutError:
                return False, None

    async def put_nowait_batch(self, items: list[Any]) -> str | None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return (
                f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} "
                f"and maxsize {self.maxsize}."
            )
        for item in items:
            self.queue.put_nowait(item)
        return None

    async def get_nowait_batch(self, num_items: int) -> tuple[bool, Any]:
        if num_items > self.queue.qsize():
            return False, f"Cannot get {num_items} items from queue of size {self.queue.qsize()}."
        return True, [self.queue.get_nowait() for _ in range(num_items)]

    async def drain(self) -> None:
        """Return once no call is waiting (``Queue.shutdown`` waits on it)."""
        await self._waiting.wait_idle()


class _CallCounter:
    """Counts the actor's calls that are waiting for room or items, for ``drain``."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self.idle.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()

    async def wait_idle(self) -> None:
        while self.count:
            await self.idle.wait()


@functools.cache
def _actor_class() -> Any:
    """The remote class, made on first use so importing this module stays cheap."""
    return graphexec.remote(_QueueActor)
