"""Ray's ``ray.util`` helpers built on the public API: ``ActorPool`` and ``Queue``.

``from graphexec.util import ActorPool, Queue`` works as ``from ray.util import
ActorPool`` / ``from ray.util.queue import Queue`` do. The names are loaded on first use
(PEP 562), like the top-level package's, so importing ``graphexec.util`` costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> module that defines it
_EXPORTS = {
    "ActorPool": "graphexec.actors.pool",
    "Queue": "graphexec.actors.queue",
}

__all__ = ["ActorPool", "Queue"]

if TYPE_CHECKING:
    from graphexec.actors.pool import ActorPool
    from graphexec.actors.queue import Queue


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'graphexec.util' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next time: a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "queue"})
