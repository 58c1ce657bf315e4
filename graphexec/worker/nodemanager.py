"""The node manager: one per machine; starts, supervises and restarts worker processes.

It registers the node's resources with the scheduler (``CPU``, ``GPU``, ``memory``,
``node:<ip>`` and custom resources), starts one worker process per CPU slot, restarts a
worker that dies, kills one on the scheduler's ``kill-worker`` (``cancel(force=True)``),
and on ``close``, scheduler loss, SIGTERM or its owner's death stops every worker it
started before exiting.

Workers are started with ``subprocess`` (not fork) so that each is a clean interpreter;
all of them start at once, in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import psutil

from graphexec.comm import connect, listen
from graphexec.comm.batched import BatchedSend
from graphexec.comm.core import Comm, Listener
from graphexec.comm.heartbeat import send_heartbeats
from graphexec.errors import CommClosedError

if TYPE_CHECKING:
    from graphexec.store.node import NodeStore

#: share of the machine's RAM an object store takes when no size is given (as in Ray)
DEFAULT_STORE_FRACTION = 0.3

__all__ = ["NodeManager", "node_resources"]

logger = logging.getLogger("graphexec.nodemanager")

RESTART_DELAY = 0.2
#: booted worker processes kept waiting to become actors (after the first actor)
STANDBY_ACTOR_WORKERS = 2


def node_resources(
    num_cpus: float | None,
    num_gpus: float | None,
    resources: dict[str, float] | None,
    host: str = "127.0.0.1",
    memory: float | None = None,
) -> dict[str, float]:
    """The resources a node reports, Ray-style names.

    >>> node_resources(2, None, {"disk": 1}, memory=1e9)["CPU"]
    2.0
    """
    out: dict[str, float] = {
        "CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
        "memory": float(memory if memory is not None else psutil.virtual_memory().total * 0.7),
        f"node:{host}": 1.0,
    }
    if num_gpus:
        out["GPU"] = float(num_gpus)
    for key, value in (resources or {}).items():
        out[key] = float(value)
    return out


class NodeManager:
    def __init__(
        self,
        scheduler_address: str,
        *,
        token: str,
        resources: dict[str, float],
        num_workers: int | None = None,
        node_id: str | None = None,
        host: str = "127.0.0.1",
        cluster: str = "",
        object_store_memory: int | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.token = token
        self.resources = resources
        cpus = resources.get("CPU", 1.0)
        self.num_workers = num_workers if num_workers is not None else max(1, int(cpus + 0.999))
        self.worker_cpus = cpus / self.num_workers if self.num_workers else 0.0
        self.id = node_id or f"node-{uuid.uuid4().hex[:12]}"
        self.host = host
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        #: actor processes: started on the scheduler's word, never restarted here (the
        #: scheduler decides restarts, per max_restarts)
        self.actor_processes: dict[str, subprocess.Popen[bytes]] = {}
        #: booted, imported processes waiting on stdin for an actor to host: an actor
        #: starts in milliseconds instead of an interpreter start-up
        self.standby: list[subprocess.Popen[bytes]] = []
        self._comm: Comm | None = None
        self._batched: BatchedSend | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        self.finished = asyncio.Event()
        self.cluster = cluster or hashlib.sha1(scheduler_address.encode()).hexdigest()[:10]
        self.store_capacity = object_store_memory or int(
            psutil.virtual_memory().total * DEFAULT_STORE_FRACTION
        )
        if self.store_capacity <= 0:
            raise ValueError(f"object_store_memory must be positive, got {self.store_capacity}")
        self.resources["object_store_memory"] = float(self.store_capacity)
        self.store: NodeStore | None = None
        self._store_listener: Listener | None = None
        # bound now, served once the store is open: workers can be given its address
        # and start at once, their connections waiting in the backlog
        self._store_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._store_sock.bind((host, 0))
        self._store_sock.listen(128)
        self.store_address = f"tcp://{host}:{self._store_sock.getsockname()[1]}"

    async def start(self) -> None:
        # workers first, then the scheduler: both before the store (and its numpy import),
        # which only large objects need; store clients wait in the pre-bound backlog
        for _ in range(self.num_workers):
            self._start_worker()
        self._comm = await connect(self.scheduler_address, token=self.token)
        self._batched = BatchedSend(self._comm)
        self._batched.send(
            {
                "op": "register-node",
                "node": self.id,
                "resources": self.resources,
                "host": self.host,
                "pid": os.getpid(),
                "store_address": self.store_address,
            }
        )
        from graphexec.store.node import NodeStore

        self.store = NodeStore(self.cluster, self.id, self.store_capacity)
        self.store.open()
        self.store.address = self.store_address
        self._store_listener = await listen(
            self.store_address,
            self.store.server.handle_comm,
            token=self.token,
            sock=self._store_sock,
        )
        self._reader = asyncio.ensure_future(self._read())
        self._monitor = asyncio.ensure_future(self._supervise())
        self._heartbeat = asyncio.ensure_future(send_heartbeats(self._batched))

    def _start_actor(self, worker_id: str, actor_id: str) -> None:
        """Hand the actor to a standby process if one is ready, else start one."""
        while self.standby:
            proc = self.standby.pop(0)
            if proc.poll() is not None or proc.stdin is None:
                continue
            try:
                line = json.dumps({"worker": worker_id, "actor": actor_id}) + "\n"
                proc.stdin.write(line.encode())
                proc.stdin.close()
            except OSError:
                continue
            self.actor_processes[worker_id] = proc
            break
        else:
            self._start_worker(worker_id, actor_id=actor_id)
        while len(self.standby) < STANDBY_ACTOR_WORKERS and not self._closing:
            self._start_worker(standby=True)

    def _start_worker(
        self, worker_id: str | None = None, actor_id: str = "", standby: bool = False
    ) -> None:
        worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        cmd = [
            sys.executable,
            "-m",
            "graphexec.worker",
            "--scheduler",
            self.scheduler_address,
            "--node",
            self.id,
            "--cpus",
            "0" if actor_id or standby else str(self.worker_cpus),
            "--worker-id",
            worker_id,
            "--owner-pid",
            str(os.getpid()),
            "--host",
            self.host,
            "--store",
            self.store_address,
        ]
        if actor_id:
            cmd += ["--actor", actor_id]
        if standby:
            cmd += ["--standby"]
        env = dict(os.environ, GRAPHEXEC_TOKEN=self.token)
        stdin = subprocess.PIPE if standby else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, env=env, stdin=stdin)
        if standby:
            self.standby.append(proc)
        else:
            (self.actor_processes if actor_id else self.processes)[worker_id] = proc

    async def _supervise(self) -> None:
        while not self._closing:
            await asyncio.sleep(RESTART_DELAY)
            for worker_id, proc in list(self.processes.items()):
                if proc.poll() is not None and not self._closing:
                    logger.warning(
                        "worker %s exited with %s; restarting", worker_id, proc.returncode
                    )
                    del self.processes[worker_id]
                    self._start_worker()
            for worker_id, proc in list(self.actor_processes.items()):
                if proc.poll() is not None:  # the scheduler restarts actors, not us
                    del self.actor_processes[worker_id]
            self.standby = [p for p in self.standby if p.poll() is None]

    async def _read(self) -> None:
        assert self._comm is not None
        try:
            while True:
                ops, _ = await self._comm.read()
                for op in ops:
                    self._handle(op)
        except CommClosedError:
            if not self._closing:
                logger.info("node %s: scheduler connection closed", self.id)
        finally:
            self.finished.set()

    def _handle(self, op: dict[str, Any]) -> None:
        name = op.get("op")
        if name == "start-actor":
            self._start_actor(str(op["worker"]), str(op["actor"]))
        elif name == "kill-worker":
            worker_id = op.get("worker", "")
            proc = self.processes.get(worker_id) or self.actor_processes.get(worker_id)
            if proc is not None and proc.poll() is None:
                proc.kill()
        elif name == "free-keys":
            for key in op.get("keys", ()):
                if self.store is not None:
                    self.store.free(key)
        elif name == "close":
            self.finished.set()
        else:
            logger.warning("node %s: unknown op %r", self.id, name)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        for task in (self._monitor, self._reader, self._heartbeat):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for proc in self.standby:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # EOF: a standby process exits
        await stop_processes(
            [*self.processes.values(), *self.actor_processes.values(), *self.standby]
        )
        if self._store_listener is not None:
            self._store_listener.stop()
        else:
            self._store_sock.close()
        if self.store is not None:
            self.store.close()  # after the workers: nothing maps the arena any more
        if self._batched is not None:
            self._batched.abort()
        if self._comm is not None:
            self._comm.abort()
        self.finished.set()


async def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 3.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL what is left; reap all."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for proc in procs:
        while proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    from graphexec._process import configure_logging, die_with_parent, run_server

    parser = argparse.ArgumentParser(prog="python -m graphexec.worker.nodemanager")
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--num-cpus", type=float, default=None)
    parser.add_argument("--num-gpus", type=float, default=None)
    parser.add_argument("--resources", default="{}", help="JSON dict of custom resources")
    parser.add_argument("--memory", type=float, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--owner-pid", type=int, default=None)
    parser.add_argument("--object-store-memory", type=int, default=None)
    parser.add_argument("--cluster", default="", help="cluster name (store directory names)")
    parser.add_argument("--node-id", default=None)
    args = parser.parse_args(argv)
    if args.owner_pid:
        die_with_parent(args.owner_pid)
    configure_logging("nodemanager")
    token = os.environ.get("GRAPHEXEC_TOKEN", "")
    resources = node_resources(
        args.num_cpus, args.num_gpus, json.loads(args.resources), args.host, args.memory
    )
    manager = NodeManager(
        args.scheduler,
        token=token,
        resources=resources,
        host=args.host,
        cluster=args.cluster,
        node_id=args.node_id,
        object_store_memory=args.object_store_memory,
    )
    run_server(manager.start, manager.close, manager.finished.wait, owner_pid=args.owner_pid)


if __name__ == "__main__":
    main()
