"""Conversion to and from Dask graphs: results equal ``dask.get``."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from operator import add, getitem, mul
from pathlib import Path

import cloudpickle
import dask
import numpy as np
import pandas as pd
import pytest
from dask._task_spec import Alias
from dask._task_spec import DataNode as DaskDataNode
from dask._task_spec import List as DaskList
from dask._task_spec import Task as DaskTask
from dask._task_spec import TaskRef as DaskRef

from graphexec.graph import dask_compat
from graphexec.graph.dask_compat import DaskTaskCall, from_dask, to_dask
from graphexec.graph.local import execute
from graphexec.graph.optimize import fuse, optimize
from graphexec.graph.task import DataNode, Fused, Task, TaskRef

ROOT = Path(__file__).resolve().parents[2]


def inc(x):
    return x + 1


def total(*xs):
    return sum(xs)


def pair(x, xs):
    return (x, xs)


flatten = dask_compat._flatten  # nested lists of keys, as dask's compute takes them


def nest(keys, values):
    """Rebuild ``__dask_keys__``' nesting around computed values."""
    if isinstance(keys, list):
        return [nest(k, values) for k in keys]
    return values[keys]


def compute_with_ours(collection, *, optimized=False):
    graph = dict(collection.__dask_graph__())
    keys = collection.__dask_keys__()
    ours, names = from_dask(graph, keys)
    wanted = [names[k] for k in flatten(keys)]
    if optimized:
        ours, _ = optimize(ours, wanted)
    values = execute(ours, wanted)
    by_dask_key = {k: values[names[k]] for k in flatten(keys)}
    finalize, extra = collection.__dask_postcompute__()
    return finalize(nest(keys, by_dask_key), *extra)


def ours_equal_dask(dsk, keys):
    graph, names = from_dask(dsk, keys)
    got = execute(graph, [names[k] for k in keys])
    expected = dask.get(dsk, keys)
    assert [got[names[k]] for k in keys] == list(expected)
    return graph, names


# --------------------------------------------------------------------- from_dask


def test_old_style_graph_with_tuple_keys_nested_tasks_and_aliases():
    dsk = {
        ("x", 0): 1,
        ("x", 1): (inc, ("x", 0)),
        "lit": [1, 2, 3],
        "y": (add, ("x", 1), (mul, ("x", 0), 10)),
        "z": (total, ("x", 0), ("x", 1), "y"),
        "lst": (sum, [("x", 0), ("x", 1), (inc, "y")]),
        "alias": "z",
        "strlit": (add, "not-a-key", "!"),
        "d": (pair, "y", {"a": ("x", 0), "b": [("x", 1)]}),
        "nested_list": [("x", 0), [("x", 1), (inc, "y")]],
    }
    keys = ["y", "z", "lst", "alias", "strlit", "d", "lit", "nested_list"]
    graph, names = ours_equal_dask(dsk, keys)
    assert names[("x", 0)] == "('x', 0)" and names["y"] == "y"
    assert all(isinstance(k, str) for k in graph)


def test_new_style_task_spec_graph():
    dsk = {
        "a": DaskDataNode("a", 5),
        "b": DaskTask("b", inc, DaskRef("a")),
        "c": DaskTask("c", pair, DaskList(DaskRef("a"), DaskRef("b")), DaskRef("b")),
        "d": Alias("d", "c"),
        "e": DaskTask("e", pair, DaskRef("a"), DaskTask(None, inc, DaskRef("b"))),
    }
    ours_equal_dask(dsk, ["b", "c", "d", "e"])


def test_keys_cull_and_nested_key_lists():
    dsk = {("x", i): (inc, i) for i in range(4)}
    dsk["unused"] = (inc, 0)
    graph, names = from_dask(dsk, [[("x", 0), ("x", 1)], [("x", 2)]])
    assert set(graph) == {names[("x", i)] for i in range(3)}
    graph, _ = from_dask(dsk)
    assert len(graph) == 5
    assert list(from_dask(dsk, ("x", 3))[0]) == ["('x', 3)"]
    assert list(from_dask({"a": 1, "b": 2}, "b")[0]) == ["b"]


def test_key_collisions_get_distinct_names():
    dsk = {("x", 0): 1, "('x', 0)": 2, "s": (add, ("x", 0), "('x', 0)")}
    graph, names = from_dask(dsk)
    assert names[("x", 0)] != names["('x', 0)"] == "('x', 0)"
    assert execute(graph, ["s"]) == {"s": 3}


def test_external_keys_are_refs_to_inputs():
    assert from_dask({"b": (add, ("ext", 0), (1,))})[0]["b"].dependencies == frozenset()
    dsk = {"b": DaskTask("b", add, DaskRef(("ext", 0)), 1)}  # e.g. a persisted future
    graph, names = from_dask(dsk)
    ext = names[("ext", 0)]
    assert graph["b"].dependencies == {ext}
    assert execute(graph, ["b"], inputs={ext: 41}) == {"b": 42}


