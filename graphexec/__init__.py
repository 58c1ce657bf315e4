"""graphexec: a distributed execution engine with Ray's API and Dask's lazy graphs.

>>> import graphexec as ray
>>> ray.init()  # doctest: +SKIP
>>> @ray.remote
... def square(x):
...     return x * x
>>> ray.get([square.remote(i) for i in range(4)])  # doctest: +SKIP
[0, 1, 4, 9]

The public names below are explicit, but loaded on first use (PEP 562): the scheduler,
node manager and worker processes import submodules of this package and must not pay
for the client API (and numpy) at start-up, which is on the path to the first result.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from graphexec import errors, exceptions

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "RuntimeContext": "graphexec.client.api",
    "available_resources": "graphexec.client.api",
    "cancel": "graphexec.client.api",
    "cluster_info": "graphexec.client.api",
    "cluster_resources": "graphexec.client.api",
    "compute": "graphexec.client.api",
    "get": "graphexec.client.api",
    "get_actor": "graphexec.client.api",
    "kill": "graphexec.client.api",
    "method": "graphexec.client.api",
    "ActorClass": "graphexec.actors.actor",
    "ActorHandle": "graphexec.actors.actor",
    "get_runtime_context": "graphexec.client.api",
    "init": "graphexec.client.api",
    "is_initialized": "graphexec.client.api",
    "nodes": "graphexec.client.api",
    "object_store_stats": "graphexec.client.api",
    "persist": "graphexec.client.api",
    "put": "graphexec.client.api",
    "remote": "graphexec.client.api",
    "shutdown": "graphexec.client.api",
    "submit": "graphexec.client.api",
    "wait": "graphexec.client.api",
    "ObjectRef": "graphexec.client.refs",
    "RemoteFunction": "graphexec.client.remote",
    "delayed": "graphexec.client.remote",
    "GetTimeoutError": "graphexec.errors",
    "TaskError": "graphexec.errors",
}

__all__ = [
    "ActorClass",
    "ActorHandle",
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
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "object_store_stats",
    "persist",
    "put",
    "remote",
    "shutdown",
    "submit",
    "wait",
]

if TYPE_CHECKING:
    from graphexec.actors.actor import ActorClass, ActorHandle
    from graphexec.client.api import (
        RuntimeContext,
        available_resources,
        cancel,
        cluster_info,
        cluster_resources,
        compute,
        get,
        get_actor,
        get_runtime_context,
        init,
        is_initialized,
        kill,
        method,
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'graphexec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next time: a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
