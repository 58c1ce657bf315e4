"""Task nodes: refs, argument resolution, fused chains, pickling."""

from __future__ import annotations

import pickle

import pytest

from graphexec.graph.options import DEFAULT_OPTIONS
from graphexec.graph.task import DataNode, Fused, Task, TaskRef, find_refs, substitute


def add(x, y=0):
    return x + y


def inc(x):
    return x + 1


def identity(*args, **kwargs):
    return args, kwargs


class SubRef(TaskRef):
    """Stands in for the client's ObjectRef, a TaskRef subclass."""

    __slots__ = ()


def test_taskref_equality_hash_repr():
    assert TaskRef("a") == TaskRef("a")
    assert TaskRef("a") != TaskRef("b")
    assert TaskRef("a") != "a"
    assert hash(TaskRef("a")) == hash(TaskRef("a"))
    assert len({TaskRef("a"), TaskRef("a"), TaskRef("b")}) == 2
    assert repr(TaskRef("a-1")) == "TaskRef('a-1')"
    assert SubRef("a") == TaskRef("a")


def test_taskref_pickles():
    ref = pickle.loads(pickle.dumps(TaskRef("x-1")))
    assert ref == TaskRef("x-1") and type(ref) is TaskRef


def test_find_refs_nested_containers():
    obj = [TaskRef("a"), (1, {"k": TaskRef("b"), "s": {TaskRef("c")}}), frozenset({TaskRef("d")})]
    assert find_refs(obj) == {"a", "b", "c", "d"}
    assert find_refs({"x": [SubRef("e")]}) == {"e"}
    assert find_refs("a") == set()
    assert find_refs([1, "a", b"b", None, 2.5]) == set()


def test_find_refs_accumulates_into_out():
    out = {"z"}
    assert find_refs(TaskRef("a"), out) is out
    assert out == {"a", "z"}


def test_substitute_deep_and_shallow():
    values = {"a": 1, "b": 2}
    obj = [TaskRef("a"), (TaskRef("b"), {"k": TaskRef("a")}), {TaskRef("missing")}]
    assert substitute(obj, values) == [1, (2, {"k": 1}), {TaskRef("missing")}]
    assert substitute(obj, values, deep=False) is obj
    assert substitute(TaskRef("a"), values, deep=False) == 1
    assert substitute(TaskRef("zz"), values) == TaskRef("zz")
    assert substitute(frozenset({TaskRef("a")}), values) == frozenset({1})


def test_task_dependencies_include_nested_and_kwargs():
    t = Task("t", identity, (TaskRef("a"), [TaskRef("b")]), {"k": {"x": TaskRef("c")}})
    assert t.dependencies == {"a", "b", "c"}
    assert Task("u", inc, (1,)).dependencies == frozenset()


def test_task_resolve_top_keeps_nested_refs():
    t = Task("t", identity, (TaskRef("a"), [TaskRef("b")]), {"k": TaskRef("b")})
    assert t.run({"a": 1, "b": 2}) == ((1, [TaskRef("b")]), {"k": 2})


def test_task_resolve_all_resolves_everywhere():
    t = Task(
        "t", identity, (TaskRef("a"), [TaskRef("b")]), {"k": {"x": TaskRef("b")}}, resolve="all"
    )
    assert t.run({"a": 1, "b": 2}) == ((1, [2]), {"k": {"x": 2}})


def test_task_with_args_keeps_identity_fields():
    opts = DEFAULT_OPTIONS.merge(num_cpus=2)
    t = Task("t", add, (TaskRef("a"),), resolve="all", options=opts)
    u = t.with_args((5,), {"y": 1})
    assert (u.key, u.func, u.resolve, u.options) == ("t", add, "all", opts)
    assert u.run({}) == 6 and u.dependencies == frozenset()
    assert t.args == (TaskRef("a"),)  # the original is untouched


def test_task_pickle_round_trip():
    opts = DEFAULT_OPTIONS.merge(max_retries=0, resources={"disk": 1})
    t = Task("t", add, (TaskRef("a"),), {"y": [TaskRef("b")]}, resolve="all", options=opts)
    _ = t.dependencies  # cached state must not break pickling
    u = pickle.loads(pickle.dumps(t))
    assert (u.key, u.func, u.args, u.kwargs, u.resolve, u.options) == (
        t.key,
        t.func,
        t.args,
        t.kwargs,
        t.resolve,
        t.options,
    )
    assert u.dependencies == {"a", "b"}
    assert u.run({"a": [1], "b": 2}) == [1, 2]
    assert "add" in repr(u)


def test_datanode():
    d = DataNode("d", [1, 2])
    assert d.run({}) == [1, 2] and d.dependencies == frozenset()
    assert d.options == DEFAULT_OPTIONS
    e = pickle.loads(pickle.dumps(d))
    assert (e.key, e.value) == ("d", [1, 2])
    assert repr(d) == "DataNode('d')"


def test_fused_runs_chain_with_private_keys():
    f = Fused(
        (
            DataNode("a", 1),
            Task("b", add, (TaskRef("a"), TaskRef("x"))),
            Task("c", inc, (TaskRef("b"),)),
        )
    )
    assert f.key == "c"
    assert f.dependencies == {"x"}
    values = {"x": 10}
    assert f.run(values) == 12
    assert values == {"x": 10}  # the caller's mapping is not written to
    assert f.options == DEFAULT_OPTIONS
    assert repr(f) == "Fused('c', 3 nodes)"


def test_fused_single_node_does_not_mutate_values():
    values = {"x": 1}
    assert Fused([Task("a", inc, (TaskRef("x"),))]).run(values) == 2
    assert values == {"x": 1}


def test_fused_options_are_the_last_nodes():
    opts = DEFAULT_OPTIONS.merge(num_gpus=1)
    f = Fused([DataNode("a", 1), Task("b", inc, (TaskRef("a"),), options=opts)])
    assert f.options == opts


def test_fused_requires_nodes():
    with pytest.raises(ValueError, match="at least one"):
        Fused([])


def test_fused_pickle_round_trip():
    f = Fused([Task("a", inc, (TaskRef("x"),)), Task("b", inc, (TaskRef("a"),))])
    _ = f.dependencies
    g = pickle.loads(pickle.dumps(f))
    assert g.key == "b" and g.dependencies == {"x"} and g.run({"x": 0}) == 2
