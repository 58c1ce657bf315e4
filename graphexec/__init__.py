"""graphexec: a distributed execution engine with Ray's API and Dask's lazy graphs.

>>> import graphexec as ray
>>> ray.init()  # doctest: +SKIP
>>> @ray.remote
... def square(x):
...     return x * x
>>> ray.get([square.remote(i) for i in range(4)])  # doctest: +SKIP
[0, 1, 4, 9]
"""

from __future__ import annotations

from graphexec import errors
from graphexec import errors as exceptions
from graphexec.client.api import (
    RuntimeContext,
    available_resources,
    cancel,
    cluster_info,
    cluster_resources,
    compute,
    get,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    object_store_stats,
    persist,
    put,
    remote,
    shutdown,
    submit,
    wait,
)
from graphexec.client.refs import ObjectRef
from graphexec.client.remote import RemoteFunction, delayed
from graphexec.errors import GetTimeoutError, TaskError

__version__ = "0.1.0"

__all__ = [
    "GetTimeoutError",
    "ObjectRef",
    "RemoteFunction",
    "RuntimeContext",
    "TaskError",
    "__version__",
    "available_resources",
    "cancel",
    "cluster_info",
    "cluster_resources",
    "compute",
    "delayed",
    "errors",
    "exceptions",
    "get",
    "get_runtime_context",
    "init",
    "is_initialized",
    "nodes",
    "object_store_stats",
    "persist",
    "put",
    "remote",
    "shutdown",
    "submit",
    "wait",
]
