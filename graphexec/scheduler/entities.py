"""The scheduler's records: one object per task, worker, node and client.

Plain slotted data, mutated only by :class:`~graphexec.scheduler.state.SchedulerState`
(which owns the transitions and the invariants); placement reads them.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["ClientState", "NodeState", "State", "TaskState", "WorkerState"]

State = Literal[
    "released", "waiting", "queued", "no-worker", "processing", "memory", "erred", "external"
]


class TaskState:
    """Everything the scheduler knows about one key."""

    __slots__ = (
        "key", "state", "payload", "fids", "prefix", "priority", "demand", "cpus",
        "has_extra_demand", "dependencies", "dependents", "waiting_on", "who_wants",
        "who_has", "processing_on", "nbytes", "inline", "exception", "error_origin",
        "retries", "run_id", "borrowed", "is_put", "store_nodes",
    )  # fmt: skip

    def __init__(self, key: str) -> None:
        self.key = key
        self.state: State = "released"
        self.payload: bytes = b""
        self.fids: list[str] = []
        self.prefix = key
        self.priority: tuple[int, ...] = ()
        self.demand: dict[str, float] = {"CPU": 1.0}
        self.cpus = 1.0
        self.has_extra_demand = False
        self.dependencies: set[TaskState] = set()
        self.dependents: set[TaskState] = set()
        self.waiting_on: set[TaskState] = _EMPTY
        self.who_wants: set[str] = set()
        self.who_has: set[WorkerState] = set()
        self.processing_on: WorkerState | None = None
        self.nbytes = 0
        self.inline: list[bytes] | None = None
        self.exception: dict[str, Any] | None = None
        self.error_origin = ""
        self.retries = 3
        self.run_id = 0
        self.borrowed: list[tuple[WorkerState, float]] = _NO_BORROW
        self.is_put = False
        #: nodes whose object store holds this key (large objects; survive their worker)
        self.store_nodes: set[NodeState] = _EMPTY

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"

    def __lt__(self, other: TaskState) -> bool:  # heap tie-break
        return self.key < other.key


_EMPTY: set[Any] = set()  # shared, never mutated: replaced by a fresh set when filled
_NO_BORROW: list[Any] = []


class WorkerState:
    """A worker process: its CPU budget, the tasks sent to it, the data it holds."""

    __slots__ = (
        "id", "address", "node", "cpus", "blocked_cpus", "status", "processing",
        "assigned_cpus", "lent_cpus", "has_what", "functions", "pid", "actor",
    )  # fmt: skip

    def __init__(self, worker_id: str, address: str, node: NodeState, cpus: float) -> None:
        self.id = worker_id
        self.address = address
        self.node = node
        self.cpus = cpus
        self.blocked_cpus = 0.0
        self.status: Literal["running", "closed"] = "running"
        self.processing: dict[str, TaskState] = {}
        self.assigned_cpus = 0.0
        #: CPUs lent to a multi-CPU task running on a sibling (included in assigned_cpus)
        self.lent_cpus = 0.0
        self.has_what: set[TaskState] = set()
        self.functions: set[str] = set()
        self.pid = 0
        #: the actor this worker process runs ('' for a task worker)
        self.actor = ""

    @property
    def capacity(self) -> float:
        return self.cpus + self.blocked_cpus

    def __repr__(self) -> str:
        return f"<WorkerState {self.id} {self.address}>"


class NodeState:
    """A machine (one node manager): total and currently free resources."""

    __slots__ = (
        "id", "address", "total", "available", "workers", "host", "pid", "store_address",
        "store_keys", "registered",
    )  # fmt: skip

    def __init__(self, node_id: str, total: dict[str, float], host: str = "127.0.0.1") -> None:
        self.id = node_id
        self.address = ""
        self.total = dict(total)
        self.available = dict(total)
        self.workers: dict[str, WorkerState] = {}
        self.host = host
        self.pid = 0
        #: the node manager's store service (empty when the node has no store)
        self.store_address = ""
        self.store_keys: set[TaskState] = set()
        #: False while only its workers have registered (a placeholder)
        self.registered = False

    def idle_cpus(self) -> float:
        return sum(max(0.0, w.capacity - w.assigned_cpus) for w in self.workers.values())


class ClientState:
    __slots__ = ("id", "wants")

    def __init__(self, client_id: str) -> None:
        self.id = client_id
        self.wants: set[TaskState] = set()
