"""Graph optimization: cull, inline, fuse, order, and optimize end to end."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphexec.graph.local import execute
from graphexec.graph.optimize import (
    cull,
    dependencies,
    dependents,
    fuse,
    inline_constants,
    optimize,
    order,
)
from graphexec.graph.options import DEFAULT_OPTIONS
from graphexec.graph.task import DataNode, Fused, Task, TaskRef, find_refs

ROOT = Path(__file__).resolve().parents[2]
GPU = DEFAULT_OPTIONS.merge(num_gpus=1)


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def combine(salt, *args, **kwargs):
    """A deterministic digest of everything received, refs included (Ray semantics)."""
    total = salt
    stack = [*args, *kwargs.values()]
    while stack:
        item = stack.pop()
        if isinstance(item, TaskRef):
            total += 1000 + 7 * len(item.key)  # a ref arrived unresolved
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        else:
            total += item
    return total % 1_000_003


def chain(n, *, head_data=True):
    g = {"c-0": DataNode("c-0", 0) if head_data else Task("c-0", inc, (-1,))}
    for i in range(1, n):
        g[f"c-{i}"] = Task(f"c-{i}", inc, (TaskRef(f"c-{i - 1}"),))
    return g, f"c-{n - 1}"


def tree(leaves):
    g = {f"leaf-{i}": Task(f"leaf-{i}", inc, (i,)) for i in range(leaves)}
    level, j = list(g), 0
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), 2):
            key = f"add-{j}"
            j += 1
            g[key] = Task(key, add, tuple(TaskRef(k) for k in level[i : i + 2]))
            nxt.append(key)
        level = nxt
    return g, level[0]


def ancestors(graph, keys):
    seen, stack = set(), [k for k in keys if k in graph]
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack.extend(d for d in graph[k].dependencies if d in graph)
    return seen


def assert_nested_refs_addressable(original, out):
    """A nested ref under resolve="top" reaches the task as a ref it may ``get``: its key
    must still exist (or be external), never be fused or inlined away."""
    for node in out.values():
        for task in node.nodes if isinstance(node, Fused) else (node,):
            if not isinstance(task, Task) or task.resolve == "all":
                continue
            for arg in (*task.args, *task.kwargs.values()):
                if not isinstance(arg, TaskRef):
                    for key in find_refs(arg):
                        assert key in out or key not in original, key


def assert_respects_dependencies(graph, prio):
    assert sorted(prio.values()) == list(range(len(graph)))
    assert set(prio) == set(graph)
    for key, node in graph.items():
        for dep in node.dependencies:
            if dep in graph:
                assert prio[dep] < prio[key], (dep, key)


# --------------------------------------------------------------------- random DAGs


@st.composite
def dags(draw):
    """Random graphs of DataNodes and Tasks over ints; refs at top level or nested,
    both resolve modes, two option sets; plus the keys to compute."""
    n = draw(st.integers(1, 25))
    graph = {}
    keys = [f"n{i}" for i in range(n)]
    for i, key in enumerate(keys):
        deps = draw(st.lists(st.sampled_from(keys[:i]), max_size=4)) if i else []
        if not deps and draw(st.booleans()):
            value = draw(st.one_of(st.integers(-5, 5), st.lists(st.integers(0, 3), max_size=3)))
            graph[key] = DataNode(key, tuple(value) if isinstance(value, list) else value)
            continue
        args, kwargs = [], {}
        for dep in deps:
            where = draw(st.sampled_from(["top", "nested", "kw"]))
            ref = TaskRef(dep)
            if where == "top":
                args.append(ref)
            elif where == "nested":
                args.append([ref, {"k": (ref, 1)}])
            else:
                kwargs[f"k{len(kwargs)}"] = ref
        graph[key] = Task(
            key,
            combine,
            (i, *args),
            kwargs,
            resolve=draw(st.sampled_from(["top", "all"])),
            options=draw(st.sampled_from([DEFAULT_OPTIONS, GPU])),
        )
    wanted = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4, unique=True))
    return graph, wanted


@settings(max_examples=50, deadline=None)
@given(dags())
def test_optimize_preserves_results(case):
    graph, keys = case
    expected = execute(graph, keys)
    out, prio = optimize(graph, keys)
    assert execute(out, keys) == expected
    assert set(keys) <= set(out)
    assert_respects_dependencies(out, prio)
    assert_nested_refs_addressable(graph, out)
    for flags in ({"fuse_chains": False}, {"inline": False}):
        assert execute(optimize(graph, keys, **flags)[0], keys) == expected


@settings(max_examples=50, deadline=None)
@given(dags())
def test_each_pass_preserves_results(case):
    graph, keys = case
    expected = execute(graph, keys)
    assert execute(cull(graph, keys), keys) == expected
    assert execute(inline_constants(graph, keys), keys) == expected
    assert execute(fuse(graph, keys), keys) == expected
    assert execute(fuse(fuse(graph, keys), keys), keys) == expected


@settings(max_examples=50, deadline=None)
@given(dags())
def test_order_and_cull_properties(case):
    graph, keys = case
    prio = order(graph)
    assert_respects_dependencies(graph, prio)
    assert order(dict(graph)) == prio
    out = cull(graph, keys)
    assert set(out) == ancestors(graph, keys)  # exactly the ancestors
    assert list(out) == [k for k in graph if k in out]  # graph order kept


# --------------------------------------------------------------------- dependencies


def test_dependencies_and_dependents():
    g = {
        "a": DataNode("a", 1),
        "b": Task("b", add, (TaskRef("a"), TaskRef("ext"))),
        "c": Task("c", add, (TaskRef("a"), TaskRef("b"))),
    }
    assert dependencies(g) == {"a": set(), "b": {"a", "ext"}, "c": {"a", "b"}}
    assert dependents(g) == {"a": {"b", "c"}, "b": {"c"}, "c": set()}


# --------------------------------------------------------------------- cull


def test_cull_allows_external_and_unknown_keys():
    g = {"a": Task("a", inc, (TaskRef("ext"),)), "b": DataNode("b", 1)}
    assert list(cull(g, ["a", "not-here"])) == ["a"]
    assert cull(g, []) == {}


def test_cull_returns_a_new_dict():
    g = {"a": DataNode("a", 1)}
    out = cull(g, ["a"])
    assert out == g and out is not g


# --------------------------------------------------------------------- inline


def test_inline_cheap_constants_top_level():
    g = {
        "n": DataNode("n", 3),
        "s": DataNode("s", "x" * 10),
        "t": Task("t", combine, (0, TaskRef("n")), {"k": TaskRef("n")}),
        "u": Task("u", len, (TaskRef("s"),)),
    }
    out = inline_constants(g, keep=["t", "u"])
    assert list(out) == ["t", "u"]
    assert out["t"].args == (0, 3) and out["t"].kwargs == {"k": 3}
    assert out["t"].dependencies == frozenset()
    assert execute(out, ["t", "u"]) == execute(g, ["t", "u"])


def test_inline_nested_only_for_resolve_all():
    g = {
        "n": DataNode("n", 3),
        "all": Task("all", combine, (0, [TaskRef("n")]), resolve="all"),
        "top": Task("top", combine, (0, [TaskRef("n")])),
    }
    out = inline_constants(g, keep=["all", "top"])
    assert out["all"].args == (0, [3])
    assert out["top"].args == (0, [TaskRef("n")])
    assert "n" in out  # still referenced by the nested ref
    assert execute(out, ["all", "top"]) == execute(g, ["all", "top"])


def test_inline_mixed_top_level_and_nested_keeps_node():
    g = {"n": DataNode("n", 3), "t": Task("t", combine, (TaskRef("n"), [TaskRef("n")]))}
    out = inline_constants(g, keep=["t"])
    assert out["t"].args == (3, [TaskRef("n")]) and "n" in out


@pytest.mark.parametrize(
    "value",
    [
        "x" * 1001,
        b"x" * 1001,
        tuple(range(1001)),
        ((1,) * 600, (2,) * 600),
        [1, 2],
        {"a": 1},
        {1, 2},
        np.arange(3),
        np.float64(1.0),
        TaskRef("elsewhere"),
        (TaskRef("elsewhere"),),
    ],
)
def test_inline_skips_expensive_or_mutable_values(value):
    g = {"d": DataNode("d", value), "t": Task("t", repr, (TaskRef("d"),), resolve="all")}
    assert inline_constants(g, keep=["t"]) == g


@pytest.mark.parametrize("value", [None, 1.5, True, 2j, "x" * 1000, (1, ("a", b"b"), None)])
def test_inline_accepts_cheap_values(value):
    g = {"d": DataNode("d", value), "t": Task("t", repr, (TaskRef("d"),), resolve="all")}
    out = inline_constants(g, keep=["t"])
    assert list(out) == ["t"] and out["t"].args == (value,)


def test_inline_keeps_requested_and_unreferenced_datanodes():
    g = {"d": DataNode("d", 1), "e": DataNode("e", 2), "t": Task("t", inc, (TaskRef("d"),))}
    out = inline_constants(g, keep=["d", "t"])
    assert list(out) == ["d", "e", "t"] and out["t"].args == (TaskRef("d"),)


def test_inline_into_many_dependents_and_fused_nodes():
    g = {"d": DataNode("d", 5)}
    for i in range(3):
        g[f"t{i}"] = Task(f"t{i}", add, (TaskRef("d"), i))
    g["f"] = Fused([Task("f0", inc, (TaskRef("d"),)), Task("f", inc, (TaskRef("f0"),))])
    keys = ["t0", "t1", "t2", "f"]
    out = inline_constants(g, keep=keys)
    assert list(out) == keys
    assert execute(out, keys) == execute(g, keys) == {"t0": 5, "t1": 6, "t2": 7, "f": 7}
    assert isinstance(out["f"], Fused) and out["f"].dependencies == frozenset()


def test_inline_does_not_mutate_input():
    g = {"d": DataNode("d", 1), "t": Task("t", inc, (TaskRef("d"),))}
    inline_constants(g, keep=["t"])
    assert list(g) == ["d", "t"] and g["t"].args == (TaskRef("d"),)


# --------------------------------------------------------------------- fuse


def test_fuse_long_chain_into_one_node():
    g, last = chain(2000)
    out = fuse(g, keep=[last])
    assert list(out) == [last]
    node = out[last]
    assert isinstance(node, Fused) and len(node.nodes) == 2000
    assert execute(out, [last]) == {last: 1999}


def test_fuse_stops_at_kept_keys_and_branches():
    g, last = chain(6)
    g["side"] = Task("side", inc, (TaskRef("c-2"),))  # c-2 now has two dependents
    out = fuse(g, keep=[last, "side", "c-4"])
    assert set(out) == {"c-2", "c-4", last, "side"}
    assert [n.key for n in out["c-2"].nodes] == ["c-0", "c-1", "c-2"]
    assert isinstance(out["c-4"], Fused) and isinstance(out["side"], Task)
    assert execute(out, [last, "side", "c-4"]) == execute(g, [last, "side", "c-4"])


def test_fuse_requires_single_dependency():
    g = {
        "a": Task("a", inc, (1,)),
        "b": Task("b", inc, (2,)),
        "c": Task("c", add, (TaskRef("a"), TaskRef("b"))),
    }
    assert fuse(g, keep=["c"]) == g


def test_fuse_external_dependencies_allowed():
    g = {
        "a": Task("a", add, (TaskRef("x"), 1)),
        "b": Task("b", add, (TaskRef("a"), TaskRef("y"))),
    }
    out = fuse(g, keep=["b"])
    assert list(out) == ["b"] and out["b"].dependencies == {"x", "y"}
    assert execute(out, ["b"], inputs={"x": 1, "y": 10}) == {"b": 12}


def test_fuse_requires_equal_options_but_not_for_data():
    g = {
        "d": DataNode("d", 1),
        "a": Task("a", inc, (TaskRef("d"),), options=GPU),
        "b": Task("b", inc, (TaskRef("a"),)),
    }
    out = fuse(g, keep=["b"])
    assert list(out) == ["a", "b"]
    assert [n.key for n in out["a"].nodes] == ["d", "a"] and out["a"].options == GPU


def test_fuse_never_fuses_a_nested_ref_under_top_resolution():
    g = {"a": Task("a", inc, (1,)), "b": Task("b", combine, (0, [TaskRef("a")]))}
    assert fuse(g, keep=["b"]) == g
    g_all = {"a": Task("a", inc, (1,)), "b": Task("b", combine, (0, [TaskRef("a")]), resolve="all")}
    assert list(fuse(g_all, keep=["b"])) == ["b"]


def test_fuse_flattens_fused_inputs():
    g, last = chain(10)
    once = fuse(g, keep=["c-4", last])
    assert list(once) == ["c-4", last]
    twice = fuse(once, keep=[last])
    assert list(twice) == [last]
    assert [n.key for n in twice[last].nodes] == [f"c-{i}" for i in range(10)]
    assert all(not isinstance(n, Fused) for n in twice[last].nodes)
    assert fuse(twice, keep=[last]) == twice


def test_fuse_into_fused_with_nested_top_ref_is_refused():
    inner = Fused([Task("b", combine, (0, [TaskRef("a")])), Task("c", inc, (TaskRef("b"),))])
    g = {"a": Task("a", inc, (1,)), "c": inner}
    assert fuse(g, keep=["c"]) == g


def test_fuse_keeps_graph_order():
    g = {"x": Task("x", inc, (0,)), **chain(3)[0], "y": Task("y", inc, (0,))}
    assert list(fuse(g, keep=["x", "c-2", "y"])) == ["x", "c-2", "y"]


# --------------------------------------------------------------------- order


def test_order_without_edges_keeps_insertion_order():
    keys = [f"t-{i}" for i in range(200)][::-1]
    g = {k: Task(k, inc, (1,)) for k in keys}
    assert order(g) == {k: i for i, k in enumerate(keys)}


def simulate_live(graph, prio):
    """Run in priority order; return the most intermediate results held at once."""
    users = dependents(graph)
    remaining = {k: len(v) for k, v in users.items()}
    live, peak = set(), 0
    for key in sorted(prio, key=prio.__getitem__):
        for dep in graph[key].dependencies:
            remaining[dep] -= 1
            if not remaining[dep]:
                live.discard(dep)
        if remaining[key]:
            live.add(key)
        peak = max(peak, len(live))
    return peak


@pytest.mark.parametrize("leaves", [16, 64, 1000])
def test_order_tree_reduction_finishes_subtrees_first(leaves):
    g, _root = tree(leaves)
    prio = order(g)
    assert_respects_dependencies(g, prio)
    assert simulate_live(g, prio) <= math.log2(leaves) + 2


def test_order_tree_with_leaves_inserted_last():
    g, _root = tree(16)
    g = dict(sorted(g.items(), key=lambda kv: kv[0].startswith("leaf")))  # reductions first
    assert simulate_live(g, order(g)) <= 6


def test_order_prefers_deeper_dependency_first():
    g, last = chain(5)
    g["leaf"] = Task("leaf", inc, (0,))
    g["top"] = Task("top", add, (TaskRef("leaf"), TaskRef(last)))
    prio = order(g)
    assert prio[last] < prio["leaf"]  # the leaf is not held while the chain runs


def test_order_many_independent_chains_run_one_after_another():
    g = {}
    for c in range(5):
        for i in range(4):
            deps = (TaskRef(f"x{c}-{i - 1}"),) if i else (c,)
            g[f"x{c}-{i}"] = Task(f"x{c}-{i}", inc, deps)
    prio = order(g)
    ranked = sorted(prio, key=prio.__getitem__)
    assert ranked == [f"x{c}-{i}" for c in range(5) for i in range(4)]


def test_order_rejects_cycles():
    g = {"a": Task("a", inc, (TaskRef("b"),)), "b": Task("b", inc, (TaskRef("a"),))}
    with pytest.raises(ValueError, match="cycle"):
        order(g)
    g["c"] = Task("c", inc, (TaskRef("a"),))
    with pytest.raises(ValueError, match="cycle"):
        optimize(g, ["c"])


def test_order_ignores_external_dependencies():
    g = {"a": Task("a", inc, (TaskRef("ext"),)), "b": Task("b", inc, (TaskRef("a"),))}
    assert order(g) == {"a": 0, "b": 1}


def test_order_is_deterministic_across_hash_seeds():
    code = (
        "import sys\n"
        "from graphexec.graph.optimize import order\n"
        "from graphexec.graph.task import Task, TaskRef\n"
        "sys.setrecursionlimit(100)  # after the imports: order itself must not recurse\n"
        "g = {}\n"
        "for i in range(40):\n"
        "    deps = tuple(TaskRef(f'k{j}') for j in range(i) if (i * 7 + j * 3) % 5 == 0)\n"
        "    g[f'k{i}'] = Task(f'k{i}', max, deps or (i,))\n"
        "print(sorted(order(g).items()))\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(out.stdout)
    assert len(outputs) == 1


# --------------------------------------------------------------------- optimize


def test_optimize_pipeline():
    g, last = chain(50)
    g["unused"] = Task("unused", inc, (TaskRef("c-3"),))
    g["k"] = DataNode("k", 100)
    g["out"] = Task("out", add, (TaskRef(last), TaskRef("k")))
    out, prio = optimize(g, ["out"])
    assert list(out) == ["out"]  # culled, inlined, fused
    assert isinstance(out["out"], Fused) and prio == {"out": 0}
    assert execute(out, ["out"]) == {"out": 149}


def test_optimize_does_not_mutate_or_return_input():
    g = {"a": Task("a", inc, (1,))}
    out, _ = optimize(g, ["a"])
    assert out == g and out is not g


def test_optimize_100k_chain_without_recursion():
    g, last = chain(100_000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # any recursion on depth would fail loudly
    try:
        out, prio = optimize(g, [last])
    finally:
        sys.setrecursionlimit(limit)
    assert list(out) == [last] and prio == {last: 0}
    assert len(out[last].nodes) == 99_999  # the DataNode head was inlined


def test_order_and_cull_of_deep_chain_without_recursion():
    g, last = chain(20_000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        prio = order(g)
        culled = cull(g, [last])
        unfused, _ = optimize(g, [last], fuse_chains=False)
    finally:
        sys.setrecursionlimit(limit)
    assert prio[last] == 19_999 and len(culled) == 20_000 and len(unfused) == 19_999
