"""The one piece of process-global mutable state: the current client (DESIGN.md, STYLE §10).

The Ray-style facade (``graphexec.get``, ``f.remote``...) finds its client here. In the
driver it is set by ``init()``; in a worker process it is the worker's own client (for
nested tasks).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["current_client", "set_current_client"]

_lock = threading.Lock()
_client: Any = None


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
