"""Spinning before sleeping: how a leading thread waits for an actor's answer.

On a small virtual machine waking a thread blocked on a socket costs more than the rest
of a short actor call (measurements in docs/design/actors.md), so the thread reading an
actor's socket for ``get`` polls it without sleeping for a moment first.
"""

from __future__ import annotations

import os
import time
from typing import Any

from graphexec.comm.blocking import BlockingComm

__all__ = ["SPIN_MISSES", "SPIN_PROBE", "SPIN_SECONDS", "read_soon"]


def _spin_seconds() -> float:
    """How long a leading thread polls before it sleeps (``read_soon``).

    ``GRAPHEXEC_ACTOR_SPIN_US`` (microseconds, default 200; 0 turns spinning off). Off
    when this process may use only one CPU: spinning would take it from the actor.
    """
    try:
        micros = float(os.environ.get("GRAPHEXEC_ACTOR_SPIN_US", "200"))
    except ValueError:
        micros = 200.0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0.0, micros) / 1e6 if (cpus or 1) > 1 else 0.0


SPIN_SECONDS = _spin_seconds()
#: after this many fruitless spins in a row a leader spins on one read in ``SPIN_PROBE``
SPIN_MISSES = 4
SPIN_PROBE = 16


def read_soon(link: Any, comm: BlockingComm, timeout: float) -> list[Any]:
    """The next batch, or ``[]`` after ``timeout``; spins first while that pays.

    The leader polls without sleeping for ``SPIN_SECONDS`` before it blocks: on a
    small virtual machine waking a blocked thread costs more than a short call
    (docs/design/actors.md). After ``SPIN_MISSES`` spins in a row that ended without
    an answer (a slow actor) it only tries one read in ``SPIN_PROBE``.
    """
    batch: list[Any] = []
    link.reads += 1
    if SPIN_SECONDS and (link.spin_misses < SPIN_MISSES or link.reads % SPIN_PROBE == 0):
        until = time.perf_counter() + SPIN_SECONDS
        while not batch and time.perf_counter() < until:
            batch = comm.read_batch(timeout=0)
        link.spin_misses = 0 if batch else link.spin_misses + 1
    return batch or comm.read_batch(timeout=timeout)
