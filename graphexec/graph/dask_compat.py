"""Conversion between graphexec graphs and Dask graphs.

:func:`from_dask` accepts any Dask graph: old-style ``(func, *args)`` tuples with nested
tasks, lists and key references, literals, aliases, and new-style ``dask._task_spec``
nodes. It first normalizes with Dask's own ``convert_legacy_graph`` (so key inference
follows Dask's rules exactly), then turns every Dask task into one graphexec
:class:`Task` whose function evaluates the Dask task expression and whose arguments are
refs to the task's dependencies. Results therefore equal ``dask.get`` by construction.

Keys: string keys are kept; other keys (tuples like ``("x", 0)``, ints) become their
``repr`` (``"('x', 0)"``), with a ``~n`` suffix in the unlikely case that collides with
a string key of the same graph.

:func:`to_dask` goes the other way with ``dask._task_spec`` objects; :class:`Fused`
nodes are expanded into their inner nodes.

Dask is imported lazily, inside the functions: importing this module costs nothing.
This module is pure: no I/O, no globals.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from graphexec.graph.optimize import cull
from graphexec.graph.task import DataNode, Fused, Node, Task, TaskRef, find_refs

__all__ = ["DaskTaskCall", "from_dask", "to_dask"]


class DaskTaskCall:
    """Evaluate a Dask task expression given its dependency values, in ``dep_keys`` order.

    >>> from dask._task_spec import Task as DTask, TaskRef as DRef
    >>> call = DaskTaskCall(DTask("z", max, DRef(("x", 0)), 5), (("x", 0),))
    >>> call(7), call.__name__
    (7, 'max')
    """

    __slots__ = ("dep_keys", "task")

    def __init__(self, task: Any, dep_keys: tuple[Hashable, ...]) -> None:
        self.task = task
        self.dep_keys = dep_keys

    @property
    def __name__(self) -> str:
        func = getattr(self.task, "func", None)
        return str(getattr(func, "__name__", type(self.task).__name__))

    def __call__(self, *values: Any) -> Any:
        return self.task(dict(zip(self.dep_keys, values, strict=True)))

    def __repr__(self) -> str:
        return f"DaskTaskCall({self.task!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (DaskTaskCall, (self.task, self.dep_keys))


def _identity(x: Any) -> Any:
    return x


def from_dask(
    dsk: Mapping[Any, Any], keys: Any = None
) -> tuple[dict[str, Node], dict[Hashable, str]]:
    """Convert a Dask graph; return ``(graph, {dask_key: our_key})``.

    With ``keys`` (one key, or possibly nested lists of keys as ``__dask_keys__()`` gives
    them), the graph is culled to what those keys need. The key map covers every Dask key that appears,
    external references included.

    >>> from operator import add
    >>> from graphexec.graph.local import execute
    >>> dsk = {("x", 0): 1, "y": (add, ("x", 0), 10), "z": "y"}
    >>> graph, names = from_dask(dsk, ["z"])
    >>> names[("x", 0)], execute(graph, ["z"])
    ("('x', 0)", {'z': 11})
    """
    from dask._task_spec import Alias, GraphNode, convert_legacy_graph
    from dask._task_spec import DataNode as DaskDataNode

    converted = convert_legacy_graph(dsk)
    names = _key_map(dsk, converted)
    graph: dict[str, Node] = {}
    for dkey, node in converted.items():
        key = names[dkey]
        if isinstance(node, DaskDataNode):
            graph[key] = DataNode(key, node.value)
        elif isinstance(node, Alias):
            ref = TaskRef(names[node.target])
            graph[key] = Task(key, _identity, (ref,), resolve="all")
        elif isinstance(node, GraphNode):
            deps = sorted(node.dependencies, key=names.__getitem__)
            refs = tuple(TaskRef(names[d]) for d in deps)
            graph[key] = Task(key, DaskTaskCall(node, tuple(deps)), refs, resolve="all")
        else:  # pragma: no cover - convert_legacy_graph returns GraphNodes only
            raise TypeError(f"unexpected Dask graph value for {dkey!r}: {node!r}")
    if keys is not None:
        wanted = [keys] if isinstance(keys, (str, tuple)) else _flatten(keys)
        graph = cull(graph, [names.get(k, repr(k)) for k in wanted])
    return graph, names


def _key_map(dsk: Mapping[Any, Any], converted: Mapping[Any, Any]) -> dict[Hashable, str]:
    names: dict[Hashable, str] = {k: k for k in dsk if isinstance(k, str)}
    taken = set(names.values())
    others: list[Hashable] = [k for k in dsk if not isinstance(k, str)]
    external: set[Hashable] = set()
    for node in converted.values():
        external.update(d for d in node.dependencies if d not in names)
    for k in sorted(external - set(others), key=lambda k: (type(k).__name__, repr(k))):
        if isinstance(k, str):
            names[k] = k
            taken.add(k)
        else:
            others.append(k)
    for k in others:
        if k in names:
            continue
        name = base = repr(k)
        n = 0
        while name in taken:
            n += 1
            name = f"{base}~{n}"
        names[k] = name
        taken.add(name)
    return names


def _flatten(keys: Iterable[Any]) -> list[Any]:
    """Flatten nested lists of keys (tuples are keys, not containers)."""
    out: list[Any] = []
    stack: list[Any] = [iter(keys)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def to_dask(graph: Mapping[str, Node]) -> dict[str, Any]:
    """Convert to a Dask graph of ``dask._task_spec`` nodes that ``dask.get`` evaluates.

    :class:`Fused` nodes are expanded into their inner nodes. ``resolve="top"`` tasks with
    nested refs keep Ray semantics (the nested refs are passed as ref objects).

    >>> import dask
    >>> g = {"a": DataNode("a", 1), "b": Task("b", abs, (TaskRef("a"),))}
    >>> dask.get(to_dask(g), "b")
    1
    """
    out: dict[str, Any] = {}
    for node in graph.values():
        inner = node.nodes if isinstance(node, Fused) else (node,)
        for n in inner:
            out[n.key] = _node_to_dask(n)
    return out


def _node_to_dask(node: Task | DataNode) -> Any:
    from dask._task_spec import DataNode as DaskDataNode
    from dask._task_spec import Task as DaskTask
    from dask._task_spec import TaskRef as DaskRef

    if isinstance(node, DataNode):
        return DaskDataNode(node.key, node.value)
    if node.resolve == "all" or _only_top_level_refs(node):
        args = [_arg_to_dask(a) for a in node.args]
        kwargs = {k: _arg_to_dask(v) for k, v in node.kwargs.items()}
        return DaskTask(node.key, node.func, *args, **kwargs)
    deps = sorted(node.dependencies)
    return DaskTask(node.key, _RunTask(node, tuple(deps)), *(DaskRef(d) for d in deps))


def _only_top_level_refs(task: Task) -> bool:
    return all(
        isinstance(a, TaskRef) or not _has_ref(a) for a in (*task.args, *task.kwargs.values())
    )


def _has_ref(obj: Any) -> bool:
    return bool(find_refs(obj))


def _arg_to_dask(obj: Any) -> Any:
    """Our argument structure as Dask's: refs become Dask refs, containers with refs
    become Dask containers so that Dask resolves them."""
    from dask._task_spec import Dict, List, Set, Tuple
    from dask._task_spec import TaskRef as DaskRef

    if isinstance(obj, TaskRef):
        return DaskRef(obj.key)
    if not _has_ref(obj):
        return obj
    typ = type(obj)
    if typ is dict:
        return Dict({k: _arg_to_dask(v) for k, v in obj.items()})
    items = [_arg_to_dask(x) for x in obj]
    if typ is list:
        return List(*items)
    if typ is tuple:
        return Tuple(*items)
    if typ is set:
        return Set(*items)
    from dask._task_spec import Task as DaskTask

    return DaskTask(None, _make_frozenset, *items)


def _make_frozenset(*items: Any) -> frozenset[Any]:
    return frozenset(items)


class _RunTask:
    """Run one of our tasks inside Dask given its dependency values (Ray semantics)."""

    __slots__ = ("dep_keys", "task")

    def __init__(self, task: Task, dep_keys: tuple[str, ...]) -> None:
        self.task = task
        self.dep_keys = dep_keys

    def __call__(self, *values: Any) -> Any:
        return self.task.run(dict(zip(self.dep_keys, values, strict=True)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RunTask, (self.task, self.dep_keys))
