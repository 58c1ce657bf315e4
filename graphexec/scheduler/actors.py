"""The scheduler's actors: one record per actor and its lifecycle state machine (sans-IO).

An actor lives in a worker process of its own, started by a node manager on the
scheduler's word. Its lifecycle::

    pending --> alive --> restarting --> alive (constructor re-run)
       |          |            '-------> dead
       '--> dead  '--> dead

``pending``: placed (or waiting for a node with room) and constructing. ``alive``: the
constructor returned; callers send method calls straight to the actor's worker
(``actor-call`` on a peer connection), the scheduler is not on that path. ``restarting``:
its process died and ``max_restarts`` allows another; callers hold new calls until it is
alive again. ``dead``: for good, with a ``cause`` (an error dict) that every later call
raises as ``ActorDiedError``.

Resources (DESIGN.md §9): an actor needs a node whose totals cover its placement demand
(1 CPU unless ``num_cpus`` is given, plus GPUs and custom resources) and *holds* only
what it asked for explicitly (``num_cpus``, ``num_gpus``, custom resources) while it is
alive: those are taken from the node's workers (CPUs) and from the node's free resources
(the rest), so tasks see them as in use. An actor whose held resources are not free now
stays ``pending`` until they are; one whose demand no node has stays ``pending`` and says
so.

Every state change is pushed (``actor-info``) to the clients that watch the actor: its
creator, and every process that holds a handle to it.

Lifetime: a non-detached actor dies when the client that created it disconnects, or when
that client has dropped every handle (and sent no call still running) and no other
client holds one. Detached actors live until killed or the cluster stops.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from graphexec.errors import InvalidTransition
from graphexec.scheduler.placement import feasible_on

if TYPE_CHECKING:
    from graphexec.scheduler.entities import NodeState, WorkerState
    from graphexec.scheduler.state import SchedulerState, Send

__all__ = ["ActorRecord", "ActorStatus", "ActorTable"]

ActorStatus = Literal["pending", "alive", "restarting", "dead"]

_ALLOWED: set[tuple[str, str]] = {
    ("pending", "alive"),
    ("pending", "dead"),
    ("pending", "restarting"),
    ("alive", "restarting"),
    ("alive", "dead"),
    ("restarting", "alive"),
    ("restarting", "dead"),
    ("restarting", "restarting"),
}


class ActorRecord:
    """Everything the scheduler knows about one actor."""

    __slots__ = (
        "id", "class_name", "name", "namespace", "owner", "detached", "fid", "payload",
        "demand", "hold", "max_restarts", "restarts", "max_task_retries", "max_concurrency",
        "is_async", "status", "worker", "worker_id", "node", "incarnation", "cause",
        "watchers", "borrowed", "waiting", "owner_released", "methods", "address",
        "local_address",
    )  # fmt: skip

    def __init__(self, actor_id: str, spec: dict[str, Any], owner: str) -> None:
        self.id = actor_id
        self.class_name: str = spec.get("class_name", "Actor")
        self.name: str = spec.get("name") or ""
        self.namespace: str = spec.get("namespace") or "default"
        self.owner = owner
        self.detached = bool(spec.get("detached", False))
        self.fid: str = spec["fid"]
        self.payload: bytes = spec["payload"]
        #: what a node must have to place the actor (1 CPU unless num_cpus is given)
        self.demand: dict[str, float] = {k: float(v) for k, v in spec["demand"].items()}
        #: what it holds while alive (only what was asked for explicitly)
        self.hold: dict[str, float] = {k: float(v) for k, v in spec.get("hold", {}).items()}
        self.max_restarts = int(spec.get("max_restarts", 0))
        self.restarts = 0
        self.max_task_retries = int(spec.get("max_task_retries", 0))
        self.max_concurrency = int(spec.get("max_concurrency", 1))
        self.is_async = bool(spec.get("is_async", False))
        self.methods: dict[str, Any] = spec.get("methods", {})
        self.status: ActorStatus = "pending"
        self.worker: WorkerState | None = None
        #: where callers connect (the actor's own socket), once alive
        self.address = ""
        #: the same socket for callers on the actor's machine (a Unix socket), if any
        self.local_address = ""
        #: the worker process started for the current incarnation (until it registers)
        self.worker_id = ""
        self.node: NodeState | None = None
        self.incarnation = 0
        self.cause: dict[str, Any] | None = None
        self.watchers: set[str] = {owner}
        #: CPUs held, as (worker, amount) taken from the node's worker budgets
        self.borrowed: list[tuple[WorkerState, float]] = []
        #: why a pending actor is not placed yet ('' once placed)
        self.waiting = ""
        self.owner_released = False

    def info(self) -> dict[str, Any]:
        """The ``actor-info`` op clients receive."""
        worker = self.worker
        return {
            "op": "actor-info",
            "actor": self.id,
            "status": self.status,
            "address": self.address if self.status == "alive" else "",
            "local_address": self.local_address if self.status == "alive" else "",
            "worker": worker.id if worker is not None else "",
            "node": self.node.id if self.node is not None else "",
            "incarnation": self.incarnation,
            "cause": self.cause,
            "name": self.name,
            "namespace": self.namespace,
            "class_name": self.class_name,
            "max_task_retries": self.max_task_retries,
            "methods": self.methods,
            "is_async": self.is_async,
            "waiting": self.waiting,
        }

    def summary(self) -> dict[str, Any]:
        """One row of ``cluster_info()['actors']``."""
        return {
            "actor_id": self.id,
            "class_name": self.class_name,
            "name": self.name,
            "namespace": self.namespace,
            "state": self.status.upper(),
            "node_id": self.node.id if self.node is not None else "",
            "pid": self.worker.pid if self.worker is not None else 0,
            "restarts": self.restarts,
            "detached": self.detached,
            "waiting": self.waiting,
        }

    def __repr__(self) -> str:
        return f"<ActorRecord {self.class_name} {self.id} {self.status}>"


def _died(message: str, error_type: str = "ActorDiedError") -> dict[str, Any]:
    return {"type": error_type, "message": message, "traceback": "", "pickled": None}


class ActorTable:
    """The actors of one :class:`SchedulerState`; every method returns ``Send`` lists."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        self.actors: dict[str, ActorRecord] = {}
        #: (namespace, name) -> actor id, for live named actors
        self.names: dict[tuple[str, str], str] = {}
        #: actors waiting for a node (or for held resources to be free)
        self.pending: list[ActorRecord] = []

    # ------------------------------------------------------------------ transitions

    def _move(self, rec: ActorRecord, status: ActorStatus) -> list[Send]:
        if (rec.status, status) not in _ALLOWED:
            raise InvalidTransition(f"actor {rec.id}: {rec.status} -> {status}")
        rec.status = status
        return self._broadcast(rec)

    def _broadcast(self, rec: ActorRecord) -> list[Send]:
        from graphexec.scheduler.state import Send

        info = rec.info()
        return [Send(("client", cid), info) for cid in rec.watchers]

    # ------------------------------------------------------------------ client requests

    def create(self, client_id: str, spec: dict[str, Any]) -> tuple[dict[str, Any], list[Send]]:
        """A client creates an actor; returns the reply (``actor-info`` or ``error``)."""
        actor_id = str(spec["actor"])
        name = spec.get("name") or ""
        namespace = spec.get("namespace") or "default"
        if name:
            existing = self.names.get((namespace, name))
            if existing is not None:
                rec = self.actors[existing]
                if spec.get("get_if_exists"):
                    rec.watchers.add(client_id)
                    return rec.info(), []
                return {
                    "error": "ValueError",
                    "message": f"an actor named {name!r} already exists in namespace "
                    f"{namespace!r}; pick another name, pass get_if_exists=True, or use "
                    "graphexec.get_actor(name)",
                }, []
        if actor_id in self.actors:
            return {"error": "ValueError", "message": f"actor id {actor_id} is taken"}, []
        rec = ActorRecord(actor_id, spec, client_id)
        self.actors[actor_id] = rec
        if name:
            self.names[(namespace, name)] = actor_id
        out = self._place(rec)
        return rec.info(), out

    def lookup(self, client_id: str, name: str, namespace: str) -> dict[str, Any] | None:
        actor_id = self.names.get((namespace or "default", name))
        if actor_id is None:
            return None
        rec = self.actors[actor_id]
        rec.watchers.add(client_id)
        return rec.info()

    def watch(self, client_id: str, actor_id: str) -> list[Send]:
        from graphexec.scheduler.state import Send

        rec = self.actors.get(actor_id)
        if rec is None:
            cause = _died(f"actor {actor_id} is not known to the cluster (it ended long ago)")
            msg = {"op": "actor-info", "actor": actor_id, "status": "dead", "cause": cause}
            return [Send(("client", client_id), msg)]
        rec.watchers.add(client_id)
        return [Send(("client", client_id), rec.info())]

    def unwatch(self, client_id: str, actor_id: str) -> list[Send]:
        """A client dropped its last handle to the actor (and has no call in flight)."""
        rec = self.actors.get(actor_id)
        if rec is None:
            return []
        rec.watchers.discard(client_id)
        if client_id == rec.owner:
            rec.owner_released = True
        return self._maybe_collect(rec)

    def kill(self, actor_id: str, no_restart: bool = True) -> list[Send]:
        rec = self.actors.get(actor_id)
        if rec is None or rec.status == "dead":
            return []
        restarts_left = rec.max_restarts < 0 or rec.restarts < rec.max_restarts
        if not no_restart and rec.worker is not None and restarts_left:
            # let the process die; its removal restarts it (max_restarts permitting)
            return self._kill_process(rec)
        return self._die(rec, _died(f"the actor {rec.class_name} was killed by graphexec.kill()"))

    # ------------------------------------------------------------------ worker events

    def worker_registered(self, ws: WorkerState, actor_id: str) -> list[Send]:
        from graphexec.scheduler.state import Send

        rec = self.actors.get(actor_id)
        ws.actor = actor_id
        if rec is None or rec.status == "dead" or rec.worker_id != ws.id:
            # a process for an actor that died (or was restarted) meanwhile
            return [Send(("node", ws.node.id), {"op": "kill-worker", "worker": ws.id})]
        rec.worker = ws
        msg: dict[str, Any] = {
            "op": "actor-init",
            "actor": rec.id,
            "fid": rec.fid,
            "payload": rec.payload,
            "max_concurrency": rec.max_concurrency,
            "is_async": rec.is_async,
            "incarnation": rec.incarnation,
            "class_name": rec.class_name,
            "name": rec.name,
            "namespace": rec.namespace,
        }
        blob = self.state.functions.get(rec.fid)
        if blob is not None:
            msg["functions"] = {rec.fid: blob}
        return [Send(("worker", ws.id), msg)]

    def ready(
        self,
        ws: WorkerState,
        actor_id: str,
        incarnation: int,
        address: str,
        local_address: str = "",
    ) -> list[Send]:
        """The constructor returned; calls go to ``address`` (the actor's own socket).

        ``local_address`` reaches the same socket from the actor's machine (cheaper).
        """
        rec = self.actors.get(actor_id)
        if rec is None or rec.worker is not ws or rec.incarnation != incarnation:
            return []
        rec.address = address
        rec.local_address = local_address
        if rec.status in ("pending", "restarting"):
            return self._move(rec, "alive")
        return []

    def constructor_failed(
        self, ws: WorkerState, actor_id: str, exception: dict[str, Any]
    ) -> list[Send]:
        """``__init__`` raised: the actor is dead (no restart), the cause is that error."""
        rec = self.actors.get(actor_id)
        if rec is None or rec.worker is not ws or rec.status == "dead":
            return []
        cause = dict(exception)
        cause["constructor"] = True
        return self._die(rec, cause)

    def worker_removed(self, ws: WorkerState) -> list[Send]:
        """The actor's process is gone: restart it if ``max_restarts`` allows, else dead."""
        rec = self.actors.get(ws.actor)
        if rec is None or rec.worker is not ws:
            return []
        rec.worker = None
        rec.address = rec.local_address = ""
        self._release(rec)
        if rec.status == "dead":
            return self._maybe_collect(rec)
        if rec.max_restarts < 0 or rec.restarts < rec.max_restarts:
            rec.restarts += 1
            out = self._move(rec, "restarting")
            return out + self._place(rec)
        limit = "" if rec.max_restarts == 0 else f" after {rec.restarts} restart(s)"
        return self._die(
            rec,
            _died(
                f"the process of actor {rec.class_name} ({rec.id}, pid {ws.pid}) died "
                f"unexpectedly{limit}; set max_restarts to restart it automatically"
            ),
        )

    def client_disconnected(self, client_id: str) -> list[Send]:
        out: list[Send] = []
        for rec in list(self.actors.values()):
            rec.watchers.discard(client_id)
            if rec.owner == client_id and not rec.detached and rec.status != "dead":
                out += self._die(
                    rec,
                    _died(
                        f"the actor {rec.class_name} ended with the driver that created it "
                        "(use lifetime='detached' to keep it)"
                    ),
                )
                continue
            if rec.owner == client_id:
                rec.owner_released = True
            out += self._maybe_collect(rec)
        return out

    def place_pending(self) -> list[Send]:
        """Resources changed (a node joined, work finished): place waiting actors."""
        out: list[Send] = []
        pending, self.pending = self.pending, []
        for rec in pending:
            if rec.status in ("pending", "restarting") and rec.worker_id == "":
                out += self._place(rec)
        return out

    # ------------------------------------------------------------------ internals

    def _place(self, rec: ActorRecord) -> list[Send]:
        from graphexec.scheduler.state import Send

        nodes = self.state.registered_nodes()
        feasible = [n for n in nodes if feasible_on(rec.demand, n)]
        if not feasible:
            return self._wait(
                rec,
                f"no node has {rec.demand} (cluster resources: "
                f"{self.state.cluster_resources()}); it will start when such a node joins",
            )
        roomy = [n for n in feasible if self._fits(rec, n)]
        if not roomy:
            return self._wait(rec, f"waiting for {rec.hold} to be free on a node")
        node = min(roomy, key=lambda n: (self._actors_on(n), -n.idle_cpus()))
        self._reserve(rec, node)
        rec.node = node
        rec.waiting = ""
        rec.incarnation += 1
        rec.worker_id = f"worker-{uuid.uuid4().hex[:12]}"
        msg = {"op": "start-actor", "worker": rec.worker_id, "actor": rec.id}
        return [Send(("node", node.id), msg)]

    def _wait(self, rec: ActorRecord, why: str) -> list[Send]:
        """Not placed now: retried when resources change; watchers hear why (once)."""
        self.pending.append(rec)
        if why == rec.waiting:
            return []
        rec.waiting = why
        return self._broadcast(rec)

    def _actors_on(self, node: NodeState) -> int:
        return sum(1 for ws in node.workers.values() if ws.actor)

    @staticmethod
    def _fits(rec: ActorRecord, node: NodeState) -> bool:
        for name, amount in rec.hold.items():
            if name == "CPU":
                if node.idle_cpus() + 1e-9 < amount:
                    return False
            elif node.available.get(name, 0.0) + 1e-9 < amount:
                return False
        return True

    def _reserve(self, rec: ActorRecord, node: NodeState) -> None:
        for name, amount in rec.hold.items():
            if name == "CPU":
                need = amount
                for ws in node.workers.values():
                    if need <= 1e-9:
                        break
                    spare = max(0.0, ws.capacity - ws.assigned_cpus)
                    take = min(spare, need)
                    if take > 0:
                        ws.assigned_cpus += take
                        ws.lent_cpus += take
                        rec.borrowed.append((ws, take))
                        need -= take
            else:
                node.available[name] = node.available.get(name, 0.0) - amount

    def _release(self, rec: ActorRecord) -> None:
        for ws, amount in rec.borrowed:
            ws.assigned_cpus = max(0.0, ws.assigned_cpus - amount)
            ws.lent_cpus = max(0.0, ws.lent_cpus - amount)
        rec.borrowed = []
        node = rec.node
        if node is not None:
            for name, amount in rec.hold.items():
                if name != "CPU":
                    node.available[name] = node.available.get(name, 0.0) + amount
        rec.node = None
        rec.worker_id = ""

    def _kill_process(self, rec: ActorRecord) -> list[Send]:
        from graphexec.scheduler.state import Send

        ws = rec.worker
        if ws is None:
            return []
        return [Send(("node", ws.node.id), {"op": "kill-worker", "worker": ws.id})]

    def _die(self, rec: ActorRecord, cause: dict[str, Any]) -> list[Send]:
        rec.cause = cause
        out = self._kill_process(rec)
        if rec.worker is None:
            self._release(rec)
        # else: released when its worker's removal arrives
        if rec in self.pending:
            self.pending.remove(rec)
        if rec.name and self.names.get((rec.namespace, rec.name)) == rec.id:
            del self.names[(rec.namespace, rec.name)]
        out += self._move(rec, "dead")
        out += self._maybe_collect(rec)
        return out

    def _maybe_collect(self, rec: ActorRecord) -> list[Send]:
        """Forget a dead actor nobody watches; end an unreferenced non-detached one."""
        if rec.status == "dead":
            if not rec.watchers and rec.worker is None:
                self.actors.pop(rec.id, None)
            return []
        if (
            rec.owner_released
            and not rec.detached
            and not rec.name
            and not (rec.watchers - {rec.owner})
        ):
            return self._die(
                rec,
                _died(
                    f"the actor {rec.class_name} ended because every handle to it was "
                    "dropped (keep a handle, name it, or use lifetime='detached')"
                ),
            )
        return []

    # ------------------------------------------------------------------ queries

    def summaries(self) -> list[dict[str, Any]]:
        return [rec.summary() for rec in self.actors.values()]

    def explain(self, actor_ids: Iterable[str]) -> dict[str, str]:
        out = {}
        for actor_id in actor_ids:
            rec = self.actors.get(actor_id)
            out[actor_id] = "unknown" if rec is None else (rec.waiting or rec.status)
        return out