def test_dask_delayed():
    @dask.delayed
    def load(i):
        return list(range(i))

    @dask.delayed
    def summarize(parts, scale=1):
        return sum(sum(p) for p in parts) * scale

    parts = [load(i) for i in range(5)]
    result = summarize(parts, scale=dask.delayed(3))
    assert compute_with_ours(result) == result.compute(scheduler="sync") == 30
    assert compute_with_ours(result, optimized=True) == 30


def test_dask_array():
    da = pytest.importorskip("dask.array")
    x = da.arange(36, chunks=5).reshape(6, 6).rechunk(4)
    y = (x + x.T).sum(axis=0) * 2
    expected = y.compute(scheduler="sync")
    np.testing.assert_array_equal(compute_with_ours(y), expected)
    np.testing.assert_array_equal(compute_with_ours(y, optimized=True), expected)
    z = x.mean()
    assert compute_with_ours(z) == z.compute(scheduler="sync")


def test_dask_dataframe():
    dd = pytest.importorskip("dask.dataframe")
    pdf = pd.DataFrame({"a": range(20), "b": [i % 3 for i in range(20)]})
    df = dd.from_pandas(pdf, npartitions=4)
    total_a = (df.a + 1).sum()
    assert compute_with_ours(total_a) == total_a.compute(scheduler="sync")
    grouped = df.groupby("b").a.sum()
    pd.testing.assert_series_equal(
        compute_with_ours(grouped, optimized=True), grouped.compute(scheduler="sync")
    )
    filtered = df[df.a > 5]
    pd.testing.assert_frame_equal(compute_with_ours(filtered), filtered.compute(scheduler="sync"))


def test_dask_task_call_pickles_and_names_itself():
    call = DaskTaskCall(DaskTask("z", add, DaskRef(("x", 0)), 5), (("x", 0),))
    for dumps in (pickle.dumps, cloudpickle.dumps):
        clone = pickle.loads(dumps(call))
        assert clone(1) == 6 and clone.__name__ == "add"
    assert "DaskTaskCall" in repr(call)


def test_from_dask_graph_pickles():
    dsk = {("x", 0): 1, "y": (add, ("x", 0), (mul, 2, 3))}
    graph, _names = from_dask(dsk)
    clone = cloudpickle.loads(cloudpickle.dumps(graph))
    assert execute(clone, ["y"]) == {"y": 7}


# --------------------------------------------------------------------- to_dask


def test_to_dask_both_resolution_modes_and_fused_nodes():
    graph = {
        "a": DataNode("a", 1),
        "b": Task("b", inc, (TaskRef("a"),)),
        "top": Task("top", pair, (TaskRef("b"), [TaskRef("a"), {"k": TaskRef("b")}])),
        "all": Task(
            "all",
            pair,
            (TaskRef("b"),),
            {"xs": [TaskRef("a"), {"k": (TaskRef("b"),)}, frozenset({TaskRef("a")})]},
            resolve="all",
        ),
        "c": Fused([Task("c0", inc, (TaskRef("b"),)), Task("c", inc, (TaskRef("c0"),))]),
    }
    keys = ["top", "all", "c"]
    dsk = to_dask(graph)
    assert "c0" in dsk  # fused nodes are expanded
    assert list(dask.get(dsk, keys)) == [execute(graph, keys)[k] for k in keys]
    expected = execute(graph, keys)
    assert expected["top"] == (2, [TaskRef("a"), {"k": TaskRef("b")}])


def test_round_trip_from_and_to_dask():
    dsk = {
        ("x", 0): 1,
        ("x", 1): (inc, ("x", 0)),
        "y": (add, ("x", 1), (mul, ("x", 0), 10)),
        "z": (sum, [("x", 0), "y"]),
    }
    graph, names = from_dask(dsk)
    back = to_dask(graph)
    assert dask.get(back, names["z"]) == dask.get(dsk, "z")
    fused_back = to_dask(fuse(graph, keep=[names["z"]]))
    assert dask.get(fused_back, names["z"]) == dask.get(dsk, "z")


def test_round_trip_to_and_from_dask():
    graph = {
        "a": DataNode("a", 2),
        "b": Task("b", pair, (TaskRef("a"), [TaskRef("a")]), resolve="all"),
        "c": Task("c", pair, (TaskRef("b"), (TaskRef("a"),))),
    }
    again, names = from_dask(to_dask(graph))
    assert names == {"a": "a", "b": "b", "c": "c"}
    assert execute(again, ["b", "c"]) == execute(graph, ["b", "c"])


def test_importing_does_not_import_dask():
    code = (
        "import sys\n"
        "import graphexec.graph.dask_compat\n"
        "assert 'dask' not in sys.modules, sorted(m for m in sys.modules if 'dask' in m)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_getitem_keys_like_dask_collections():
    dsk = {"t": (tuple, [1, 2, 3]), ("t", 1): (getitem, "t", 1)}
    ours_equal_dask(dsk, [("t", 1)])
