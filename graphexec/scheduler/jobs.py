"""Jobs: driver programs the head runs on a user's behalf (``graphexec submit``).

A job is a shell command (``python script.py ...``) started by the scheduler process on
the head machine, in its own process group, with ``GRAPHEXEC_ADDRESS`` and
``GRAPHEXEC_TOKEN`` set so that ``graphexec.init()`` inside it joins this cluster, and
the head's interpreter first on ``PATH`` (``python`` is the one graphexec runs in). Its
output (stdout and stderr together) goes to ``<log dir>/jobs/<job id>.log`` and stays
there after the job ends, so ``graphexec job logs`` works later.

States: ``RUNNING`` → ``SUCCEEDED`` (exit code 0) | ``FAILED`` (any other) |
``STOPPED`` (``graphexec job stop``: SIGTERM to the job's process group, SIGKILL after
``STOP_GRACE`` seconds). The exit of a job is noticed when someone asks (status, logs,
list) or by the scheduler's periodic ``poll``.

Only authenticated clients reach these ops (the scheduler's handshake): a job is code
the cluster's token holder asked to run, like any task.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JobManager"]

#: seconds between SIGTERM and SIGKILL when a job is stopped
STOP_GRACE = 5.0
#: most log bytes one ``job-logs`` answer carries
MAX_LOG_CHUNK = 1 << 20
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class _Job:
    id: str
    entrypoint: str
    cwd: str
    log_path: str
    proc: subprocess.Popen[bytes]
    start_time: float = field(default_factory=time.time)
    status: str = "RUNNING"
    end_time: float | None = None
    returncode: int | None = None
    stop_time: float | None = None

    def info(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "entrypoint": self.entrypoint,
            "status": self.status,
            "returncode": self.returncode,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "pid": self.proc.pid,
            "cwd": self.cwd,
            "log_path": self.log_path,
        }


class JobManager:
    """The jobs of one scheduler."""

    def __init__(self, log_dir: str | None = None) -> None:
        #: ``<log dir>/jobs``; without a log dir, a temporary one made at the first job
        self.log_dir = os.path.join(log_dir, "jobs") if log_dir else ""
        self.jobs: dict[str, _Job] = {}
        self._counter = 0

    def submit(
        self,
        entrypoint: Any,
        *,
        address: str,
        token: str,
        job_id: Any = None,
        cwd: Any = None,
        env: Any = None,
    ) -> dict[str, Any]:
        """Start ``entrypoint`` (a shell command) as a job; its info, or ``ValueError``."""
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError("a job needs an entrypoint: a shell command such as 'python x.py'")
        if job_id is None:
            self._counter += 1
            job_id = f"job-{time.strftime('%Y%m%d-%H%M%S')}-{self._counter:03d}"
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise ValueError(
                f"invalid job id {job_id!r}: use 1-64 letters, digits, '_', '.' or '-'"
            )
        if job_id in self.jobs:
            raise ValueError(f"a job with id {job_id!r} exists already; choose another id")
        if cwd is not None and (not isinstance(cwd, str) or not os.path.isdir(cwd)):
            raise ValueError(f"working directory {cwd!r} does not exist on the head machine")
        if env is not None and (
            not isinstance(env, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise ValueError("env must map variable names to strings")
        if not self.log_dir:
            self.log_dir = os.path.join(tempfile.mkdtemp(prefix="graphexec-logs-"), "jobs")
        os.makedirs(self.log_dir, exist_ok=True)
        log_path = os.path.join(self.log_dir, f"{job_id}.log")
        job_env = dict(os.environ, **(env or {}))
        job_env.update(
            GRAPHEXEC_ADDRESS=address.removeprefix("tcp://"),
            GRAPHEXEC_TOKEN=token,
            GRAPHEXEC_JOB_ID=job_id,
            # `python` in the command is the head's interpreter (the one with graphexec)
            PATH=os.pathsep.join([os.path.dirname(sys.executable), job_env.get("PATH", "")]),
        )
        workdir = cwd or os.path.expanduser("~")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                entrypoint,
                shell=True,
                cwd=workdir,
                env=job_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        job = _Job(job_id, entrypoint, workdir, log_path, proc)
        self.jobs[job_id] = job
        return job.info()

    def _get(self, job_id: Any) -> _Job:
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            known = ", ".join(sorted(self.jobs)[-5:]) or "none"
            raise ValueError(f"no job {job_id!r} on this cluster (latest: {known})")
        self._update(job)
        return job

    @staticmethod
    def _update(job: _Job) -> None:
        if job.returncode is not None:
            return
        code = job.proc.poll()
        if code is None:
            if job.stop_time is not None and time.time() - job.stop_time > STOP_GRACE:
                _signal_group(job.proc.pid, signal.SIGKILL)
            return
        job.returncode = code
        job.end_time = time.time()
        if job.stop_time is not None:
            job.status = "STOPPED"
        else:
            job.status = "SUCCEEDED" if code == 0 else "FAILED"

    def status(self, job_id: Any) -> dict[str, Any]:
        return self._get(job_id).info()

    def list(self) -> list[dict[str, Any]]:
        self.poll()
        return [job.info() for job in self.jobs.values()]

    def logs(self, job_id: Any, offset: Any = 0) -> dict[str, Any]:
        """Log bytes from ``offset`` on (at most ``MAX_LOG_CHUNK``), as text."""
        job = self._get(job_id)
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        try:
            with open(job.log_path, "rb") as f:
                f.seek(offset)
                data = f.read(MAX_LOG_CHUNK)
        except FileNotFoundError:
            data = b""
        return {
            "data": data.decode("utf-8", errors="replace"),
            "offset": offset + len(data),
            "status": job.status,
        }

    def stop(self, job_id: Any) -> dict[str, Any]:
        job = self._get(job_id)
        if job.returncode is None and job.stop_time is None:
            job.stop_time = time.time()
            _signal_group(job.proc.pid, signal.SIGTERM)
        return job.info()

    def poll(self) -> None:
        for job in self.jobs.values():
            self._update(job)

    def close(self, timeout: float = STOP_GRACE) -> None:
        """Stop every running job (the cluster is going away)."""
        running = [job for job in self.jobs.values() if job.proc.poll() is None]
        for job in running:
            job.stop_time = job.stop_time or time.time()
            _signal_group(job.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for job in running:
            try:
                job.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(job.proc.pid, signal.SIGKILL)
                job.proc.wait()
            self._update(job)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
