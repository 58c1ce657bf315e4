"""The files that describe clusters started on this machine by ``graphexec start``.

The directory is ``$GRAPHEXEC_HOME``, else ``/tmp/graphexec-<uid>`` (mode 0700)::

    head.json          the head this machine started: address, pids, log dir, when
    token              the head's cluster token, mode 0600 (owner only)
    nodes/<id>.json    node managers this machine joined to a cluster (pid, address)
    logs/              scheduler.log, node-<id>.log, jobs/<job id>.log

``graphexec stop`` stops the processes these files name (and only those) and removes the
files. ``init(address="auto")`` reads ``head.json`` when ``GRAPHEXEC_ADDRESS`` is not set;
a client on this machine finds the token in ``token`` when ``GRAPHEXEC_TOKEN`` is not
set and the address is this machine's head.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

__all__ = [
    "cluster_dir",
    "local_head",
    "pid_alive",
    "read_token",
    "use_head_tls",
    "write_json",
    "write_token",
]


def cluster_dir(create: bool = False) -> str:
    """The directory of this machine's cluster files (made, owner-only, if ``create``)."""
    path = os.environ.get("GRAPHEXEC_HOME") or os.path.join(
        tempfile.gettempdir(), f"graphexec-{os.getuid()}"
    )
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(path, "nodes"), mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(path, "logs"), mode=0o700, exist_ok=True)
    return path


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_token(path: str, token: str) -> None:
    """The token file: created with mode 0600 before anything is written to it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def read_token(path: str) -> str:
    """The token in ``path``; a clear error if the file is missing or readable by others."""
    try:
        st = os.stat(path)
        with open(path) as f:
            token = f.read().strip()
    except OSError as err:
        raise ValueError(f"cannot read the cluster token from {path}: {err}") from err
    if st.st_mode & 0o077:
        raise ValueError(
            f"the token file {path} is readable by other users (mode "
            f"{oct(st.st_mode & 0o777)}): run `chmod 600 {path}`"
        )
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_head() -> dict[str, Any] | None:
    """This machine's running head (``head.json`` with a live scheduler), or None."""
    head = read_json(os.path.join(cluster_dir(), "head.json"))
    if head is None or not pid_alive(head.get("scheduler_pid")):
        return None
    return head


def token_for(address: str) -> str:
    """The token of the head at ``address`` when this machine started it, else ''."""
    head = local_head()
    if head is None or _norm(head.get("address", "")) != _norm(address):
        return ""
    return read_token(os.path.join(cluster_dir(), "token"))


def _norm(address: str) -> str:
    address = address.removeprefix("tcp://")
    host, _, port = address.rpartition(":")
    if host in ("localhost", "0.0.0.0", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


def use_head_tls(head: dict[str, Any]) -> None:
    """Connect to this machine's head with the TLS settings it was started with, unless
    ``GRAPHEXEC_TLS_*`` are set already."""
    tls = head.get("tls") or {}
    if isinstance(tls, dict) and tls and not os.environ.get("GRAPHEXEC_TLS_CERT"):
        os.environ.update({str(k): str(v) for k, v in tls.items()})
