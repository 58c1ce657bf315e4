"""``ActorPool``: spread calls over a fixed set of actors (Ray's ``ray.util.ActorPool``).

The pool hands each submitted value to an idle actor through a user function
``fn(actor, value) -> ObjectRef``; when every actor is busy the value waits in a FIFO
queue and starts as soon as an actor comes back. An actor is busy from the moment a call
is started on it until that call's result is *retrieved* (``get_next`` /
``get_next_unordered``), as in Ray. Built on the public API only (``graphexec.get``,
``wait``, ``submit``): nothing here knows how actors are implemented.

Policy
------
* ``get_next`` returns results in submission order, ``get_next_unordered`` in completion
  order; ``map`` / ``map_unordered`` are generators over the two.
* An error raised by a call is raised by the ``get_next*`` that retrieves it, and the actor
  goes back to the pool. An actor that died (``ActorDiedError``) does not go back.
* A timeout raises :class:`~graphexec.errors.GetTimeoutError` (a ``TimeoutError``) and
  leaves the call pending, unless ``ignore_if_timedout=True``: then the call is dropped,
  its actor goes back to the pool at once (its next call queues behind the dropped one on
  the actor) and ``GetTimeoutError`` is raised all the same.
* ``get_next*`` with nothing pending raises ``StopIteration("No more results to get")``.
* An empty actor list is allowed (actors can be ``push``-ed later).
* Not thread-safe: use a pool from one thread.

Differences from Ray
--------------------
* Actor calls are sent at once, but tasks are lazy in graphexec: if ``fn`` returns the
  ref of a lazy task (one that calls the actor, say), it is submitted at once
  (``graphexec.submit``) so the work overlaps, as it would in Ray.
* ``get_next`` returns the oldest result not yet retrieved, also after
  ``get_next_unordered``; Ray raises ``ValueError`` (or skips results) when the two are mixed.
* ``has_next`` is also true while submissions wait for an actor, and ``get_next*`` raises
  ``RuntimeError`` if they can never start (the pool has no actors left); Ray's
  ``has_next`` is false then and ``map`` silently yields nothing.
* If ``fn`` fails for a value that waited in the queue (it runs when an actor frees up,
  inside some later ``get_next*``), its error is raised by the ``get_next*`` that
  retrieves *that* value, not by the call that happened to start it.
* ``map`` / ``map_unordered`` forget the results of earlier ``submit`` calls that were not
  retrieved (Ray retrieves and drops them), and drop submissions still waiting for an
  actor without running them.
* ``fn`` must return one ``ObjectRef`` (Ray also takes lists and generators of refs).

Examples
--------
>>> import graphexec
>>> @graphexec.remote
... class Doubler:
...     def double(self, v):
...         return 2 * v
>>> pool = ActorPool([Doubler.remote(), Doubler.remote()])  # doctest: +SKIP
>>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))  # doctest: +SKIP
[2, 4, 6, 8]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import graphexec
from graphexec.errors import ActorDiedError, GetTimeoutError, TaskError

if TYPE_CHECKING:
    from graphexec import ObjectRef

__all__ = ["ActorPool"]

A = TypeVar("A")
V = TypeVar("V")

_TIMEOUT_MSG = "Timed out waiting for result"


@dataclass(slots=True)
class _Call(Generic[A]):
    """One started submission: its result ref and the actor it occupies.

    ``error`` is set instead (and ``actor`` is None) when ``fn`` itself failed while
    starting a queued submission; ``get_next*`` raises it in the submission's turn.
    """

    ref: ObjectRef[Any] | None
    actor: A | None
    error: Exception | None = None


class ActorPool(Generic[A]):
    """Run ``fn(actor, value)`` calls over a fixed pool of actor handles.

    Parameters
    ----------
    actors : iterable of actor handles
        The actors to use (may be empty; ``push`` adds more).

    Examples
    --------
    >>> pool = ActorPool([a1, a2])  # doctest: +SKIP
    >>> pool.submit(lambda a, v: a.double.remote(v), 1)  # doctest: +SKIP
    >>> pool.submit(lambda a, v: a.double.remote(v), 2)  # doctest: +SKIP
    >>> pool.get_next(), pool.get_next()  # doctest: +SKIP
    (2, 4)
    """

    def __init__(self, actors: Iterable[A]) -> None:
        self._idle: list[A] = list(actors)
        # started calls by submission index; dict order is submission order
        self._calls: dict[int, _Call[A]] = {}
        self._queued: deque[tuple[Callable[[A, Any], ObjectRef[Any]], Any]] = deque()
        self._next_index = 0

    def __repr__(self) -> str:
        return (
            f"<ActorPool idle={len(self._idle)} running={len(self._calls)} "
            f"queued={len(self._queued)}>"
        )

    # ------------------------------------------------------------------ submitting

    def map(self, fn: Callable[[A, V], ObjectRef[Any]], values: Iterable[V]) -> Iterator[Any]:
        """Apply ``fn`` over ``values`` in parallel; yield the results in input order.

        Every value is submitted (or queued) when ``map`` is called; iterate over the
        returned generator to collect the results. Results of earlier ``submit`` calls
        not yet retrieved are forgotten.

        Examples
        --------
        >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3]))  # doctest: +SKIP
        [2, 4, 6]
        """
        self._forget_pending()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next)

    def map_unordered(
        self, fn: Callable[[A, V], ObjectRef[Any]], values: Iterable[V]
    ) -> Iterator[Any]:
        """Like :meth:`map`, but yield each result as soon as it is ready.

        Examples
        --------
        >>> sorted(pool.map_unordered(lambda a, v: a.double.remote(v), [1, 2]))  # doctest: +SKIP
        [2, 4]
        """
        self._forget_pending()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next_unordered)

    def _results(self, get_one: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield get_one()

    def submit(self, fn: Callable[[A, V], ObjectRef[Any]], value: V) -> None:
        """Start ``fn(actor, value)`` on an idle actor, or queue it until one is free.

        ``fn`` must return the ``ObjectRef`` of the call; an error raised by ``fn`` (or a
        non-ref return value) is raised here and the actor stays idle.

        Examples
        --------
        >>> pool.submit(lambda a, v: a.double.remote(v), 21)  # doctest: +SKIP
        >>> pool.get_next()  # doctest: +SKIP
        42
        """
        if self._idle:
            self._start(fn, value, self._idle.pop())
        else:
            self._queued.append((fn, value))

    def _start(self, fn: Callable[[A, Any], ObjectRef[Any]], value: Any, actor: A) -> None:
        try:
            ref = fn(actor, value)
            if not isinstance(ref, graphexec.ObjectRef):
                raise TypeError(
                    "ActorPool: fn(actor, value) must return the ObjectRef of an actor "
                    f"call (e.g. lambda a, v: a.method.remote(v)), got {type(ref).__name__}"
                )
            graphexec.submit(ref)  # graphs are lazy: start the call now
        except Exception:
            self._idle.append(actor)
            raise
        self._calls[self._next_index] = _Call(ref, actor)
        self._next_index += 1

    def _start_queued(self) -> None:
        """Start queued submissions while there are idle actors."""
        while self._queued and self._idle:
            fn, value = self._queued.popleft()
            try:
                self._start(fn, value, self._idle.pop())
            except Exception as err:
                # raised in this submission's own turn, not into an unrelated get_next
                self._calls[self._next_index] = _Call(None, None, err)
                self._next_index += 1

    def _return_actor(self, actor: A | None, *, alive: bool = True) -> None:
        if actor is not None and alive:
            self._idle.append(actor)
        self._start_queued()

    def _forget_pending(self) -> None:
        calls, self._calls = self._calls, {}
        self._queued.clear()
        for call in calls.values():
            if call.actor is not None:
                self._idle.append(call.actor)

    # ------------------------------------------------------------------ retrieving

    def has_next(self) -> bool:
        """Whether there are results not yet retrieved (running or queued calls)."""
        return bool(self._calls or self._queued)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Return the next result in submission order, waiting up to ``timeout`` seconds.

        Raises
        ------
        StopIteration
            Nothing is pending.
        GetTimeoutError
            The result is not ready in time (a ``TimeoutError``). The call stays pending,
            unless ``ignore_if_timedout=True``: then it is dropped.
        Exception
            The call's own error (its actor goes back to the pool).

        Examples
        --------
        >>> pool.submit(lambda a, v: a.double.remote(v), 1)  # doctest: +SKIP
        >>> pool.get_next(timeout=10)  # doctest: +SKIP
        2
        """
        self._check_pending("get_next")
        index = next(iter(self._calls))
        return self._collect(index, timeout, ignore_if_timedout)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Return whichever pending result is ready first, waiting up to ``timeout`` s.

        Raises as :meth:`get_next` does; with ``ignore_if_timedout=True`` a timeout drops
        the oldest pending call.

        Examples
        --------
        >>> pool.submit(lambda a, v: a.double.remote(v), 1)  # doctest: +SKIP
        >>> pool.get_next_unordered()  # doctest: +SKIP
        2
        """
        self._check_pending("get_next_unordered")
        failed = next((i for i, call in self._calls.items() if call.ref is None), None)
        if failed is not None:
            return self._collect(failed, None, False)
        by_id = {id(call.ref): i for i, call in self._calls.items()}
        refs = [call.ref for call in self._calls.values() if call.ref is not None]
        ready, _ = graphexec.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            return self._collect(by_id[id(ready[0])], None, False)
        oldest = next(iter(self._calls))
        if not ignore_if_timedout:
            raise GetTimeoutError(_TIMEOUT_MSG)
        call = self._calls.pop(oldest)
        self._return_actor(call.actor)
        raise GetTimeoutError(f"{_TIMEOUT_MSG}. The task {call.ref} has been ignored.")

    def _check_pending(self, what: str) -> None:
        if self._calls:
            return
        if not self._queued:
            raise StopIteration("No more results to get")
        raise RuntimeError(
            f"ActorPool.{what}: {len(self._queued)} submission(s) wait for an actor but the "
            "pool has none (all were popped or died); push() an actor first"
        )

    def _collect(self, index: int, timeout: float | None, ignore_if_timedout: bool) -> Any:
        """Wait for call ``index`` and return its value, handing its actor back."""
        call = self._calls[index]
        if call.error is not None:
            del self._calls[index]
            raise call.error
        assert call.ref is not None
        try:
            value = graphexec.get(call.ref, timeout=timeout)
        except Exception as err:
            # a task's own GetTimeoutError arrives as a TaskError: that is a result
            if isinstance(err, GetTimeoutError) and not isinstance(err, TaskError):
                if not ignore_if_timedout:
                    raise GetTimeoutError(_TIMEOUT_MSG) from err
                del self._calls[index]
                self._return_actor(call.actor)
                raise GetTimeoutError(
                    f"{_TIMEOUT_MSG}. The task {call.ref} has been ignored."
                ) from err
            del self._calls[index]
            self._return_actor(call.actor, alive=not isinstance(err, ActorDiedError))
            raise
        del self._calls[index]
        self._return_actor(call.actor)
        return value

    # ------------------------------------------------------------------ actors

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle) and not self._queued

    def pop_idle(self) -> A | None:
        """Remove an idle actor from the pool and return it (None if none is free)."""
        if self.has_free():
            return self._idle.pop()
        return None

    def push(self, actor: A) -> None:
        """Add ``actor`` to the pool (it starts a queued submission if there is one).

        Raises ``ValueError`` if the actor already belongs to the pool.
        """
        busy = [call.actor for call in self._calls.values() if call.actor is not None]
        if any(actor is a or actor == a for a in (*self._idle, *busy)):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
