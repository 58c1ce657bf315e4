"""Sequential, in-process evaluation of a graph: the reference semantics.

:func:`execute` runs exactly the nodes the requested keys need, one at a time, in
dependency order, and frees each intermediate value as soon as its last user has run.
Tests compare every distributed result with it, and the eager local mode uses it.
Exceptions raised by tasks propagate unchanged.

This module is pure apart from running the tasks themselves: no I/O of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from graphexec.graph.task import Node

__all__ = ["execute"]


def execute(
    graph: Mapping[str, Node],
    keys: Iterable[str],
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``graph`` sequentially and return ``{key: value}`` for ``keys``.

    Keys the graph refers to but does not hold are external: their values come from
    ``inputs``, or a :class:`KeyError` names the first one missing (before anything runs).

    >>> from graphexec.graph.task import DataNode, Task, TaskRef
    >>> g = {
    ...     "a": DataNode("a", 1),
    ...     "b": Task("b", lambda x, y: x + y, (TaskRef("a"), TaskRef("x"))),
    ... }
    >>> execute(g, ["b"], inputs={"x": 41})
    {'b': 42}
    >>> execute(g, ["b"])
    Traceback (most recent call last):
    ...
    KeyError: "missing input 'x' (needed by 'b')"
    """
    inputs = inputs or {}
    wanted = list(dict.fromkeys(keys))
    steps = _schedule(graph, wanted, inputs)
    users = dict.fromkeys(steps, 0)
    for key in steps:
        for dep in graph[key].dependencies:
            if dep in users:
                users[dep] += 1
    keep = set(wanted)
    cache: dict[str, Any] = {}
    for key in steps:
        node = graph[key]
        deps = node.dependencies
        values = {d: cache[d] if d in cache else inputs[d] for d in deps}
        cache[key] = node.run(values)
        for dep in deps:
            if dep in users:
                users[dep] -= 1
                if not users[dep] and dep not in keep:
                    del cache[dep]
    return {k: cache[k] if k in cache else inputs[k] for k in wanted}


def _schedule(graph: Mapping[str, Node], wanted: list[str], inputs: Mapping[str, Any]) -> list[str]:
    """The needed graph keys in dependency order (iterative post-order walk)."""
    done: set[str] = set()
    steps: list[str] = []
    for root in wanted:
        if root in done:
            continue
        if root not in graph:
            if root not in inputs:
                raise KeyError(f"missing input {root!r} (requested)")
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root].dependencies))]
        active = {root}
        while stack:
            key, todo = stack[-1]
            if todo:
                dep = todo.pop()
                if dep in done or (dep in inputs and dep not in graph):
                    continue
                if dep not in graph:
                    raise KeyError(f"missing input {dep!r} (needed by {key!r})")
                if dep in active:
                    raise ValueError(f"graph has a cycle through {dep!r}")
                active.add(dep)
                stack.append((dep, sorted(graph[dep].dependencies)))
            else:
                stack.pop()
                active.discard(key)
                done.add(key)
                steps.append(key)
    return steps
