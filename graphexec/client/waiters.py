"""What a thread blocked in ``get``/``wait`` sleeps on: a waiter per call, one lock each.

The client's ``_on_key`` counts down a waiter's ``remaining`` keys and sets its signal (or
calls its callback); the actor caller's leading thread polls ``event.is_set()`` between
reads (``actors/caller.py``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

__all__ = ["_Signal", "_Waiter"]


class _Signal:
    """A one-shot event made of one lock (a ``threading.Event`` costs a condition)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            with contextlib.suppress(RuntimeError):  # set twice at once: already released
                self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if not self._set:
            if timeout is None:
                self._lock.acquire()
            else:
                self._lock.acquire(timeout=max(0.0, timeout))
        return self._set


class _Waiter:
    """Wakes a user thread (or calls ``callback``) once ``target`` of its keys are done."""

    __slots__ = ("remaining", "event", "order", "callback")

    def __init__(self, remaining: int, callback: Callable[[], None] | None = None) -> None:
        self.remaining = remaining
        self.event = _Signal()
        self.order: list[str] = []
        self.callback = callback
