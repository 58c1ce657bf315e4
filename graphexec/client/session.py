"""Starting and stopping a local cluster, and connecting the driver's client.

``LocalCluster.start`` launches the scheduler and one node manager as child processes
*in parallel*: the driver binds the scheduler's port itself and hands the listening
socket to the scheduler process, so the node manager and the client can connect at once
(their connections wait in the socket's backlog while the scheduler imports). The node
manager starts its workers in parallel too. That is what keeps ``init()`` to first
result well under a second.

Shutdown order: the client disconnects; the node manager is asked to stop (it stops its
workers); then the scheduler; anything that does not exit in time is killed. Every
server process also exits when the driver dies (``graphexec/_process.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Any

__all__ = ["LocalCluster"]


class LocalCluster:
    """Scheduler + one node manager (more with ``add_node``) as children of this process."""

    def __init__(
        self,
        address: str,
        token: str,
        procs: list[subprocess.Popen[bytes]],
        *,
        name: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        self.address = address
        self.token = token
        self.procs = procs
        #: cluster name: the node managers' store directories are named after it
        self.name = name
        self.host = host

    @classmethod
    def start(
        cls,
        *,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        memory: float | None = None,
        object_store_memory: int | None = None,
        host: str = "127.0.0.1",
        validate: bool = False,
        node_id: str | None = None,
    ) -> LocalCluster:
        token = secrets.token_hex(32)
        cluster = secrets.token_hex(4)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(1024)
        port = sock.getsockname()[1]
        address = f"tcp://{host}:{port}"
        env = dict(os.environ, GRAPHEXEC_TOKEN=token)
        owner = str(os.getpid())
        common: dict[str, Any] = {
            "env": env,
            "stdin": subprocess.DEVNULL,
            "start_new_session": True,
        }
        procs: list[subprocess.Popen[bytes]] = []
        try:
            sched_cmd = [
                sys.executable,
                "-m",
                "graphexec.scheduler",
                "--fd",
                str(sock.fileno()),
                "--owner-pid",
                owner,
            ]
            if validate:
                sched_cmd.append("--validate")
            procs.append(subprocess.Popen(sched_cmd, pass_fds=(sock.fileno(),), **common))
            local = cls(address, token, procs, name=cluster, host=host)
            local.add_node(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources=resources,
                memory=memory,
                object_store_memory=object_store_memory,
                node_id=node_id,
            )
        except BaseException:
            cls(address, token, procs).stop()
            raise
        finally:
            sock.close()
        return local

    def add_node(
        self,
        *,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        memory: float | None = None,
        object_store_memory: int | None = None,
        node_id: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one more node manager, a child of this process; return its process.

        Several node managers on one machine each get their own store directory (named
        after the cluster and the node id) and their own workers: a "multi-node" cluster
        for tests (``graphexec/testing/procs.py``).
        """
        node_cmd = [
            sys.executable,
            "-m",
            "graphexec.worker.nodemanager",
            "--scheduler",
            self.address,
            "--owner-pid",
            str(os.getpid()),
            "--host",
            self.host,
            "--resources",
            json.dumps(resources or {}),
        ]
        if num_cpus is not None:
            node_cmd += ["--num-cpus", str(num_cpus)]
        if num_gpus is not None:
            node_cmd += ["--num-gpus", str(num_gpus)]
        if memory is not None:
            node_cmd += ["--memory", str(memory)]
        if object_store_memory is not None:
            node_cmd += ["--object-store-memory", str(int(object_store_memory))]
        if node_id is not None:
            node_cmd += ["--node-id", node_id]
        node_cmd += ["--cluster", self.name]
        proc = subprocess.Popen(
            node_cmd,
            env=dict(os.environ, GRAPHEXEC_TOKEN=self.token),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def exited(self) -> str:
        """Which of the cluster's processes already exited, in words ('' if none)."""
        names = ["scheduler"] + [
            "node manager" if len(self.procs) == 2 else f"node manager {i}"
            for i in range(1, len(self.procs))
        ]
        return ", ".join(
            f"the {name} exited with code {proc.returncode}"
            for name, proc in zip(names, self.procs, strict=False)
            if proc.poll() is not None
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Node managers first (each stops its workers), then the scheduler."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
