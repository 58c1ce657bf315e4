"""The sequential reference evaluator."""

from __future__ import annotations

import sys
import weakref

import pytest

from graphexec.graph.local import execute
from graphexec.graph.task import DataNode, Fused, Task, TaskRef


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def add_list(x, ys):
    return x + sum(ys)


def boom(*_):
    raise ZeroDivisionError("boom")


class Blob:
    """Something a weakref can watch."""


def test_execute_returns_requested_keys_in_order():
    g = {
        "a": DataNode("a", 1),
        "b": Task("b", inc, (TaskRef("a"),)),
        "c": Task("c", add, (TaskRef("a"), TaskRef("b"))),
    }
    assert execute(g, ["c", "a"]) == {"c": 3, "a": 1}
    assert list(execute(g, ["c", "a"])) == ["c", "a"]
    assert execute(g, ["b", "b"]) == {"b": 2}
    assert execute(g, []) == {}


def test_execute_runs_only_what_is_needed():
    g = {"bad": Task("bad", boom), "ok": Task("ok", inc, (1,))}
    assert execute(g, ["ok"]) == {"ok": 2}


def test_execute_each_node_runs_once():
    calls = []

    def record(x):
        calls.append(x)
        return x

    g = {"a": Task("a", record, (1,))}
    g.update({f"u{i}": Task(f"u{i}", inc, (TaskRef("a"),)) for i in range(5)})
    execute(g, [f"u{i}" for i in range(5)])
    assert calls == [1]


def test_external_inputs():
    g = {"b": Task("b", add_list, (TaskRef("x"), [TaskRef("y")]), resolve="all")}
    assert execute(g, ["b"], inputs={"x": 1, "y": 2}) == {"b": 3}
    assert execute(g, ["x"], inputs={"x": 1}) == {"x": 1}


def test_missing_external_input_is_named_before_anything_runs():
    calls = []
    g = {
        "a": Task("a", calls.append, (1,)),
        "b": Task("b", add, (TaskRef("a"), TaskRef("missing-key"))),
    }
    with pytest.raises(KeyError, match="missing-key"):
        execute(g, ["b"])
    assert calls == []
    with pytest.raises(KeyError, match="nowhere"):
        execute(g, ["nowhere"])


def test_graph_wins_over_inputs():
    g = {"a": DataNode("a", 1)}
    assert execute(g, ["a"], inputs={"a": 99}) == {"a": 1}


def test_task_exceptions_propagate_unchanged():
    g = {"a": Task("a", boom, (1,)), "b": Task("b", inc, (TaskRef("a"),))}
    with pytest.raises(ZeroDivisionError, match="boom"):
        execute(g, ["b"])


def test_resolution_modes():
    g = {
        "a": DataNode("a", 1),
        "top": Task("top", lambda x, xs: (x, xs), (TaskRef("a"), [TaskRef("a")])),
        "all": Task("all", lambda x, xs: (x, xs), (TaskRef("a"), [TaskRef("a")]), resolve="all"),
    }
    assert execute(g, ["top", "all"]) == {"top": (1, [TaskRef("a")]), "all": (1, [1])}


def test_fused_nodes():
    g = {
        "x": DataNode("x", 1),
        "c": Fused([Task("b", inc, (TaskRef("x"),)), Task("c", inc, (TaskRef("b"),))]),
    }
    assert execute(g, ["c"]) == {"c": 3}


def test_intermediate_values_are_released():
    refs = []

    def make():
        blob = Blob()
        refs.append(weakref.ref(blob))
        return blob

    def check(blob, i):
        return i

    g = {"b0": Task("b0", make)}
    for i in range(1, 4):
        g[f"u{i}"] = Task(f"u{i}", check, (TaskRef("b0"), i))
    g["next"] = Task(
        "next", lambda *xs: refs[0]() is None, tuple(TaskRef(f"u{i}") for i in (1, 2, 3))
    )
    assert execute(g, ["next"]) == {"next": True}


def test_cycles_are_rejected():
    g = {"a": Task("a", inc, (TaskRef("b"),)), "b": Task("b", inc, (TaskRef("a"),))}
    with pytest.raises(ValueError, match="cycle"):
        execute(g, ["a"])


def test_deep_chain_is_iterative():
    g = {"c-0": DataNode("c-0", 0)}
    for i in range(1, 20_000):
        g[f"c-{i}"] = Task(f"c-{i}", inc, (TaskRef(f"c-{i - 1}"),))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        assert execute(g, ["c-19999"]) == {"c-19999": 19_999}
    finally:
        sys.setrecursionlimit(limit)
