"""Placement policy: which worker runs a ready task, and how deep worker queues are.

Order of preference, as DESIGN.md §3 fixes it:

1. **Resources.** A worker qualifies only if its node has every non-CPU resource the task
   demands free now (GPUs, custom resources, ``memory``), and its CPU budget has room. A
   task that needs more CPUs than one worker process has (``num_cpus=2`` on a node of
   1-CPU workers) borrows the idle CPU budget of sibling workers on the same node.
2. **Locality.** Prefer the worker that already holds the most bytes of the task's inputs.
3. **Load.** Then the least loaded worker (assigned CPU over capacity).

Queue depth: a worker is given more work than it can run at once so it never idles
between tiny tasks, but only about ``QUEUE_SECONDS`` of it (estimated from the observed
durations of tasks of the same name), so late workers can still take work.

Everything here is pure: it reads scheduler state objects and returns a decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphexec.scheduler.entities import NodeState, TaskState, WorkerState

__all__ = ["QUEUE_SECONDS", "choose_worker", "feasible_on", "queue_allowance"]

#: how much estimated work (seconds) a worker may hold beyond what it is running
QUEUE_SECONDS = 0.01
#: queued tasks per CPU when nothing is known about a task's duration
UNKNOWN_QUEUE = 1.0
#: hard cap on queued tasks per CPU slot, whatever the durations say
MAX_QUEUE = 500.0
#: tasks that ask for zero CPUs still need a bound on how many a worker is sent
MAX_ZERO_CPU_TASKS = 64


def queue_allowance(duration: float | None) -> float:
    """Extra tasks per CPU a worker may hold for tasks of this estimated duration.

    >>> queue_allowance(None)
    1.0
    >>> queue_allowance(0.001)
    10.0
    >>> queue_allowance(5.0)
    0.0
    >>> queue_allowance(0.0)
    500.0
    """
    if duration is None:
        return UNKNOWN_QUEUE
    if duration <= 0:
        return MAX_QUEUE
    return min(MAX_QUEUE, float(int(QUEUE_SECONDS / duration)))


def feasible_on(demand: dict[str, float], node: NodeState) -> bool:
    """Could ``node`` ever run a task with this demand (ignoring current load)?"""
    total = node.total
    return all(total.get(name, 0.0) >= amount for name, amount in demand.items())


def _extra_fits(demand: dict[str, float], node: NodeState) -> bool:
    available = node.available
    for name, amount in demand.items():
        if name != "CPU" and available.get(name, 0.0) < amount:
            return False
    return True


def _fits_worker(ts: TaskState, ws: WorkerState, allowance: float) -> bool:
    cpus = ts.cpus
    capacity = ws.capacity
    if cpus == 0:
        return len(ws.processing) < MAX_ZERO_CPU_TASKS
    if cpus > ws.cpus:
        # a multi-CPU task: this worker must be idle, siblings lend the rest
        return not ws.processing and ws.node.idle_cpus() >= cpus
    if ts.has_extra_demand or ws.lent_cpus:
        # tasks holding GPUs or custom resources are not queued behind others, and a
        # worker lending its CPU to a sibling's multi-CPU task runs nothing it cannot fit
        return ws.assigned_cpus + cpus <= capacity
    return ws.assigned_cpus + cpus <= capacity * (1.0 + allowance)


def choose_worker(
    ts: TaskState, workers: Iterable[WorkerState], allowance: float
) -> WorkerState | None:
    """The best worker for ``ts`` now, or ``None`` when none has room."""
    best: WorkerState | None = None
    best_score: tuple[float, float] = (0.0, 0.0)
    deps = ts.dependencies
    for ws in workers:
        if ws.status != "running" or ws.actor or not _fits_worker(ts, ws, allowance):
            continue
        if ts.has_extra_demand and not _extra_fits(ts.demand, ws.node):
            continue
        local = 0.0
        if deps:
            for dep in deps:
                if ws in dep.who_has or ws.node in dep.store_nodes:
                    local += dep.nbytes + 1
        load = ws.assigned_cpus / ws.capacity if ws.capacity else float(len(ws.processing))
        score = (-local, load)
        if best is None or score < best_score:
            best, best_score = ws, score
    return best
