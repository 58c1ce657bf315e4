"""The one piece of process-global mutable state: the current client (DESIGN.md, STYLE §10).

The Ray-style facade (``graphexec.get``, ``f.remote``...) finds its client here. In the
driver it is set by ``init()``; in a worker process it is the worker's own client (for
nested tasks).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["current_client", "notify_blocked", "running_task", "set_current_client"]

_lock = threading.Lock()
_client: Any = None

#: per thread: the executor item a worker's runner thread is running, and its executor
running_task = threading.local()


def notify_blocked(blocked: bool) -> None:
    """A task about to wait in ``get`` (or back from it) lends (or takes back) its CPUs.

    Clients call this around every blocking wait; outside a worker's runner thread it
    does nothing. The executor (``worker/executor.py``) sets ``running_task``.
    """
    item = getattr(running_task, "item", None)
    executor = getattr(running_task, "executor", None)
    if item is not None and executor is not None:
        executor.set_blocked(item, blocked)


def current_client(required: bool = True) -> Any:
    """The active client; raises a clear error when ``init()`` was not called."""
    client = _client
    if client is None and required:
        raise RuntimeError(
            "graphexec is not initialized: call graphexec.init() first "
            "(or graphexec.init(address=...) to connect to a running cluster)"
        )
    return client


def set_current_client(client: Any) -> None:
    global _client
    with _lock:
        _client = client
