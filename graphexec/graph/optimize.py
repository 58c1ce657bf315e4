"""Client-side graph optimization: cull, inline constants, fuse linear chains, order.

Every function takes a graph (``Mapping[str, Node]``) and returns a new one; nothing is
mutated. Keys that nodes refer to but that are absent from the graph are *external*
(computed earlier, or ``put``): they are allowed everywhere and never touched.

Policies:

* ``keep`` keys (those the caller asked for) always stay addressable: never fused away,
  never inlined.
* Insertion order of the input graph is preserved in the output and is the tie-breaker of
  :func:`order`, so results are deterministic (no iteration over hash-ordered sets).
* Everything is iterative and O(n) or O(n log n) in nodes plus edges: graphs of 100k+
  tasks and chains 100k deep are the normal case, and these run for every ``compute``.
  Hence one shared analysis (:class:`_Edges`, built by a single walk) that
  :func:`optimize` updates step by step instead of re-deriving it after each rewrite.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from graphexec.graph.task import DataNode, Fused, Node, Task, TaskRef, find_refs, substitute

__all__ = [
    "cull",
    "dependencies",
    "dependents",
    "fuse",
    "inline_constants",
    "optimize",
    "order",
]

_CHEAP_SCALARS = frozenset({int, float, bool, complex, type(None)})
_CHEAP_MAX_LEN = 1000
_FLAT_ARGS = _CHEAP_SCALARS | {str, bytes, TaskRef}  # arguments with no nested refs


def dependencies(graph: Mapping[str, Node]) -> dict[str, frozenset[str]]:
    """Each key's dependencies, external keys included.

    >>> g = {"a": DataNode("a", 1), "b": Task("b", abs, (TaskRef("a"), TaskRef("x")))}
    >>> sorted(dependencies(g)["b"])
    ['a', 'x']
    """
    return {key: node.dependencies for key, node in graph.items()}


def dependents(graph: Mapping[str, Node]) -> dict[str, set[str]]:
    """Each key's dependents inside the graph (external keys get no entry).

    >>> g = {"a": DataNode("a", 1), "b": Task("b", abs, (TaskRef("a"), TaskRef("x")))}
    >>> dependents(g)
    {'a': {'b'}, 'b': set()}
    """
    out: dict[str, set[str]] = {key: set() for key in graph}
    for key, node in graph.items():
        for dep in node.dependencies:
            users = out.get(dep)
            if users is not None:
                users.add(key)
    return out


class _Edges:
    """What the passes need to know about a graph, kept current as they rewrite it.

    ``in_deps``: dependencies inside the graph; ``n_users``: number of dependents;
    ``a_user``: a dependent (the only one where ``n_users`` is 1); ``height``: longest
    path down to a node without dependencies, counted in original tasks (a heuristic
    for :func:`order`: fused chains and inlined constants keep their weight).
    """

    __slots__ = ("a_user", "data_keys", "height", "in_deps", "n_users")

    def __init__(self) -> None:
        self.in_deps: dict[str, frozenset[str]] = {}
        self.n_users: dict[str, int] = {}  # may hold culled keys too, at 0
        self.a_user: dict[str, str] = {}
        self.height: dict[str, int] = {}
        self.data_keys: list[str] = []


def _scan(graph: Mapping[str, Node], roots: Iterable[str]) -> tuple[Mapping[str, Node], _Edges]:
    """Cull to what ``roots`` need and analyse it, in one iterative post-order walk."""
    e = _Edges()
    e.n_users = dict.fromkeys(graph, 0)  # one C-speed pass beats a check per node
    in_deps, n_users, a_user, height = e.in_deps, e.n_users, e.a_user, e.height
    stack = [k for k in roots if k in graph]
    while stack:
        key = stack.pop()
        if key in height:
            continue
        deps = in_deps.get(key)
        if deps is not None:  # second visit: every dependency is done
            best = 0
            for dep in deps:
                h = height.get(dep)
                if h is None:  # only possible when ``dep`` is still on the path
                    raise ValueError(f"graph has a cycle through {dep!r}")
                if h > best:
                    best = h
            height[key] = best + 1
            continue
        node = graph[key]
        deps = node.dependencies
        for dep in deps:
            if dep not in graph:  # external keys: rare, so filter only then
                deps = frozenset(d for d in deps if d in graph)
                break
        in_deps[key] = deps
        if type(node) is DataNode:
            e.data_keys.append(key)
        if not deps:
            height[key] = 1
            continue
        stack.append(key)
        for dep in deps:
            n_users[dep] += 1
            a_user[dep] = key
        stack.extend(deps)
    if len(in_deps) == len(graph):
        return graph, e
    return {k: v for k, v in graph.items() if k in in_deps}, e


def _own(out: Mapping[str, Node], graph: Mapping[str, Node]) -> dict[str, Node]:
    """``out`` as a dict the caller owns (never the input graph itself)."""
    return out if isinstance(out, dict) and out is not graph else dict(out)


def cull(graph: Mapping[str, Node], keys: Iterable[str]) -> dict[str, Node]:
    """Only the nodes that ``keys`` need, in the graph's order.

    Requested or referenced keys absent from the graph are external and are allowed.

    >>> g = {k: DataNode(k, 1) for k in "ab"}
    >>> g["c"] = Task("c", abs, (TaskRef("a"), TaskRef("ext")))
    >>> list(cull(g, ["c"]))
    ['a', 'c']
    """
    needed: set[str] = set()
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key in needed or key not in graph:
            continue
        needed.add(key)
        stack.extend(graph[key].dependencies)
    return {k: v for k, v in graph.items() if k in needed}


def inline_constants(graph: Mapping[str, Node], keep: Iterable[str] = ()) -> dict[str, Node]:
    """Substitute cheap :class:`DataNode` values into their dependents and drop them.

    Cheap means immutable and small: scalars, strings and bytes up to 1000 long, and
    tuples/frozensets of those up to 1000 elements in all. A value is substituted only
    where the task would have received the value itself: anywhere for ``resolve="all"``
    tasks, at top level only for ``resolve="top"`` tasks (a nested ref stays a ref there).
    A DataNode is dropped once nothing refers to it any more; kept keys and unreferenced
    DataNodes are left alone.

    >>> g = {"c": DataNode("c", 10), "t": Task("t", abs, (TaskRef("c"),))}
    >>> out = inline_constants(g)
    >>> list(out), out["t"].args
    (['t'], (10,))
    """
    scanned, edges = _scan(graph, graph)
    return _own(_inline(scanned, set(keep), edges), graph)


def _inline(graph: Mapping[str, Node], keep: set[str], e: _Edges) -> Mapping[str, Node]:
    consts: dict[str, Any] = {}
    for key in e.data_keys:
        node = graph[key]
        used = e.n_users[key] and key not in keep
        if used and isinstance(node, DataNode) and _is_cheap(node.value):
            consts[key] = node.value
    if not consts:
        return graph
    users: dict[str, None] = {}  # ordered set
    if all(e.n_users[c] == 1 for c in consts):
        users.update((e.a_user[c], None) for c in consts)
    else:
        for key, deps in e.in_deps.items():
            if any(d in consts for d in deps):
                users[key] = None
    out = dict(graph)
    still_used: set[str] = set()
    for key in users:
        node = _inline_into(out[key], {d: consts[d] for d in e.in_deps[key] if d in consts})
        out[key] = node
        still_used.update(d for d in node.dependencies if d in consts)
    dropped = consts.keys() - still_used
    for key in users:
        e.in_deps[key] = frozenset(d for d in e.in_deps[key] if d not in dropped)
    for key in dropped:
        del out[key], e.n_users[key]
    return out


def _inline_into(node: Node, values: Mapping[str, Any]) -> Node:
    if isinstance(node, Task):
        return _inline_task(node, values)
    if isinstance(node, Fused):
        return Fused(
            _inline_task(n, values) if isinstance(n, Task) and n.dependencies & values.keys() else n
            for n in node.nodes
        )
    return node


def _inline_task(task: Task, values: Mapping[str, Any]) -> Task:
    deep = task.resolve == "all"
    args = tuple(substitute(a, values, deep=deep) for a in task.args)
    kwargs = {k: substitute(v, values, deep=deep) for k, v in task.kwargs.items()}
    return task.with_args(args, kwargs)


def _is_cheap(value: Any) -> bool:
    budget = _CHEAP_MAX_LEN
    stack = [value]
    while stack:
        obj = stack.pop()
        typ = type(obj)
        if typ in _CHEAP_SCALARS:
            continue
        if typ is str or typ is bytes:
            if len(obj) > _CHEAP_MAX_LEN:
                return False
        elif typ is tuple or typ is frozenset:
            budget -= len(obj)
            if budget < 0:
                return False
            stack.extend(obj)
        else:
            return False
    return True


def fuse(graph: Mapping[str, Node], keep: Iterable[str] = ()) -> dict[str, Node]:
    """Fuse linear chains into :class:`Fused` nodes keyed by each chain's last key.

    ``a`` joins its dependent ``b`` when ``a`` is not kept, ``b`` is ``a``'s only
    dependent, ``a`` is ``b``'s only dependency inside the graph, both have equal
    options (or ``a`` is a DataNode, which needs no resources), and ``b`` would receive
    ``a``'s value (not a nested ref under ``resolve="top"``, which would point at a key
    that no longer exists). Fused inputs are flattened, never nested.

    >>> inc = lambda x: x + 1
    >>> g = {"a": DataNode("a", 1), "b": Task("b", inc, (TaskRef("a"),))}
    >>> g["c"] = Task("c", inc, (TaskRef("b"),))
    >>> out = fuse(g, keep=["c"])
    >>> list(out), out["c"].run({})
    (['c'], 3)
    """
    scanned, edges = _scan(graph, graph)
    return _own(_fuse(scanned, set(keep), edges), graph)


def _fuse(graph: Mapping[str, Node], keep: set[str], e: _Edges) -> Mapping[str, Node]:
    in_deps, n_users, a_user = e.in_deps, e.n_users, e.a_user
    child: dict[str, str] = {}
    for key, node in graph.items():
        if n_users[key] != 1 or key in keep:
            continue
        nxt = a_user[key]
        if len(in_deps[nxt]) != 1:
            continue
        nxt_node = graph[nxt]
        opts = node.options
        # a DataNode needs no resources, so it may join a task with any options
        if not (type(node) is DataNode or opts is nxt_node.options or opts == nxt_node.options):
            continue
        if type(nxt_node) is Task:
            ok = nxt_node.resolve == "all" or not _nested_in(nxt_node, key)
        else:
            ok = _receives_value(nxt_node, key)
        if ok:
            child[key] = nxt
    if not child:
        return graph
    has_parent = set(child.values())
    fused: dict[str, Fused] = {}
    for head in child:
        if head in has_parent:
            continue
        chain: list[Task | DataNode] = []
        key = head
        while True:
            node = graph[key]
            if type(node) is Fused:
                chain.extend(node.nodes)
            else:
                chain.append(node)  # type: ignore[arg-type]
            if key not in child:
                break
            key = child[key]
        fused[key] = Fused(chain)
        in_deps[key] = in_deps[head]
    # inner keys' entries in ``e`` go stale but harmless: nothing left refers to them
    return {k: fused.get(k, v) for k, v in graph.items() if k not in child}


def _receives_value(node: Node, key: str) -> bool:
    """Whether every use of ``key`` in ``node`` is resolved to its value."""
    if isinstance(node, Task):
        return node.resolve == "all" or not _nested_in(node, key)
    if isinstance(node, Fused):
        return not any(
            type(n) is Task and n.resolve == "top" and _nested_in(n, key) for n in node.nodes
        )
    return True


def _nested_in(task: Task, key: str) -> bool:
    """Whether ``key`` is referenced inside a container argument of ``task``."""
    for arg in task.args:
        if type(arg) not in _FLAT_ARGS and not isinstance(arg, TaskRef) and key in find_refs(arg):
            return True
    if task.kwargs:
        return any(
            type(arg) not in _FLAT_ARGS and not isinstance(arg, TaskRef) and key in find_refs(arg)
            for arg in task.kwargs.values()
        )
    return False


def order(graph: Mapping[str, Node]) -> dict[str, int]:
    """Priorities (lower runs first): depth-first, so results are freed early.

    Outputs (nodes without dependents) are taken in graph order; each is computed by a
    post-order walk of its dependencies, deeper dependencies first and graph order
    breaking ties. So a subtree finishes before the next one starts, every dependency
    comes before its dependents, and a graph without edges keeps its insertion order.
    Raises :class:`ValueError` on a cycle.

    >>> g = {k: DataNode(k, 1) for k in "ab"}
    >>> g["c"] = Task("c", max, (TaskRef("a"), TaskRef("b")))
    >>> g["d"] = DataNode("d", 2)
    >>> order(g)
    {'a': 0, 'b': 1, 'c': 2, 'd': 3}
    """
    scanned, edges = _scan(graph, graph)
    return _order(scanned, edges)


def _order(graph: Mapping[str, Node], e: _Edges) -> dict[str, int]:
    in_deps, n_users = e.in_deps, e.n_users
    rank: dict[str, int] = {}
    prio: dict[str, int] = {}
    expanded: set[str] = set()
    for target in graph:
        if n_users[target]:
            continue
        stack = [target]
        while stack:
            key = stack.pop()
            if key in prio:
                continue
            deps = in_deps[key]
            if not deps or key in expanded:
                # a leaf, or popped the second time: its dependencies are all done
                prio[key] = len(prio)
                continue
            expanded.add(key)
            stack.append(key)
            if len(deps) == 1:
                stack.extend(deps)
                continue
            if not rank:
                rank = _rank(graph, e.height)
            # popped from the end: deeper first, then earlier in the graph
            stack.extend(sorted(deps, key=rank.__getitem__))
    return prio


def _rank(graph: Mapping[str, Node], height: Mapping[str, int]) -> dict[str, int]:
    """Sort key for dependencies: higher means visited sooner."""
    size = len(graph)
    return {key: height[key] * size - i for i, key in enumerate(graph)}


def optimize(
    graph: Mapping[str, Node],
    keys: Iterable[str],
    *,
    fuse_chains: bool = True,
    inline: bool = True,
) -> tuple[dict[str, Node], dict[str, int]]:
    """Cull to ``keys``, inline cheap constants, fuse linear chains, then order.

    The priorities follow :func:`order`'s rules on the optimized graph, with heights
    counted in original tasks (a fused chain weighs what its tasks weigh).

    >>> inc = lambda x: x + 1
    >>> g = {"a": DataNode("a", 1), "b": Task("b", inc, (TaskRef("a"),))}
    >>> g["c"] = Task("c", inc, (TaskRef("b"),))
    >>> g["unused"] = DataNode("unused", 0)
    >>> out, prio = optimize(g, ["c"])
    >>> list(out), prio, out["c"].run({})
    (['c'], {'c': 0}, 3)
    """
    keep = set(keys)
    out, edges = _scan(graph, keep)
    if inline:
        out = _inline(out, keep, edges)
    if fuse_chains:
        out = _fuse(out, keep, edges)
    return _own(out, graph), _order(out, edges)
