"""Task payloads: graph nodes pickled with their functions sent by id.

A remote function is pickled once (cloudpickle) and registered under a function id; a
task payload then pickles the graph node (``Task``, ``Fused``, ``DataNode``) as plain
tuples with the function replaced by its id (the C pickler does the rest; cloudpickle is
the fallback for lambdas in arguments), so a 10,000-task graph of one
function carries the function's bytes once, and a fused chain of 2,000 calls is one
small payload.

>>> from graphexec.graph.task import Task, TaskRef
>>> registry = FunctionRegistry()
>>> fid = registry.register(len)
>>> payload = dumps_task(Task("t", len, (TaskRef("x"),)), registry)
>>> node = loads_task(payload, {fid: len}.__getitem__)
>>> node.run({"x": "abc"})
3
"""

from __future__ import annotations

import hashlib
import pickle
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

from graphexec.graph.options import DEFAULT_OPTIONS
from graphexec.graph.task import DataNode, Fused, Task
from graphexec.protocol.serialize import needs_by_value

__all__ = ["FunctionRegistry", "dumps_task", "loads_task"]


class FunctionRegistry:
    """Maps functions to stable ids and keeps their pickled bytes (client side)."""

    def __init__(self) -> None:
        self._ids: dict[int, str] = {}
        self._refs: dict[int, Any] = {}
        self.blobs: dict[str, bytes] = {}

    def register(self, func: Callable[..., Any]) -> str:
        """Return ``func``'s id, pickling it the first time it is seen."""
        fid = self._ids.get(id(func))
        if fid is not None:
            return fid
        blob = cloudpickle.dumps(func, protocol=5)
        fid = hashlib.sha1(blob).hexdigest()[:24]
        self._ids[id(func)] = fid
        self.blobs[fid] = blob
        try:
            self._refs[id(func)] = weakref.ref(func, self._forget(id(func)))
        except TypeError:  # builtins and some callables cannot be weakly referenced
            self._refs[id(func)] = func
        return fid

    def _forget(self, ident: int) -> Callable[[Any], None]:
        def forget(_: Any) -> None:
            self._ids.pop(ident, None)
            self._refs.pop(ident, None)

        return forget

    def lookup(self, func: Any) -> str | None:
        try:
            return self._ids.get(id(func))
        except TypeError:
            return None


def _encode(node: Any, registry: FunctionRegistry) -> tuple[Any, ...]:
    if isinstance(node, Task):
        fid = registry.lookup(node.func)
        func: Any = fid if fid is not None else node.func
        options = None if node.options == DEFAULT_OPTIONS else node.options
        return ("t", node.key, fid is not None, func, node.args, node.kwargs, node.resolve, options)
    if isinstance(node, Fused):
        return ("f", tuple(_encode(n, registry) for n in node.nodes))
    if isinstance(node, DataNode):
        return ("d", node.key, node.value)
    raise TypeError(f"not a graph node: {node!r}")


def _decode(data: tuple[Any, ...], load_function: Callable[[str], Any]) -> Any:
    kind = data[0]
    if kind == "t":
        _, key, by_id, func, args, kwargs, resolve, options = data
        if by_id:
            func = load_function(func)
        return Task(
            key,
            func,
            args,
            kwargs,
            resolve=resolve,
            options=options if options is not None else DEFAULT_OPTIONS,
        )
    if kind == "f":
        return Fused(_decode(n, load_function) for n in data[1])
    if kind == "d":
        return DataNode(data[1], data[2])
    raise ValueError(f"unknown task payload kind {kind!r}")


def dumps_task(node: Any, registry: FunctionRegistry) -> bytes:
    """Pickle a graph node, replacing registered functions by their ids."""
    encoded = _encode(node, registry)
    data: bytes
    try:
        data = pickle.dumps(encoded, protocol=5)
        if not needs_by_value(data):
            return data
    except Exception:  # not picklable by reference: cloudpickle pickles by value
        pass
    try:
        data = cloudpickle.dumps(encoded, protocol=5)
        return data
    except Exception as err:  # pickling user objects can raise anything
        raise TypeError(
            f"cannot serialize the arguments of task {getattr(node, 'key', node)!r}: "
            f"{err}. Pass picklable values, or create the object inside the task."
        ) from err


def loads_task(data: bytes, load_function: Callable[[str], Any]) -> Any:
    """Unpickle a payload made by :func:`dumps_task`; ``load_function(fid)`` gives functions."""
    return _decode(pickle.loads(data), load_function)
