"""The worker's sans-IO task state machine.

A task sent by the scheduler moves through::

    fetching -> ready -> executing -> done
        \\          \\         \\-> (cancelled: result dropped)
         '-> erred (an input could not be fetched)

``fetching`` waits for inputs held by other workers; ``ready`` is queued in the executor
(which starts it when CPUs are free); ``done`` means the result was reported and the
task is forgotten (its *data* lives on in storage until the scheduler says ``free-keys``).

Methods take events and return instructions (small tuples) that the server executes:
``("fetch", key, addresses)``, ``("execute", task)``, ``("send", op)``. Nothing here
touches sockets or threads, so it is tested by calling it.
"""

from __future__ import annotations

from typing import Any, Literal

from graphexec.errors import InvalidTransition

__all__ = ["WorkerTask", "WorkerTaskState"]

Status = Literal["fetching", "ready", "executing", "done", "erred", "cancelled"]
Instruction = tuple[Any, ...]

_ALLOWED: set[tuple[str, str]] = {
    ("fetching", "ready"),
    ("fetching", "erred"),
    ("fetching", "cancelled"),
    ("ready", "executing"),
    ("ready", "cancelled"),
    ("executing", "done"),
    ("executing", "cancelled"),
}


class WorkerTask:
    __slots__ = ("key", "msg", "status", "missing", "run_id", "cpus")

    def __init__(self, msg: dict[str, Any]) -> None:
        self.key: str = msg["key"]
        self.msg = msg
        self.status: Status = "fetching"
        self.missing: set[str] = set()
        self.run_id: int = msg.get("run_id", 0)
        self.cpus: float = msg.get("cpus", 1.0)


class WorkerTaskState:
    """Tasks this worker was given and not yet finished."""

    def __init__(self, has_data: Any) -> None:
        #: ``has_data(key) -> bool``: is the object in local storage
        self._has = has_data
        self.tasks: dict[str, WorkerTask] = {}
        #: keys being fetched -> tasks waiting for them
        self.fetching: dict[str, set[str]] = {}

    def _move(self, task: WorkerTask, status: Status) -> None:
        if (task.status, status) not in _ALLOWED:
            raise InvalidTransition(f"worker task {task.key}: {task.status} -> {status}")
        task.status = status

    def handle_compute(self, msg: dict[str, Any]) -> list[Instruction]:
        """The scheduler sends a task; its inputs are local, inline or on peers."""
        task = WorkerTask(msg)
        old = self.tasks.get(task.key)
        out: list[Instruction] = []
        if old is not None and old.status in ("executing", "ready", "fetching"):
            if old.status == "ready":
                out.append(("unqueue", old.key))
            old.status = "cancelled"  # superseded by a newer run of the same key
        self.tasks[task.key] = task
        for dep, (kind, *info) in msg.get("deps", {}).items():
            if kind == "inline":
                out.append(("store-inline", dep, info[0]))
            elif kind == "store":
                out.append(("in-store", dep))  # in this node's shared store: read directly
            elif kind == "remote-store":
                task.missing.add(dep)
                waiting = self.fetching.get(dep)
                if waiting is None:
                    self.fetching[dep] = {task.key}
                    out.append(("fetch-store", dep, info[0] if info else []))
                else:
                    waiting.add(task.key)
            elif kind == "remote" or (kind == "local" and not self._has(dep)):
                task.missing.add(dep)
                waiting = self.fetching.get(dep)
                if waiting is None:
                    self.fetching[dep] = {task.key}
                    out.append(("fetch", dep, info[0] if info else []))
                else:
                    waiting.add(task.key)
        if not task.missing:
            self._move(task, "ready")
            out.append(("execute", task))
        return out

    def handle_fetched(self, dep: str) -> list[Instruction]:
        out: list[Instruction] = []
        for key in self.fetching.pop(dep, ()):
            task = self.tasks.get(key)
            if task is None or task.status != "fetching":
                continue
            task.missing.discard(dep)
            if not task.missing:
                self._move(task, "ready")
                out.append(("execute", task))
        return out

    def handle_fetch_failed(self, dep: str, reason: str) -> list[Instruction]:
        out: list[Instruction] = []
        for key in self.fetching.pop(dep, ()):
            task = self.tasks.get(key)
            if task is None or task.status != "fetching":
                continue
            self._move(task, "erred")
            del self.tasks[key]
            out.append(
                (
                    "send",
                    {
                        "op": "task-erred",
                        "key": key,
                        "run_id": task.run_id,
                        "retryable": True,
                        "exception": {
                            "type": "ObjectLostError",
                            "pickled": None,
                            "message": f"could not fetch input {dep}: {reason}",
                            "traceback": "",
                            "function": "",
                        },
                    },
                )
            )
        return out

    def handle_started(self, key: str) -> bool:
        """The executor starts ``key``; False means it was cancelled meanwhile."""
        task = self.tasks.get(key)
        if task is None or task.status != "ready":
            return False
        self._move(task, "executing")
        return True

    def handle_done(self, task: WorkerTask, report: dict[str, Any]) -> list[Instruction]:
        """The executor finished ``task``; ``report`` is the op for the scheduler."""
        if task.status == "cancelled" or self.tasks.get(task.key) is not task:
            return [("discard", task.key)] if task.key not in self.tasks else []
        self._move(task, "done")
        del self.tasks[task.key]
        return [("send", report)]

    def handle_cancel(self, key: str) -> list[Instruction]:
        task = self.tasks.get(key)
        if task is None:
            return []
        previous = task.status
        self._move(task, "cancelled")
        del self.tasks[key]
        return [("unqueue", key)] if previous == "ready" else []

    def validate_state(self) -> None:
        for key, task in self.tasks.items():
            assert task.key == key
            assert task.status in ("fetching", "ready", "executing"), task.status
            if task.status == "fetching":
                assert task.missing
                for dep in task.missing:
                    assert key in self.fetching.get(dep, ()), (key, dep)
