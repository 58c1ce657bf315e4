"""Read-only questions about the scheduler's state, in words and numbers.

``explain_pending`` says why a key is not done (for ``GetTimeoutError`` messages);
the resource totals are what ``cluster_resources()`` and ``available_resources()``
report. Pure functions of a :class:`~graphexec.scheduler.state.SchedulerState`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphexec.scheduler.entities import NodeState
    from graphexec.scheduler.state import SchedulerState

__all__ = [
    "available_resources",
    "cluster_resources",
    "explain_pending",
    "registered_nodes",
    "validate",
]


def explain_pending(state: SchedulerState, keys: Iterable[str]) -> dict[str, str]:
    """Why each of ``keys`` is not finished yet, in words for an error message."""
    out: dict[str, str] = {}
    totals = cluster_resources(state)
    for key in keys:
        ts = state.tasks.get(key)
        if ts is None:
            out[key] = "unknown to the scheduler (released or never submitted)"
        elif ts.state == "no-worker":
            out[key] = (
                f"needs {ts.demand} but no node has that much; cluster resources are {totals}"
            )
        elif ts.state == "queued":
            out[key] = f"waiting for free resources {ts.demand}"
        elif ts.state == "waiting":
            dep = next(iter(ts.waiting_on), None)
            out[key] = f"waiting for input {dep.key if dep else '?'}"
        elif ts.state == "external":
            out[key] = "the result of an actor call that has not finished yet"
        elif ts.state == "processing":
            where = ts.processing_on.address if ts.processing_on else "?"
            out[key] = f"running on worker {where}"
        else:
            out[key] = ts.state
    return out


def cluster_resources(state: SchedulerState) -> dict[str, float]:
    out: dict[str, float] = {}
    for node in registered_nodes(state):
        for name, amount in node.total.items():
            out[name] = out.get(name, 0.0) + amount
    return out


def registered_nodes(state: SchedulerState) -> list[NodeState]:
    """Nodes whose node manager has registered (not just some of their workers)."""
    return [n for n in state.nodes.values() if n.registered]


def available_resources(state: SchedulerState) -> dict[str, float]:
    out: dict[str, float] = {}
    for node in registered_nodes(state):
        for name, amount in node.available.items():
            if name == "CPU":
                used = sum(min(w.assigned_cpus, w.capacity) for w in node.workers.values())
                busy = any(w.processing or w.lent_cpus for w in node.workers.values())
                amount = max(0.0, amount - max(used, 0.0) if busy else amount)
            out[name] = out.get(name, 0.0) + amount
    return out


def validate(state: SchedulerState) -> None:
    """Check the state's cross-references (``SchedulerState.validate_state``)."""
    for key, ts in state.tasks.items():
        assert ts.key == key
        if ts.state == "processing":
            assert ts.processing_on is not None, ts
            assert ts.processing_on.processing.get(key) is ts, ts
        else:
            assert ts.processing_on is None, ts
        if ts.state == "memory":
            assert bool(ts.who_has or ts.store_nodes) or ts.inline is not None, ts
        if ts.state == "waiting":
            assert ts.waiting_on, ts
        for dep in ts.dependencies:
            assert ts in dep.dependents, (ts, dep)
        for ws in ts.who_has:
            assert ts in ws.has_what, (ts, ws)
    for ws in state.workers.values():
        for key, ts in ws.processing.items():
            assert ts.processing_on is ws and ts.key == key
        assert ws.assigned_cpus >= -1e-9
