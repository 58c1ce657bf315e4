"""Task nodes: the vertices of a graphexec task graph.

A graph is a plain ``dict[str, Node]`` mapping each key to the node that produces it.
Nodes are small slotted, picklable objects:

* :class:`TaskRef` -- a reference to another key, placed anywhere inside a task's
  arguments (nested in lists, tuples and dicts). ``ObjectRef`` on the client side is a
  subclass, so graph code treats user refs and internal refs alike.
* :class:`Task` -- call ``func(*args, **kwargs)`` once the referenced keys are known.
* :class:`DataNode` -- a literal value already known to the client (inlined by the
  optimizer where cheap).
* :class:`Fused` -- a linear chain of tasks executed in one go on one worker; produced
  by :func:`graphexec.graph.optimize.fuse`, never by users.

Argument resolution policy (``Task.resolve``):

* ``"top"`` (Ray semantics, used by ``.remote``): refs that are direct positional or
  keyword arguments are replaced by their values; refs nested deeper are passed as the
  ref objects themselves (the task may ``get`` them). Nested refs are still
  dependencies, so they are computed before the task starts.
* ``"all"`` (Dask semantics, used by ``delayed`` and Dask graphs): every ref anywhere in
  lists, tuples and dicts is replaced by its value.

This module is pure: no I/O, no globals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from graphexec.graph.options import DEFAULT_OPTIONS, TaskOptions

Resolve = Literal["top", "all"]

__all__ = [
    "DataNode",
    "Fused",
    "Node",
    "Resolve",
    "Task",
    "TaskRef",
    "collect_refs",
    "find_refs",
    "substitute",
]


class TaskRef:
    """A reference to the value of ``key`` in a graph.

    >>> TaskRef("a-1")
    TaskRef('a-1')
    >>> TaskRef("a") == TaskRef("a")
    True
    """

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskRef) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskRef, (self.key,))


def collect_refs(obj: Any, out: list[TaskRef] | None = None) -> list[TaskRef]:
    """Every :class:`TaskRef` (subclasses included) inside ``obj``, in order.

    Lists, tuples, sets and dict values are searched recursively. This is the one
    traversal of task arguments; :func:`find_refs` and the client build on it.

    >>> collect_refs([TaskRef("a"), {"x": (1, TaskRef("b"))}])
    [TaskRef('a'), TaskRef('b')]
    """
    if out is None:
        out = []
    typ = type(obj)
    if isinstance(obj, TaskRef):
        out.append(obj)
    elif typ is list or typ is tuple or typ is set or typ is frozenset:
        for item in obj:
            # fast skip of plain scalars keeps big argument lists cheap
            if type(item) not in _SCALARS:
                collect_refs(item, out)
    elif typ is dict:
        for item in obj.values():
            if type(item) not in _SCALARS:
                collect_refs(item, out)
    return out


def find_refs(obj: Any, out: set[str] | None = None) -> set[str]:
    """Return the keys of every :class:`TaskRef` inside ``obj``.

    >>> sorted(find_refs([TaskRef("a"), {"x": (1, TaskRef("b"))}]))
    ['a', 'b']
    >>> find_refs(3)
    set()
    """
    keys = out if out is not None else set()
    keys.update(ref.key for ref in collect_refs(obj))
    return keys


_SCALARS = frozenset({int, float, str, bytes, bool, type(None), complex})


def substitute(obj: Any, values: Mapping[str, Any], *, deep: bool = True) -> Any:
    """Replace :class:`TaskRef` objects in ``obj`` by ``values[ref.key]``.

    Refs whose key is not in ``values`` are left in place. With ``deep=False`` only
    ``obj`` itself is replaced (a top-level argument), nothing nested inside it.

    >>> substitute([TaskRef("a"), (TaskRef("b"), 2)], {"a": 1, "b": 5})
    [1, (5, 2)]
    >>> substitute([TaskRef("a")], {"a": 1}, deep=False)
    [TaskRef('a')]
    >>> substitute(TaskRef("a"), {"a": 1}, deep=False)
    1
    """
    if isinstance(obj, TaskRef):
        return values.get(obj.key, obj)
    if not deep:
        return obj
    typ = type(obj)
    if typ is list:
        return [substitute(x, values) for x in obj]
    if typ is tuple:
        return tuple(substitute(x, values) for x in obj)
    if typ is dict:
        return {k: substitute(v, values) for k, v in obj.items()}
    if typ is set or typ is frozenset:
        return typ(substitute(x, values) for x in obj)
    return obj


class Task:
    """Call ``func(*args, **kwargs)`` with referenced keys resolved per ``resolve``.

    >>> def add(x, y):
    ...     return x + y
    >>> t = Task("add-1", add, (TaskRef("a"), 2))
    >>> t.dependencies
    frozenset({'a'})
    >>> t.run({"a": 40})
    42
    """

    __slots__ = ("key", "func", "args", "kwargs", "resolve", "options", "_deps")

    def __init__(
        self,
        key: str,
        func: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        resolve: Resolve = "top",
        options: TaskOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.key = key
        self.func = func
        self.args = args
        self.kwargs = kwargs or {}
        self.resolve = resolve
        self.options = options
        self._deps: frozenset[str] | None = None

    @property
    def dependencies(self) -> frozenset[str]:
        """Keys this task needs, wherever they sit in its arguments."""
        if self._deps is None:
            keys = find_refs(self.args)
            if self.kwargs:
                find_refs(self.kwargs, keys)
            self._deps = frozenset(keys)
        return self._deps

    def run(self, values: Mapping[str, Any]) -> Any:
        """Call the function with dependency values taken from ``values``."""
        deep = self.resolve == "all"
        args = [substitute(a, values, deep=deep) for a in self.args]
        kwargs = {k: substitute(v, values, deep=deep) for k, v in self.kwargs.items()}
        return self.func(*args, **kwargs)

    def with_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Task:
        """A copy of this task with other arguments (used by inlining)."""
        return Task(self.key, self.func, args, kwargs, resolve=self.resolve, options=self.options)

    def __repr__(self) -> str:
        name = getattr(self.func, "__name__", repr(self.func))
        return f"Task({self.key!r}, {name}, deps={sorted(self.dependencies)})"

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.key, self.func, self.args, self.kwargs, self.resolve, self.options)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.key, self.func, self.args, self.kwargs, self.resolve, self.options = state
        self._deps = None


class DataNode:
    """A literal value in the graph.

    >>> DataNode("x", 5).run({})
    5
    """

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: Any) -> None:
        self.key = key
        self.value = value

    options = DEFAULT_OPTIONS
    dependencies: frozenset[str] = frozenset()

    def run(self, values: Mapping[str, Any]) -> Any:
        return self.value

    def __repr__(self) -> str:
        return f"DataNode({self.key!r})"

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.key, self.value)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.key, self.value = state


class Fused:
    """A linear chain of nodes run in order on one worker; the last one's key is ours.

    Intermediate keys are private to the chain: each inner node may refer to the ones
    before it, and the chain's external dependencies are everything else.

    >>> inc = lambda x: x + 1
    >>> f = Fused((Task("a", inc, (TaskRef("x"),)), Task("b", inc, (TaskRef("a"),))))
    >>> f.key, sorted(f.dependencies), f.run({"x": 1})
    ('b', ['x'], 3)
    """

    __slots__ = ("key", "nodes", "_deps")

    def __init__(self, nodes: Iterable[Task | DataNode]) -> None:
        self.nodes = tuple(nodes)
        if not self.nodes:
            raise ValueError("Fused needs at least one node")
        self.key = self.nodes[-1].key
        self._deps: frozenset[str] | None = None

    @property
    def options(self) -> TaskOptions:
        return self.nodes[-1].options

    @property
    def dependencies(self) -> frozenset[str]:
        if self._deps is None:
            inner = {n.key for n in self.nodes}
            deps: set[str] = set()
            for n in self.nodes:
                deps.update(n.dependencies)
            self._deps = frozenset(deps - inner)
        return self._deps

    def run(self, values: Mapping[str, Any]) -> Any:
        if len(self.nodes) == 1:
            # no private keys to record: never write into the caller's mapping
            return self.nodes[0].run(values)
        local = dict(values)
        result: Any = None
        for node in self.nodes:
            result = node.run(local)
            local[node.key] = result
        return result

    def __repr__(self) -> str:
        return f"Fused({self.key!r}, {len(self.nodes)} nodes)"

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.nodes,)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.nodes,) = state
        self.key = self.nodes[-1].key
        self._deps = None


Node = Task | DataNode | Fused
