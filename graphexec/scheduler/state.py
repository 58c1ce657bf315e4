"""The scheduler's sans-IO state machine: events in, messages out.

Every stimulus (a graph from a client, a finished task from a worker, a worker lost, ...)
is a ``handle_*`` method that mutates in-memory state and returns a list of
:class:`Send` instructions (destination + wire message). The Tornado server in
``scheduler/server.py`` only decodes messages, calls these methods and sends what they
return, so this module is tested synchronously without any network.

Task states (``TaskState.state``)::

    released -> waiting -> queued -> processing -> memory
                   |          |           |   \\-> erred
                   |          '--> no-worker (no node could ever run it)
                   '--> erred (a dependency failed)

``queued`` means all inputs are in memory and the task waits for room on a worker;
``processing`` means it was sent to a worker (which may still hold it in its short
queue). ``lost`` data (its only holder died) sends the task back to ``released`` and it
is recomputed from lineage when still needed.

Data lifetime: a key in memory is kept while a client wants it or a dependent still
needs it; then its data is freed on workers, and a task nobody refers to is forgotten.

Small results (at most the inline limit) travel inline: the scheduler keeps their bytes
and pushes them to the clients that want them. Large results stay on their worker; the
scheduler only records who has them.
Size: a little over 800 lines, on purpose. Read-only questions and ``validate_state``
live in ``queries.py``, actors in ``actors.py``, and the checks an ``update-graph`` passes
before it may change anything in ``messages.py``; what is left is the transitions and the
private helpers they share (``_fail``, ``_maybe_release``, ``_schedule``), which keep the
invariants together. Splitting those across modules would scatter one state machine.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from graphexec.errors import InvalidTransition
from graphexec.scheduler import queries
from graphexec.scheduler.actors import ActorTable
from graphexec.scheduler.entities import (
    _EMPTY,
    _NO_BORROW,
    ClientState,
    NodeState,
    State,
    TaskState,
    WorkerState,
)
from graphexec.scheduler.messages import update_graph_nbytes
from graphexec.scheduler.placement import (
    choose_worker,
    feasible_on,
    queue_allowance,
)

__all__ = [
    "ClientState",
    "GraphTooLargeError",
    "NodeState",
    "SchedulerState",
    "Send",
    "TaskState",
    "WorkerState",
]

Dest = tuple[Literal["client", "worker", "node"], str]


@dataclass(slots=True)
class Send:
    """Instruction: send ``msg`` to ``dest`` (``("worker", id)``, ``("client", id)``, ...)."""

    dest: Dest
    msg: dict[str, Any]


class GraphTooLargeError(ValueError):
    """An ``update-graph`` over the size limits it was checked against (nothing changed)."""


def _prefix_duration_update(old: float | None, new: float) -> float:
    return new if old is None else 0.5 * old + 0.5 * new


class SchedulerState:
    """The whole cluster as the scheduler sees it. Not thread-safe: one loop owns it."""

    def __init__(self, *, validate: bool = False) -> None:
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.nodes: dict[str, NodeState] = {}
        self.clients: dict[str, ClientState] = {}
        self.functions: dict[str, bytes] = {}
        self.durations: dict[str, float] = {}
        #: ready tasks waiting for room, one heap per resource demand
        self.queued: dict[tuple[tuple[str, float], ...], list[tuple[tuple[int, ...], TaskState]]]
        self.queued = {}
        self.unrunnable: set[TaskState] = set()
        self.generation = itertools.count()
        self.validate = validate
        self.actors = ActorTable(self)
        self._transitions: dict[tuple[str, str], Callable[[TaskState], list[Send]]] = {
            ("released", "waiting"): self._transition_released_waiting,
            ("waiting", "queued"): self._transition_waiting_queued,
            ("queued", "processing"): self._transition_queued_processing,
            ("queued", "no-worker"): self._transition_queued_no_worker,
            ("no-worker", "queued"): self._transition_no_worker_queued,
            ("processing", "memory"): self._transition_processing_memory,
            ("processing", "queued"): self._transition_processing_queued,
            ("memory", "released"): self._transition_memory_released,
        }

    # ------------------------------------------------------------------ transitions

    def _transition(self, ts: TaskState, finish: State) -> list[Send]:
        method = self._transitions.get((ts.state, finish))
        if method is None:
            raise InvalidTransition(f"{ts.key}: {ts.state} -> {finish}")
        return method(ts)

    def _transition_released_waiting(self, ts: TaskState) -> list[Send]:
        ts.state = "waiting"
        ts.waiting_on = {dep for dep in ts.dependencies if dep.state != "memory"}
        out: list[Send] = []
        for dep in list(ts.waiting_on):
            if dep.state == "erred":
                return self._fail(ts, dep.exception or {}, dep.error_origin or dep.key)
            if dep.state == "released":
                out += self._ensure_computed(dep)
        if not ts.waiting_on:
            out += self._transition(ts, "queued")
        return out

    def _transition_waiting_queued(self, ts: TaskState) -> list[Send]:
        ts.state = "queued"
        if not any(feasible_on(ts.demand, node) for node in self.nodes.values()):
            return self._transition(ts, "no-worker")
        sig = tuple(sorted(ts.demand.items()))
        heapq.heappush(self.queued.setdefault(sig, []), (ts.priority, ts))
        return []

    def _transition_queued_no_worker(self, ts: TaskState) -> list[Send]:
        ts.state = "no-worker"
        self.unrunnable.add(ts)
        return []

    def _transition_no_worker_queued(self, ts: TaskState) -> list[Send]:
        self.unrunnable.discard(ts)
        ts.state = "waiting"
        return self._transition_waiting_queued(ts)

    def _transition_queued_processing(self, ts: TaskState) -> list[Send]:
        raise InvalidTransition("queued -> processing goes through _assign")  # pragma: no cover

    def _transition_processing_memory(self, ts: TaskState) -> list[Send]:
        raise InvalidTransition("processing -> memory goes through handle_task_finished")

    def _transition_processing_queued(self, ts: TaskState) -> list[Send]:
        """Put a task back in line (its worker died, or it is retried)."""
        ws = ts.processing_on
        if ws is not None:
            self._unassign(ts, ws)
        # inputs may have been lost meanwhile: wait for (and recompute) what is missing
        ts.state = "released"
        return self._transition_released_waiting(ts)

    def _transition_memory_released(self, ts: TaskState) -> list[Send]:
        out: list[Send] = []
        ts.state = "released"
        ts.inline = None
        for ws in ts.who_has:
            ws.has_what.discard(ts)
            out.append(Send(("worker", ws.id), {"op": "free-keys", "keys": [ts.key]}))
        ts.who_has = set()
        for node in ts.store_nodes:
            node.store_keys.discard(ts)
            out.append(Send(("node", node.id), {"op": "free-keys", "keys": [ts.key]}))
        ts.store_nodes = _EMPTY
        return out

    def _add_store_copy(self, ts: TaskState, node: NodeState) -> None:
        if ts.store_nodes is _EMPTY:
            ts.store_nodes = set()
        ts.store_nodes.add(node)
        node.store_keys.add(ts)

    # ------------------------------------------------------------------ clients

    def handle_client_connected(self, client_id: str) -> list[Send]:
        self.clients.setdefault(client_id, ClientState(client_id))
        return []

    def handle_client_disconnected(self, client_id: str) -> list[Send]:
        cs = self.clients.pop(client_id, None)
        if cs is None:
            return []
        out: list[Send] = []
        for ts in list(cs.wants):
            ts.who_wants.discard(client_id)
            out += self._maybe_release(ts)
        return out + self.actors.client_disconnected(client_id) + self._schedule()

    def handle_update_graph(
        self,
        client_id: str,
        tasks: list[dict[str, Any]],
        wants: Iterable[str],
        functions: dict[str, bytes] | None = None,
        *,
        max_tasks: int | None = None,
        max_bytes: int | None = None,
    ) -> list[Send]:
        """A client submits tasks (already culled, fused and ordered) and the keys it wants.

        Each task dict has ``key``, ``payload`` (opaque to the scheduler), ``deps``,
        ``fids``, ``prefix``, ``priority``, ``demand``, ``retries``.

        The whole message is checked before anything changes, so a bad one leaves no
        trace: a malformed one raises ``ValueError``; one with more than ``max_tasks``
        tasks, or more than ``max_bytes`` bytes of payloads, keys, dependency keys and
        functions, raises :class:`GraphTooLargeError`.
        """
        if not isinstance(tasks, list):
            raise ValueError("malformed update-graph: 'tasks' must be a list")
        if not isinstance(wants, list | tuple) or not all(isinstance(k, str) for k in wants):
            raise ValueError("malformed update-graph: 'wants' must be a list of keys")
        if max_tasks is not None and len(tasks) > max_tasks:
            raise GraphTooLargeError(
                f"{len(tasks)} tasks in one update-graph, over the limit of {max_tasks}"
            )
        nbytes = update_graph_nbytes(tasks, functions)
        if max_bytes is not None and nbytes > max_bytes:
            raise GraphTooLargeError(
                f"{nbytes} bytes of tasks and functions in one update-graph, over the "
                f"limit of {max_bytes}"
            )
        if functions:
            self.functions.update(functions)
        cs = self.clients.setdefault(client_id, ClientState(client_id))
        generation = next(self.generation)
        new: list[TaskState] = []
        specs: list[dict[str, Any]] = []
        out: list[Send] = []
        for spec in tasks:
            key = spec["key"]
            ts = self.tasks.get(key)
            if ts is not None and (ts.state != "erred" or ts.is_put):
                continue  # already known (pure duplicate or resubmission)
            if ts is None:
                ts = self.tasks[key] = TaskState(key)
            ts.payload = spec["payload"]
            ts.fids = list(spec.get("fids", ()))
            ts.prefix = spec.get("prefix", key)
            ts.priority = (generation, spec.get("priority", 0))
            demand = {k: float(v) for k, v in spec.get("demand", {"CPU": 1.0}).items()}
            ts.demand = demand
            ts.cpus = demand.get("CPU", 0.0)
            ts.has_extra_demand = any(k != "CPU" and v > 0 for k, v in demand.items())
            ts.retries = spec.get("retries", 3)
            ts.exception = None
            ts.error_origin = ""
            if ts.state == "erred":
                ts.state = "released"  # resubmitted after an error: run it again
            new.append(ts)
            specs.append(spec)
        missing: list[tuple[TaskState, str]] = []
        for ts, spec in zip(new, specs, strict=False):
            for dep_key in spec.get("deps", ()):
                dep = self.tasks.get(dep_key)
                if dep is None:
                    missing.append((ts, dep_key))
                    continue
                ts.dependencies.add(dep)
                dep.dependents.add(ts)
        for key in wants:
            ts = self.tasks.get(key)
            if ts is not None:
                ts.who_wants.add(client_id)
                cs.wants.add(ts)
        for ts, dep_key in missing:
            out += self._fail(
                ts,
                _error_dict(
                    "KeyError",
                    f"input {dep_key!r} of {ts.key} was "
                    "released before the task was submitted; keep a reference to "
                    "it (or resubmit its graph)",
                ),
                ts.key,
            )
        # transitions in priority order so the most urgent work is queued first
        new.sort(key=lambda t: t.priority)
        for ts in new:
            if ts.state == "released":
                out += self._transition(ts, "waiting")
        fresh = set(new)
        for key in wants:
            ts = self.tasks.get(key)
            # new tasks report through their transitions; known ones are reported here
            if ts is not None and ts not in fresh and ts.state in ("memory", "erred"):
                out.append(self._report(ts, client_id))
        out += self._schedule()
        return out

    def handle_put(
        self,
        client_id: str,
        key: str,
        frames: list[bytes],
        nbytes: int,
        worker_id: str | None = None,
        node_id: str | None = None,
    ) -> list[Send]:
        """A value stored by a client: inline (small), on a worker, or in a node's store."""
        ts = self.tasks.get(key) or TaskState(key)
        self.tasks[key] = ts
        was_external = ts.state == "external"
        ts.is_put = True
        ts.state = "memory"
        ts.nbytes = nbytes
        out: list[Send] = []
        if was_external:
            # an actor call's result its owner published: dependents may start now
            for dep in ts.dependents:
                if dep.state == "waiting":
                    dep.waiting_on.discard(ts)
                    if not dep.waiting_on:
                        out += self._transition(dep, "queued")
        if node_id is not None and node_id in self.nodes:
            self._add_store_copy(ts, self.nodes[node_id])
        elif worker_id is None:
            ts.inline = frames
        else:
            ws = self.workers[worker_id]
            ts.who_has.add(ws)
            ws.has_what.add(ts)
        cs = self.clients.setdefault(client_id, ClientState(client_id))
        cs.wants.add(ts)
        ts.who_wants.add(client_id)
        if worker_id is not None:
            out.append(self._report(ts, client_id))  # tell the client where it lives
        if was_external:
            out += [self._report(ts, cid) for cid in ts.who_wants if cid != client_id]
            out += self._schedule()
        return out

    def handle_expect_keys(self, client_id: str, keys: Iterable[str]) -> list[Send]:
        """A client will publish these keys (actor results still running) with ``put``.

        Until then they are ``external``: tasks that depend on them wait, as on any input.
        """
        cs = self.clients.setdefault(client_id, ClientState(client_id))
        for key in keys:
            if key in self.tasks:
                continue
            ts = self.tasks[key] = TaskState(key)
            ts.state = "external"
            ts.is_put = True
            ts.who_wants.add(client_id)
            cs.wants.add(ts)
        return []

    def handle_key_failed(self, client_id: str, key: str, exception: dict[str, Any]) -> list[Send]:
        """An external key (an actor call) failed: its dependents fail with the error."""
        ts = self.tasks.get(key)
        if ts is None or ts.state != "external":
            return []
        ts.state = "queued"  # so _fail treats it as not running anywhere
        return self._fail(ts, exception, key) + self._schedule()

    def handle_want_keys(self, client_id: str, keys: Iterable[str]) -> list[Send]:
        """A client holds refs to keys it did not submit (refs passed around)."""
        cs = self.clients.setdefault(client_id, ClientState(client_id))
        out: list[Send] = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                out.append(
                    Send(
                        ("client", client_id),
                        {
                            "op": "key-erred",
                            "key": key,
                            "origin": key,
                            "exception": _error_dict(
                                "ObjectLostError",
                                f"object {key} is not known to the cluster: "
                                "it was released or never submitted",
                            ),
                        },
                    )
                )
                continue
            ts.who_wants.add(client_id)
            cs.wants.add(ts)
            if ts.state in ("memory", "erred"):
                out.append(self._report(ts, client_id))
        return out

    def handle_release_keys(self, client_id: str, keys: Iterable[str]) -> list[Send]:
        cs = self.clients.get(client_id)
        out: list[Send] = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            ts.who_wants.discard(client_id)
            if cs is not None:
                cs.wants.discard(ts)
            out += self._maybe_release(ts)
        return out

    def handle_cancel(self, keys: Iterable[str], *, force: bool = False) -> list[Send]:
        out: list[Send] = []
        error = _error_dict("TaskCancelledError", "the task was cancelled")
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state in ("memory", "erred"):
                continue
            ws = ts.processing_on
            if ws is not None:
                op = "kill-worker" if force else "cancel-task"
                if force:
                    out.append(Send(("node", ws.node.id), {"op": op, "worker": ws.id}))
                else:
                    out.append(Send(("worker", ws.id), {"op": op, "key": key}))
            out += self._fail(ts, error, key)
        return out + self._schedule()

    # ------------------------------------------------------------------ workers

    def handle_add_node(
        self,
        node_id: str,
        resources: dict[str, float],
        host: str = "127.0.0.1",
        store_address: str = "",
    ) -> list[Send]:
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeState(node_id, resources, host)
        else:
            # its workers registered first (a placeholder): the node's own word wins
            node.total = dict(resources)
            node.available = dict(resources)
            node.host = host
            for ws in node.workers.values():
                for ts in ws.processing.values():
                    for name, amount in ts.demand.items():
                        if name != "CPU" and ts.has_extra_demand:
                            node.available[name] = node.available.get(name, 0.0) - amount
        node.store_address = store_address
        node.registered = True
        # tasks no node could run may fit the newcomer
        out: list[Send] = []
        for ts in [t for t in self.unrunnable if feasible_on(t.demand, node)]:
            out += self._transition(ts, "queued")
        return out + self.actors.place_pending() + self._schedule()

    def handle_remove_node(self, node_id: str) -> list[Send]:
        node = self.nodes.pop(node_id, None)
        if node is None:
            return []
        # the node, its store and its workers went together. Take every worker out of
        # the pool before retrying anything, so that no retry (or actor restart) lands on
        # a dead sibling, costing another retry; and drop the store's copies first, so
        # that no retry is sent to read an input from the dead store.
        dead = [self.workers.pop(wid) for wid in list(node.workers) if wid in self.workers]
        out: list[Send] = []
        # objects with no other copy are lost
        for ts in list(node.store_keys):
            ts.store_nodes.discard(node)
            if not _has_copy(ts) and ts.state == "memory":
                out += self._lost(ts)
        node.store_keys.clear()
        for ws in dead:
            out += self._remove_worker(ws)
        # queued work that only this node could run now waits for a new node
        for heap in self.queued.values():
            for _, ts in heap:
                if ts.state == "queued" and not any(
                    feasible_on(ts.demand, n) for n in self.nodes.values()
                ):
                    out += self._transition(ts, "no-worker")
        return out + self._schedule()

    def handle_add_worker(
        self,
        worker_id: str,
        address: str,
        node_id: str,
        cpus: float,
        pid: int = 0,
        actor_id: str = "",
    ) -> list[Send]:
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeState(node_id, {"CPU": cpus})
        ws = WorkerState(worker_id, address, node, cpus)
        ws.pid = pid
        self.workers[worker_id] = ws
        node.workers[worker_id] = ws
        if actor_id:
            return self.actors.worker_registered(ws, actor_id)
        return self._schedule()

    def handle_remove_worker(self, worker_id: str) -> list[Send]:
        """A worker is gone: retry what it was running, recompute data only it held."""
        ws = self.workers.pop(worker_id, None)
        if ws is None:
            return []
        return self._remove_worker(ws) + self._schedule()

    def _remove_worker(self, ws: WorkerState) -> list[Send]:
        """``handle_remove_worker`` once ``ws`` left ``self.workers``; schedules nothing."""
        worker_id = ws.id
        ws.status = "closed"
        ws.node.workers.pop(worker_id, None)
        out: list[Send] = []
        if ws.actor:
            out += self.actors.worker_removed(ws)
        for ts in list(ws.processing.values()):
            if ts.retries == 0:
                self._unassign(ts, ws)
                ts.state = "queued"
                out += self._fail(
                    ts,
                    _error_dict(
                        "WorkerCrashedError",
                        f"the worker running {ts.key} ({ws.address}) died and the task has no "
                        "retries left (raise max_retries to retry more)",
                    ),
                    ts.key,
                )
            else:
                if ts.retries > 0:
                    ts.retries -= 1
                out += self._transition(ts, "queued")
        for ts in list(ws.has_what):
            ts.who_has.discard(ws)
            if not _has_copy(ts) and ts.state == "memory":
                out += self._lost(ts)
        ws.has_what.clear()
        return out

    def handle_task_finished(
        self,
        worker_id: str,
        key: str,
        run_id: int,
        nbytes: int,
        inline: list[bytes] | None,
        duration: float,
        in_store: bool = False,
    ) -> list[Send]:
        ts = self.tasks.get(key)
        ws = self.workers.get(worker_id)
        if ts is None or ws is None or ts.state != "processing" or ts.run_id != run_id:
            # stale (cancelled, retried elsewhere, forgotten): drop the worker's copy
            if ws is not None and in_store and (ts is None or ws.node not in ts.store_nodes):
                return [Send(("node", ws.node.id), {"op": "free-keys", "keys": [key]})]
            if ws is not None and (ts is None or ws not in ts.who_has):
                return [Send(("worker", worker_id), {"op": "free-keys", "keys": [key]})]
            return []
        self._unassign(ts, ws)
        ts.state = "memory"
        ts.nbytes = nbytes
        ts.inline = inline
        if in_store:
            self._add_store_copy(ts, ws.node)
        else:
            ts.who_has.add(ws)
            ws.has_what.add(ts)
        self.durations[ts.prefix] = _prefix_duration_update(self.durations.get(ts.prefix), duration)
        out = [self._report(ts, cid) for cid in ts.who_wants]
        for dep in ts.dependents:
            if dep.state == "waiting":
                dep.waiting_on.discard(ts)
                if not dep.waiting_on:
                    out += self._transition(dep, "queued")
        for dep in ts.dependencies:
            out += self._maybe_release(dep)
        out += self._maybe_release(ts)
        return out + self._schedule()

    def handle_task_erred(
        self, worker_id: str, key: str, run_id: int, exception: dict[str, Any], retryable: bool
    ) -> list[Send]:
        ts = self.tasks.get(key)
        ws = self.workers.get(worker_id)
        if ts is None or ws is None or ts.state != "processing" or ts.run_id != run_id:
            return []
        if retryable and ts.retries != 0:
            if ts.retries > 0:
                ts.retries -= 1
            return self._transition(ts, "queued") + self._schedule()
        self._unassign(ts, ws)
        ts.state = "queued"  # so _fail treats it as not running anywhere
        return self._fail(ts, exception, key) + self._schedule()

    def handle_stored_copy(self, worker_id: str, key: str) -> list[Send]:
        """A worker copied ``key`` into its node's store: one more place to read it."""
        ws = self.workers.get(worker_id)
        ts = self.tasks.get(key)
        if ws is None:
            return []
        if ts is None or ts.state != "memory":
            return [Send(("node", ws.node.id), {"op": "free-keys", "keys": [key]})]
        self._add_store_copy(ts, ws.node)
        return []

    def handle_task_blocked(self, worker_id: str, key: str, blocked: bool) -> list[Send]:
        """A running task waits in ``get``: lend (or take back) its CPU to the worker."""
        ws = self.workers.get(worker_id)
        ts = self.tasks.get(key)
        if ws is None:
            return []
        cpus = ts.cpus if ts is not None else 1.0
        ws.blocked_cpus = max(0.0, ws.blocked_cpus + (cpus if blocked else -cpus))
        return self._schedule() if blocked else []

    # ------------------------------------------------------------------ queries (queries.py)

    def explain_pending(self, keys: Iterable[str]) -> dict[str, str]:
        return queries.explain_pending(self, keys)

    def cluster_resources(self) -> dict[str, float]:
        return queries.cluster_resources(self)

    def registered_nodes(self) -> list[NodeState]:
        return queries.registered_nodes(self)

    def available_resources(self) -> dict[str, float]:
        return queries.available_resources(self)

    # ------------------------------------------------------------------ internals

    def _schedule(self) -> list[Send]:
        """Assign queued tasks to workers with room, most urgent first."""
        if not self.workers:
            return []
        out: list[Send] = self.actors.place_pending() if self.actors.pending else []
        workers = list(self.workers.values())
        for heap in self.queued.values():
            while heap:
                _, ts = heap[0]
                if ts.state != "queued":
                    heapq.heappop(heap)
                    continue
                allowance = queue_allowance(self.durations.get(ts.prefix))
                ws = choose_worker(ts, workers, allowance)
                if ws is None:
                    break
                heapq.heappop(heap)
                out.append(self._assign(ts, ws))
        return out

    def _assign(self, ts: TaskState, ws: WorkerState) -> Send:
        ts.state = "processing"
        ts.processing_on = ws
        ts.run_id += 1
        ws.processing[ts.key] = ts
        ws.assigned_cpus += min(ts.cpus, ws.cpus) if ts.cpus > ws.cpus else ts.cpus
        if ts.cpus > ws.cpus:
            self._borrow(ts, ws)
        if ts.has_extra_demand:
            avail = ws.node.available
            for name, amount in ts.demand.items():
                if name != "CPU":
                    avail[name] = avail.get(name, 0.0) - amount
        deps: dict[str, Any] = {}
        for dep in ts.dependencies:
            if dep.store_nodes:
                if ws.node in dep.store_nodes:
                    deps[dep.key] = ["store"]
                else:
                    deps[dep.key] = ["remote-store", [n.store_address for n in dep.store_nodes]]
            elif ws in dep.who_has:
                deps[dep.key] = ["local"]
            elif dep.inline is not None:
                deps[dep.key] = ["inline", dep.inline]
                dep.who_has.add(ws)
                ws.has_what.add(dep)
            else:
                deps[dep.key] = ["remote", [w.address for w in dep.who_has]]
        msg: dict[str, Any] = {
            "op": "compute",
            "key": ts.key,
            "payload": ts.payload,
            "deps": deps,
            "cpus": ts.cpus,
            "run_id": ts.run_id,
            "retryable": ts.retries != 0,
        }
        for fid in ts.fids:
            if fid not in ws.functions and fid in self.functions:
                msg.setdefault("functions", {})[fid] = self.functions[fid]
                ws.functions.add(fid)
        return Send(("worker", ws.id), msg)

    def _borrow(self, ts: TaskState, ws: WorkerState) -> None:
        need = ts.cpus - ws.cpus
        for sibling in ws.node.workers.values():
            if need <= 0:
                break
            if sibling is ws:
                continue
            spare = max(0.0, sibling.capacity - sibling.assigned_cpus)
            take = min(spare, need)
            if take > 0:
                sibling.assigned_cpus += take
                sibling.lent_cpus += take
                if ts.borrowed is _NO_BORROW:
                    ts.borrowed = []
                ts.borrowed.append((sibling, take))
                need -= take

    def _unassign(self, ts: TaskState, ws: WorkerState) -> None:
        if ws.processing.pop(ts.key, None) is None:
            return
        ws.assigned_cpus -= min(ts.cpus, ws.cpus)
        if ws.assigned_cpus < 1e-9:
            ws.assigned_cpus = 0.0
        for sibling, amount in ts.borrowed:
            sibling.assigned_cpus = max(0.0, sibling.assigned_cpus - amount)
            sibling.lent_cpus = max(0.0, sibling.lent_cpus - amount)
        ts.borrowed = _NO_BORROW
        if ts.has_extra_demand:
            avail = ws.node.available
            for name, amount in ts.demand.items():
                if name != "CPU":
                    avail[name] = avail.get(name, 0.0) + amount
        ts.processing_on = None

    def _report(self, ts: TaskState, client_id: str) -> Send:
        if ts.state == "erred":
            msg: dict[str, Any] = {
                "op": "key-erred",
                "key": ts.key,
                "exception": ts.exception,
                "origin": ts.error_origin,
            }
        else:
            msg = {
                "op": "key-in-memory",
                "key": ts.key,
                "nbytes": ts.nbytes,
                "inline": ts.inline,
                "who_has": [w.address for w in ts.who_has],
                "store_nodes": [[n.id, n.store_address] for n in ts.store_nodes],
            }
        return Send(("client", client_id), msg)

    def _fail(self, ts: TaskState, exception: dict[str, Any], origin: str) -> list[Send]:
        """Mark ``ts`` and every dependent that has not finished as erred."""
        out: list[Send] = []
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state in ("erred", "memory"):
                continue
            if t.processing_on is not None:
                self._unassign(t, t.processing_on)
            self.unrunnable.discard(t)
            t.state = "erred"
            t.exception = exception
            t.error_origin = origin
            out += [self._report(t, cid) for cid in t.who_wants]
            stack.extend(t.dependents)
            for dep in t.dependencies:
                out += self._maybe_release(dep)
        return out

    def _lost(self, ts: TaskState) -> list[Send]:
        """The only copy of ``ts`` is gone: recompute if still needed, else forget."""
        ts.state = "released"
        if ts.is_put:
            return self._fail_put_lost(ts)
        needed = ts.who_wants or any(
            d.state in ("waiting", "queued", "processing") for d in ts.dependents
        )
        if not needed:
            return self._maybe_forget(ts)
        for dep in ts.dependents:
            if dep.state == "queued":
                # it was ready with this input: back to waiting for the recomputation
                dep.state = "waiting"
                dep.waiting_on = {ts}
            elif dep.state == "waiting":
                dep.waiting_on.add(ts)
        return self._transition(ts, "waiting")

    def _fail_put_lost(self, ts: TaskState) -> list[Send]:
        ts.state = "queued"
        return self._fail(
            ts,
            _error_dict(
                "ObjectLostError",
                f"object {ts.key} was stored with put() on a worker that "
                "died; it cannot be recomputed",
            ),
            ts.key,
        )

    def _ensure_computed(self, ts: TaskState) -> list[Send]:
        """A released dependency is needed again: walk lineage to recompute it."""
        if ts.is_put:
            return self._fail_put_lost(ts)
        return self._transition(ts, "waiting")

    def _needed(self, ts: TaskState) -> bool:
        if ts.who_wants:
            return True
        return any(
            d.state in ("waiting", "queued", "processing", "no-worker") for d in ts.dependents
        )

    def _maybe_release(self, ts: TaskState) -> list[Send]:
        if ts.state == "processing" or self._needed(ts):
            return []  # a running task is released when it finishes
        out: list[Send] = []
        if ts.state == "memory":
            out += self._transition(ts, "released")
        elif ts.state in ("waiting", "queued", "no-worker", "external"):
            # nobody wants it any more and it has not started: drop it (heaps skip it)
            self.unrunnable.discard(ts)
            ts.state = "released"
            ts.waiting_on = _EMPTY
        return out + self._maybe_forget(ts)

    def _maybe_forget(self, ts: TaskState) -> list[Send]:
        if ts.who_wants or ts.dependents or ts.key not in self.tasks:
            return []
        if ts.state not in ("released", "erred"):
            return []
        del self.tasks[ts.key]
        out: list[Send] = []
        for dep in ts.dependencies:
            dep.dependents.discard(ts)
            out += self._maybe_release(dep)
        ts.dependencies = set()
        return out

    # ------------------------------------------------------------------ invariants

    def validate_state(self) -> None:
        """Check cross-references; on in tests, off in production (``queries.validate``)."""
        queries.validate(self)


def _has_copy(ts: TaskState) -> bool:
    return bool(ts.who_has or ts.store_nodes) or ts.inline is not None


def _error_dict(type_name: str, message: str) -> dict[str, Any]:
    """An error produced by the scheduler itself (no pickled exception)."""
    return {"type": type_name, "message": message, "traceback": "", "pickled": None, "function": ""}
