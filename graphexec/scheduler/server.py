"""The scheduler server: a thin shell around :class:`SchedulerState`.

Each connection's first op says who is calling (``register-client``,
``register-worker``, ``register-node``); every later op is looked up in that role's
handler table, turned into a state-machine call, and the returned :class:`Send`
instructions are queued on per-peer :class:`BatchedSend` objects, so everything one
incoming batch causes goes out as one message per peer.

Requests that need an answer (``cluster-info``, ``explain-pending``, ``put``) carry a
``rid`` and get a ``response`` op with the same ``rid``.

Shutdown order (``close``): stop listening, tell nodes to stop, close every peer comm,
cancel the connection handlers this server owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from graphexec.comm import framing, listen
from graphexec.comm.batched import BatchedSend, split_frames
from graphexec.comm.core import Comm, Listener
from graphexec.comm.heartbeat import Silence
from graphexec.errors import CommClosedError, ProtocolError
from graphexec.scheduler.jobs import JobManager
from graphexec.scheduler.state import GraphTooLargeError, SchedulerState, Send

__all__ = ["Scheduler"]

logger = logging.getLogger("graphexec.scheduler")

Handler = Callable[[str, dict[str, Any], list[Any]], list[Send]]


def _ignore(peer: str, op: dict[str, Any], frames: list[Any]) -> list[Send]:
    return []  # ``heartbeat``: being heard is all it is for (``_silence``)


#: the first op of every connection: who is calling
_REGISTRATIONS = {"register-client": "client", "register-worker": "worker", "register-node": "node"}


class Scheduler:
    """Serve the scheduler on ``address`` (or an adopted listening socket)."""

    def __init__(
        self,
        *,
        token: str,
        address: str = "tcp://127.0.0.1:0",
        sock: socket.socket | None = None,
        validate: bool = False,
        log_dir: str | None = None,
    ) -> None:
        self.token = token
        self.state = SchedulerState(validate=validate)
        #: driver programs run on the head (``graphexec submit``)
        self.jobs = JobManager(log_dir)
        self._address = address
        self._sock = sock
        self._listener: Listener | None = None
        self.address = ""
        self._peers: dict[tuple[str, str], BatchedSend] = {}
        self._comms: set[Comm] = set()
        self.finished = asyncio.Event()
        self._closing = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self.start_time = time.time()
        self._client_handlers: dict[str, Handler] = {
            "update-graph": self.handle_update_graph,
            "release-keys": lambda cid, op, _: self.state.handle_release_keys(cid, op["keys"]),
            "want-keys": lambda cid, op, _: self.state.handle_want_keys(cid, op["keys"]),
            "put": self.handle_put,
            "cancel": lambda cid, op, _: self.state.handle_cancel(
                op["keys"], force=op.get("force", False)
            ),
            "cluster-info": self.handle_cluster_info,
            "explain-pending": self.handle_explain_pending,
            "shutdown-cluster": self.handle_shutdown_cluster,
            "expect-keys": lambda cid, op, _: self.state.handle_expect_keys(cid, op["keys"]),
            "key-failed": lambda cid, op, _: self.state.handle_key_failed(
                cid, op["key"], op["exception"]
            ),
            "create-actor": self.handle_create_actor,
            "get-actor": self.handle_get_actor,
            "watch-actor": lambda cid, op, _: self.state.actors.watch(cid, op["actor"]),
            "unwatch-actor": lambda cid, op, _: self.state.actors.unwatch(cid, op["actor"]),
            "kill-actor": lambda cid, op, _: self.state.actors.kill(
                op["actor"], bool(op.get("no_restart", True))
            ),
            "sync": self.handle_sync,
            "job-submit": self.handle_job,
            "job-status": self.handle_job,
            "job-logs": self.handle_job,
            "job-stop": self.handle_job,
            "job-list": self.handle_job,
        }
        self._worker_handlers: dict[str, Handler] = {
            "task-finished": lambda wid, op, _: self.state.handle_task_finished(
                wid,
                op["key"],
                op["run_id"],
                op["nbytes"],
                op.get("inline"),
                op.get("duration", 0.0),
                bool(op.get("in_store", False)),
            ),
            "stored-copy": lambda wid, op, _: self.state.handle_stored_copy(wid, op["key"]),
            "task-erred": lambda wid, op, _: self.state.handle_task_erred(
                wid, op["key"], op["run_id"], op["exception"], op.get("retryable", False)
            ),
            "task-blocked": lambda wid, op, _: self.state.handle_task_blocked(
                wid, op["key"], op["blocked"]
            ),
            "actor-ready": lambda wid, op, _: self.state.actors.ready(
                self.state.workers[wid],
                op["actor"],
                int(op["incarnation"]),
                op["address"],
                str(op.get("local_address") or ""),
            ),
            "actor-failed": lambda wid, op, _: self.state.actors.constructor_failed(
                self.state.workers[wid], op["actor"], op["exception"]
            ),
        }
        self._worker_handlers["heartbeat"] = _ignore
        self._node_handlers: dict[str, Handler] = {"heartbeat": _ignore}
        #: when each peer was last heard from: silent ones are dropped (``_sweep``)
        self._silence = Silence()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = await listen(
            self._address, self._handle_comm, token=self.token, sock=self._sock
        )
        self.address = self._listener.address
        self._sweeper = asyncio.ensure_future(self._sweep())
        logger.info("scheduler listening at %s", self.address)

    async def _sweep(self) -> None:
        """Drop peers silent past the heartbeat timeout (a frozen or cut-off process).

        Their connection is aborted, so the usual disconnect path runs: a worker's tasks
        are retried, a node's lost objects recomputed, a client's work released.
        """
        while not self._closing:
            await asyncio.sleep(self._silence.interval)
            for role in self._silence.overdue():
                batched = self._peers.get(role)
                self._silence.forget(role)
                if batched is not None:
                    logger.warning(
                        "no word from %s %s for %.0f s: dropping it",
                        role[0],
                        role[1],
                        self._silence.timeout,
                    )
                    batched.comm.abort()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.stop()
        if self.jobs.jobs:
            await asyncio.get_running_loop().run_in_executor(None, self.jobs.close)
        for (kind, _), batched in list(self._peers.items()):
            if kind == "node":
                with contextlib.suppress(CommClosedError):
                    batched.send({"op": "close"})
        for batched in list(self._peers.values()):
            await batched.close(timeout=1.0)
        for comm in list(self._comms):
            comm.abort()
        self.finished.set()

    # ------------------------------------------------------------------ connections

    async def _handle_comm(self, comm: Comm) -> None:
        self._comms.add(comm)
        role: tuple[str, str] | None = None
        try:
            ops, frames = await comm.read()
            first = ops[0] if isinstance(ops, list) and ops else {}
            role = self._register(comm, first)
            if role is None:
                return  # _register said why
            self._silence.heard(role)
            handlers = {
                "client": self._client_handlers,
                "worker": self._worker_handlers,
                "node": self._node_handlers,
            }[role[0]]
            pairs = split_frames(ops[1:], frames)
            while True:
                for op, op_frames in pairs:
                    self._dispatch(role, handlers, op, op_frames)
                if self.state.validate:
                    self.state.validate_state()
                ops, frames = await comm.read()
                self._silence.heard(role)
                pairs = split_frames(ops, frames)
        except CommClosedError:
            pass
        except ProtocolError as err:  # a broken message: drop this peer, nobody else
            logger.warning("dropping %s: %s", comm.peer, err)
        except Exception:
            logger.exception("error handling %s; dropping the connection", comm.peer)
        finally:
            self._comms.discard(comm)
            comm.abort()
            if role is not None:
                self._silence.forget(role)
            if role is not None and not self._closing:
                self._unregister(role)

    def _dispatch(
        self,
        role: tuple[str, str],
        handlers: dict[str, Handler],
        op: dict[str, Any],
        frames: list[Any],
    ) -> None:
        name = op.get("op") if isinstance(op, dict) else None
        handler = handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            logger.warning("%s %s sent unknown op %r", role[0], role[1], name)
            return
        try:
            self._execute(handler(role[1], op, frames))
        except (KeyError, TypeError, ValueError) as err:
            logger.warning("bad %r op from %s %s: %r", name, role[0], role[1], err)
            if "rid" in op:
                self._reply(role, op, error=f"bad {name!r} request: {err!r}")

    def _register(self, comm: Comm, op: dict[str, Any]) -> tuple[str, str] | None:
        """The connection's role, registered; None (logged) if ``op`` is not a valid
        registration. Every field is checked before the state changes, and a failure
        half-way undoes the registration, so a bad peer leaves nothing behind."""
        name = op.get("op") if isinstance(op, dict) else None
        kind = _REGISTRATIONS.get(name) if isinstance(name, str) else None
        if kind is None:
            logger.warning(
                "dropping %s: first op %r is not a registration",
                comm.peer,
                name if isinstance(op, dict) else op,
            )
            return None
        problem = _registration_problem(kind, op)
        if problem:
            logger.warning("dropping %s: malformed %r: %s", comm.peer, name, problem)
            return None
        role = (kind, op[kind])
        self._peers[role] = BatchedSend(comm)
        try:
            if kind == "client":
                self._execute(self.state.handle_client_connected(role[1]))
            elif kind == "worker":
                self._execute(
                    self.state.handle_add_worker(
                        role[1],
                        op["address"],
                        op["node"],
                        float(op.get("cpus", 1.0)),
                        op.get("pid", 0),
                        op.get("actor", ""),
                    )
                )
            else:
                self._execute(
                    self.state.handle_add_node(
                        role[1],
                        {k: float(v) for k, v in op["resources"].items()},
                        op.get("host", "127.0.0.1"),
                        op.get("store_address", ""),
                    )
                )
                self.state.nodes[role[1]].pid = op.get("pid", 0)
        except BaseException:
            self._unregister(role)
            raise
        if "rid" in op:
            self._reply(role, op, result={"scheduler": self.address})
        return role

    def _unregister(self, role: tuple[str, str]) -> None:
        batched = self._peers.pop(role, None)
        if batched is not None:
            batched.abort()
        kind, ident = role
        if kind == "client":
            self._execute(self.state.handle_client_disconnected(ident))
        elif kind == "worker":
            self._execute(self.state.handle_remove_worker(ident))
        elif kind == "node":
            self._execute(self.state.handle_remove_node(ident))

    def _execute(self, instructions: list[Send]) -> None:
        peers = self._peers
        for ins in instructions:
            batched = peers.get(ins.dest)
            if batched is None:
                continue  # the peer is gone; its disconnect handler cleans up
            with contextlib.suppress(CommClosedError):
                batched.send(ins.msg)

    def _reply(self, role: tuple[str, str], op: dict[str, Any], **body: Any) -> None:
        batched = self._peers.get(role)
        if batched is not None:
            with contextlib.suppress(CommClosedError):
                batched.send({"op": "response", "rid": op["rid"], **body})

    # ------------------------------------------------------------------ client ops

    def handle_update_graph(self, cid: str, op: dict[str, Any], _: list[Any]) -> list[Send]:
        """A graph from a client, checked in full first (a bad one changes nothing).

        Malformed: ``ValueError``, logged by ``_dispatch``. Over the limits (a client
        checks them before sending, unless its environment sets others): refused, and
        every key it wants fails with the reason, so the caller's ``get`` says why.
        """
        wants = op.get("wants", ())
        try:
            return self.state.handle_update_graph(
                cid,
                op["tasks"],
                wants,
                op.get("functions"),
                max_tasks=framing.max_graph_tasks(),
                max_bytes=framing.max_graph_bytes(),
            )
        except GraphTooLargeError as err:
            logger.warning("refused a graph from client %s: %s", cid, err)
            message = (
                f"the scheduler refused this graph: {err} (GRAPHEXEC_MAX_GRAPH_TASKS and "
                "GRAPHEXEC_MAX_GRAPH_BYTES where the scheduler runs); submit the work in "
                "smaller parts"
            )
            error = {
                "type": "GraphTooLargeError",
                "message": message,
                "traceback": "",
                "pickled": None,
                "function": "",
            }
            return [
                Send(
                    ("client", cid),
                    {"op": "key-erred", "key": key, "exception": error, "origin": key},
                )
                for key in dict.fromkeys(wants)
            ]

    def handle_put(self, cid: str, op: dict[str, Any], frames: list[Any]) -> list[Send]:
        if op.get("node"):  # written into that node's object store by the client itself
            return self.state.handle_put(cid, op["key"], [], int(op["nbytes"]), node_id=op["node"])
        nbytes = sum(len(memoryview(f).cast("B")) for f in frames)
        worker_id = None
        if nbytes > op.get("inline_limit", 100 * 1024) and self.state.workers:
            # large values live on a worker; this one has the least data
            ws = min(
                (w for w in self.state.workers.values() if not w.actor),
                key=lambda w: len(w.has_what),
                default=next(iter(self.state.workers.values())),
            )
            worker_id = ws.id
            batched = self._peers.get(("worker", ws.id))
            if batched is not None:
                batched.send({"op": "store-data", "key": op["key"]}, frames)
            frames = []
        out = self.state.handle_put(cid, op["key"], [bytes(f) for f in frames], nbytes, worker_id)
        return out

    def handle_cluster_info(self, cid: str, op: dict[str, Any], _: list[Any]) -> list[Send]:
        st = self.state
        nodes = [
            {
                "node_id": n.id,
                "host": n.host,
                "resources": n.total,
                "alive": True,
                "workers": [
                    {"worker_id": w.id, "address": w.address, "pid": w.pid}
                    for w in n.workers.values()
                ],
                "pid": n.pid,
                "store_address": n.store_address,
                "store_objects": len(n.store_keys),
            }
            for n in st.registered_nodes()
        ]
        tasks_by_state: dict[str, int] = {}
        for ts in st.tasks.values():
            tasks_by_state[ts.state] = tasks_by_state.get(ts.state, 0) + 1
        info = {
            "address": self.address,
            "pid": os.getpid(),
            "cluster_resources": st.cluster_resources(),
            "available_resources": st.available_resources(),
            "nodes": nodes,
            "tasks": tasks_by_state,
            "workers": len(st.workers),
            "clients": len(st.clients),
            "actors": st.actors.summaries(),
        }
        self._reply(("client", cid), op, result=info)
        return []

    def handle_create_actor(self, cid: str, op: dict[str, Any], _: list[Any]) -> list[Send]:
        if op.get("functions"):
            self.state.functions.update(op["functions"])
        answer, out = self.state.actors.create(cid, op)
        if "rid" in op:
            self._reply(("client", cid), op, result=answer)
        return out

    def handle_get_actor(self, cid: str, op: dict[str, Any], _: list[Any]) -> list[Send]:
        info = self.state.actors.lookup(cid, op["name"], op.get("namespace") or "default")
        self._reply(("client", cid), op, result=info)
        return []

    def handle_sync(self, cid: str, op: dict[str, Any], _: list[Any]) -> list[Send]:
        """Answer once every op sent before this one on the connection was handled."""
        self._reply(("client", cid), op, result=True)
        return []

    def handle_job(self, cid: str, op: dict[str, Any], _: list[Any]) -> list[Send]:
        """``job-*`` requests (``graphexec submit`` / ``graphexec job``): answer or error."""
        jobs = self.jobs
        name = op["op"]
        try:
            if name == "job-submit":
                result: Any = jobs.submit(
                    op.get("entrypoint"),
                    address=self.address,
                    token=self.token,
                    job_id=op.get("job_id"),
                    cwd=op.get("cwd"),
                    env=op.get("env"),
                )
            elif name == "job-status":
                result = jobs.status(op.get("job_id"))
            elif name == "job-logs":
                result = jobs.logs(op.get("job_id"), op.get("offset", 0))
            elif name == "job-stop":
                result = jobs.stop(op.get("job_id"))
            else:
                result = jobs.list()
        except (ValueError, OSError) as err:
            self._reply(("client", cid), op, error=str(err))
            return []
        self._reply(("client", cid), op, result=result)
        return []

    def handle_explain_pending(self, cid: str, op: dict[str, Any], _: list[Any]) -> list[Send]:
        self._reply(("client", cid), op, result=self.state.explain_pending(op["keys"]))
        return []

    def handle_shutdown_cluster(self, cid: str, op: dict[str, Any], _: list[Any]) -> list[Send]:
        self._reply(("client", cid), op, result=True)
        if self._shutdown_task is None:  # owned: awaited by whoever awaits `finished`
            self._shutdown_task = asyncio.ensure_future(self._close_soon())
        return []

    async def _close_soon(self) -> None:
        await asyncio.sleep(0.01)  # let the reply go out first
        await self.close()


def _registration_problem(kind: str, op: dict[str, Any]) -> str:
    """What is wrong with a ``register-<kind>`` op ('' if nothing).

    >>> _registration_problem("node", {"node": "n", "resources": {"CPU": "2"}})
    "'resources' must map names to finite numbers >= 0"
    """
    if not isinstance(op.get(kind), str) or not op[kind]:
        return f"{kind!r} must be a non-empty string"
    names = {
        "client": (),
        "worker": ("address", "node", "actor"),
        "node": ("host", "store_address"),
    }[kind]
    for name in names:
        if not isinstance(op.get(name, ""), str):
            return f"{name!r} must be a string"
    if kind == "worker" and not (op.get("address") and op.get("node")):
        return "'address' and 'node' are required"
    pid = op.get("pid", 0)
    if not isinstance(pid, int) or isinstance(pid, bool):
        return "'pid' must be an integer"
    if kind == "worker" and not _is_amount(op.get("cpus", 1.0)):
        return "'cpus' must be a finite number >= 0"
    if kind == "node":
        resources = op.get("resources")
        if not isinstance(resources, dict) or not all(
            isinstance(k, str) and _is_amount(v) for k, v in resources.items()
        ):
            return "'resources' must map names to finite numbers >= 0"
    return ""


def _is_amount(value: Any) -> bool:
    """A finite number >= 0 (not a bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
