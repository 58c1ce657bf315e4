"""A real-process "multi-node" cluster on one machine, for chaos and fault-tolerance tests.

:class:`MultiNodeCluster` starts a scheduler and several node managers on 127.0.0.1 (each
with its own node id, CPUs, resources and object store directory), connects this process
as the driver (``graphexec.init(address=...)``), and tells the test which processes it can
kill: the node managers and their task workers (never the scheduler, an actor process or
a standby process). On exit it disconnects and stops everything it started (SIGTERM, wait,
SIGKILL), including the orphaned workers and the store directory of a node manager the
test killed, so the leak checks of ``tests/conftest.py`` pass.

>>> with MultiNodeCluster(nodes=2, num_cpus=2) as cluster:  # doctest: +SKIP
...     os.kill(cluster.worker_pids()[0], signal.SIGKILL)  # the task is retried
...     cluster.kill_node(cluster.node_ids[1])  # its objects are recomputed from lineage

It reuses :class:`graphexec.client.session.LocalCluster` (what ``init()`` starts), with
one node manager per node.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import tempfile
import time
from types import TracebackType
from typing import Any

import psutil

from graphexec.client.session import LocalCluster
from graphexec.store.paths import (
    PREFIX,
    SPILL_PREFIX,
    owner_alive,
    remove_store_dir,
    store_root,
)

__all__ = ["MultiNodeCluster", "recorded_pids", "with_children"]

MB = 1024 * 1024


class MultiNodeCluster:
    """Scheduler + ``nodes`` node managers as child processes, and the driver connected.

    ``resources`` (a dict, or one dict per node) are each node's custom resources;
    ``num_cpus`` is per node (one task worker per CPU). Use as a context manager.
    """

    def __init__(
        self,
        nodes: int = 2,
        *,
        num_cpus: float = 2,
        resources: dict[str, float] | list[dict[str, float]] | None = None,
        object_store_memory: int = 64 * MB,
        connect: bool = True,
        start_timeout: float = 60.0,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got {nodes}")
        per_node = resources if isinstance(resources, list) else [resources or {}] * nodes
        if len(per_node) != nodes:
            raise ValueError(f"resources: {len(per_node)} dicts for {nodes} nodes")
        self.node_ids = [f"node-{i}" for i in range(nodes)]
        self.num_cpus = num_cpus
        self.resources = per_node
        self.object_store_memory = object_store_memory
        self.connect = connect
        self.start_timeout = start_timeout
        self.local: LocalCluster | None = None
        self.node_procs: dict[str, Any] = {}
        self.killed: set[str] = set()
        #: workers of killed node managers: orphans that this harness reaps
        self._orphans: list[psutil.Process] = []
        self._connected = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> MultiNodeCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        try:
            first, *rest = self.node_ids
            self.local = LocalCluster.start(
                num_cpus=self.num_cpus,
                resources=self.resources[0],
                object_store_memory=self.object_store_memory,
                node_id=first,
            )
            self.node_procs[first] = self.local.procs[1]
            for node_id, resources in zip(rest, self.resources[1:], strict=True):
                self.node_procs[node_id] = self.local.add_node(
                    num_cpus=self.num_cpus,
                    resources=resources,
                    object_store_memory=self.object_store_memory,
                    node_id=node_id,
                )
            if self.connect:
                self._connect()
                self.wait_for_workers()
        except BaseException:
            self.stop()
            raise

    def _connect(self) -> None:
        import graphexec

        assert self.local is not None
        previous = os.environ.get("GRAPHEXEC_TOKEN")
        os.environ["GRAPHEXEC_TOKEN"] = self.local.token  # what init(address=...) reads
        try:
            graphexec.init(address=self.local.address)
        finally:
            if previous is None:
                del os.environ["GRAPHEXEC_TOKEN"]
            else:
                os.environ["GRAPHEXEC_TOKEN"] = previous
        self._connected = True

    def wait_for_workers(self, timeout: float | None = None) -> None:
        """Wait until every live node and all its task workers are registered."""
        import graphexec

        expected = max(1, int(self.num_cpus + 0.999))
        live = set(self.node_ids) - self.killed
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            info = graphexec.cluster_info()
            nodes = {n["node_id"]: n for n in info["nodes"]}
            if all(n in nodes and len(nodes[n]["workers"]) >= expected for n in live):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the cluster did not come up in time: {self.exited() or 'all running'}; "
                    f"registered: { {k: len(v['workers']) for k, v in nodes.items()} }"
                )
            time.sleep(0.05)

    def exited(self) -> str:
        return self.local.exited() if self.local is not None else ""

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect the driver, stop every process started, clean up killed nodes."""
        if self._connected:
            import graphexec

            self._connected = False
            graphexec.shutdown()
        if self.local is not None:
            for node_id, proc in self.node_procs.items():
                if proc.poll() is None:
                    self._orphans += self._task_workers_of(node_id, every=True)
            self.local.stop(timeout)
        self._stop_orphans(timeout)
        self._remove_dead_stores()
        self.local = None

    # ------------------------------------------------------------------ processes

    @property
    def address(self) -> str:
        assert self.local is not None, "start() the cluster first"
        return self.local.address

    @property
    def token(self) -> str:
        assert self.local is not None, "start() the cluster first"
        return self.local.token

    @property
    def scheduler_pid(self) -> int:
        assert self.local is not None, "start() the cluster first"
        return self.local.procs[0].pid

    def node_pid(self, node_id: str) -> int:
        return int(self.node_procs[node_id].pid)

    def live_nodes(self) -> list[str]:
        return [n for n in self.node_ids if n not in self.killed]

    def _task_workers_of(self, node_id: str, every: bool = False) -> list[psutil.Process]:
        """The node manager's worker processes: task workers only unless ``every``."""
        proc = self.node_procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return []
        out = []
        try:
            children = psutil.Process(proc.pid).children()
        except psutil.Error:
            return []
        for child in children:
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "graphexec.worker" not in cmdline:
                continue
            if every or ("--actor" not in cmdline and "--standby" not in cmdline):
                out.append(child)
        return out

    def worker_pids(self, node_id: str | None = None) -> list[int]:
        """Pids of the task workers (not actors, not standby processes) running now."""
        nodes = [node_id] if node_id is not None else self.live_nodes()
        return [p.pid for n in nodes for p in self._task_workers_of(n)]

    def kill_random_worker(self, rng: random.Random | None = None) -> int | None:
        """SIGKILL one random task worker; return its pid (None if there was none)."""
        pids = self.worker_pids()
        if not pids:
            return None
        pid = (rng or random).choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Kill a node manager (default SIGKILL); its workers die with it (parent-death
        signal), and ``stop()`` reaps them and removes the node's store directory."""
        proc = self.node_procs[node_id]
        self._orphans += self._task_workers_of(node_id, every=True)
        self.killed.add(node_id)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        proc.wait()

    def _stop_orphans(self, timeout: float) -> None:
        """Workers of killed node managers: wait for them to exit, kill, reap."""
        orphans, self._orphans = self._orphans, []
        if not orphans:
            return

        def alive(p: psutil.Process) -> bool:
            try:
                return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
            except psutil.Error:
                return False

        deadline = time.monotonic() + timeout
        while any(alive(p) for p in orphans) and time.monotonic() < deadline:
            time.sleep(0.02)
        for proc in orphans:
            if alive(proc):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        me = os.getpid()
        for proc in orphans:
            # adopted by this process (a subreaper, as under pytest): collect the status
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    if proc.ppid() != me:
                        break
                    if os.waitpid(proc.pid, os.WNOHANG)[0]:
                        break
                except (psutil.Error, ChildProcessError):
                    break
                time.sleep(0.01)

    def _remove_dead_stores(self) -> None:
        """Store (and spill) directories of this cluster's nodes whose owner is dead."""
        if self.local is None or not self.local.name:
            return
        name = self.local.name
        for root in dict.fromkeys((store_root(), tempfile.gettempdir())):
            for path in glob.glob(os.path.join(root, f"{PREFIX}{name}-*")):
                if os.path.isdir(path) and not owner_alive(path):
                    remove_store_dir(path)
            for path in glob.glob(os.path.join(root, f"{SPILL_PREFIX}{name}-*")):
                if os.path.isdir(path) and not owner_alive(path):
                    shutil.rmtree(path, ignore_errors=True)


def recorded_pids(home: str) -> list[int]:
    """Pids that ``graphexec start`` recorded under ``home`` (its ``GRAPHEXEC_HOME``)."""
    import json

    paths = [os.path.join(home, "head.json")]
    paths += sorted(glob.glob(os.path.join(home, "nodes", "*.json")))
    pids: list[int] = []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if "scheduler" in data:  # head.json: the scheduler and the head's node
            pids += [data["scheduler"]["pid"], data["node"]["pid"]]
        else:
            pids.append(data["pid"])
    return pids


def with_children(pids: list[int]) -> list[psutil.Process]:
    """The processes ``pids`` and all their descendants, as they are now."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs
