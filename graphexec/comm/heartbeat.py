"""Heartbeat settings shared by every process of a cluster.

A peer that has sent nothing for ``heartbeat_timeout()`` seconds is taken for dead:
clients then fail every blocked call with ``SchedulerLostError``. Peers that may be
idle send a heartbeat every ``heartbeat_interval()`` seconds (clients send a ``sync``,
which the scheduler answers), so silence means a frozen, partitioned or dead peer, not
an idle one. A peer that dies outright closes its connections and is noticed at once.

``GRAPHEXEC_HEARTBEAT_INTERVAL`` (default 1 s) and ``GRAPHEXEC_HEARTBEAT_TIMEOUT``
(default 30 s) override them; the timeout is at least three intervals.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from graphexec.comm.batched import BatchedSend
from graphexec.errors import CommClosedError

__all__ = ["Silence", "heartbeat_interval", "heartbeat_timeout", "send_heartbeats"]

DEFAULT_INTERVAL = 1.0
DEFAULT_TIMEOUT = 30.0


def _seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def heartbeat_interval() -> float:
    return _seconds("GRAPHEXEC_HEARTBEAT_INTERVAL", DEFAULT_INTERVAL)


def heartbeat_timeout() -> float:
    return max(_seconds("GRAPHEXEC_HEARTBEAT_TIMEOUT", DEFAULT_TIMEOUT), 3 * heartbeat_interval())


async def send_heartbeats(batched: BatchedSend) -> None:
    """Send ``heartbeat`` every interval until the connection closes (workers, nodes)."""
    interval = heartbeat_interval()
    while True:
        await asyncio.sleep(interval)
        try:
            batched.send({"op": "heartbeat"})
        except CommClosedError:
            return


class Silence:
    """Who has been silent too long, robust to this process's own stalls.

    ``heard(peer)`` on every message; ``overdue(now)`` lists the peers silent for more
    than the timeout. If this process itself did not run for a while (its loop blocked,
    the machine suspended), everyone gets a fresh start instead: the silence was ours.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.timeout = heartbeat_timeout()
        self.interval = heartbeat_interval()
        self.last: dict[Any, float] = {}
        self._checked = clock()

    def heard(self, peer: Any) -> None:
        self.last[peer] = self.clock()

    def forget(self, peer: Any) -> None:
        self.last.pop(peer, None)

    def overdue(self) -> list[Any]:
        now = self.clock()
        stalled = now - self._checked > max(3 * self.interval, self.timeout / 2)
        self._checked = now
        if stalled:
            for peer in self.last:
                self.last[peer] = now
            return []
        return [peer for peer, t in self.last.items() if now - t > self.timeout]
