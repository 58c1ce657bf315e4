"""Task payloads: functions by id, graph nodes round-tripped, clear errors."""

from __future__ import annotations

import gc
import pickle
import sys
import threading
from typing import Any

import numpy as np
import pytest

from graphexec.graph.options import DEFAULT_OPTIONS
from graphexec.graph.task import DataNode, Fused, Task, TaskRef
from graphexec.protocol.tasks import FunctionRegistry, dumps_task, loads_task


def add(x: int, y: int = 0) -> int:
    return x + y


def inc(x: int) -> int:
    return x + 1


def total(x: int, y: list[int]) -> int:
    return x + sum(y)


def no_functions(fid: str) -> Any:
    raise AssertionError(f"load_function({fid!r}) called for a payload without function ids")


class Loader:
    """``load_function`` backed by a registry's blobs, counting the calls."""

    def __init__(self, registry: FunctionRegistry) -> None:
        self.registry = registry
        self.calls: list[str] = []

    def __call__(self, fid: str) -> Any:
        self.calls.append(fid)
        return pickle.loads(self.registry.blobs[fid])


# ------------------------------------------------------------------------------ registry


def test_register_gives_one_stable_id_per_function() -> None:
    registry = FunctionRegistry()
    fid = registry.register(add)
    assert registry.register(add) == fid
    assert registry.lookup(add) == fid
    assert registry.register(inc) != fid
    assert set(registry.blobs) == {fid, registry.register(inc)}
    assert pickle.loads(registry.blobs[fid])(2, 3) == 5


def test_lookup_of_an_unregistered_callable_is_none() -> None:
    registry = FunctionRegistry()
    assert registry.lookup(add) is None
    assert registry.lookup(object()) is None


def test_builtins_that_cannot_be_weakly_referenced_are_registered() -> None:
    registry = FunctionRegistry()
    fid = registry.register(len)
    assert registry.lookup(len) == fid
    assert pickle.loads(registry.blobs[fid]) is len


def test_dead_functions_are_forgotten_so_their_ids_cannot_be_reused() -> None:
    registry = FunctionRegistry()

    def make() -> Any:
        def local(x: int) -> int:
            return x

        return local

    func = make()
    fid = registry.register(func)
    assert registry.lookup(func) == fid
    del func
    gc.collect()
    assert registry._ids == {}  # another object at the same address must not match
    assert fid in registry.blobs  # the bytes stay for workers that still need them


# ------------------------------------------------------------------------------ round trips


def test_task_with_registered_function_travels_by_id() -> None:
    registry = FunctionRegistry()
    fid = registry.register(add)
    node = Task("t", add, (TaskRef("x"), 2))
    payload = dumps_task(node, registry)
    assert fid.encode() in payload
    assert b"add" not in payload  # neither the function's name nor its code
    loader = Loader(registry)
    back = loads_task(payload, loader)
    assert loader.calls == [fid]
    assert isinstance(back, Task)
    assert back.key == "t"
    assert back.dependencies == frozenset({"x"})
    assert back.run({"x": 40}) == 42


def test_one_function_many_tasks_carries_its_bytes_once() -> None:
    registry = FunctionRegistry()
    registry.register(inc)
    payloads = [dumps_task(Task(f"t{i}", inc, (i,)), registry) for i in range(100)]
    assert len(registry.blobs) == 1
    assert all(len(p) < 200 for p in payloads)


def test_task_with_unregistered_function_travels_by_value_or_reference() -> None:
    node = Task("t", add, (1,), {"y": 2})
    back = loads_task(dumps_task(node, FunctionRegistry()), no_functions)
    assert back.run({}) == 3


def test_options_resolve_and_kwargs_survive() -> None:
    registry = FunctionRegistry()
    registry.register(total)
    options = DEFAULT_OPTIONS.merge(num_cpus=2, max_retries=0, resources={"disk": 1})
    node = Task("t", total, (TaskRef("x"),), {"y": [TaskRef("y")]}, resolve="all", options=options)
    back = loads_task(dumps_task(node, registry), Loader(registry))
    assert back.options == options
    assert back.resolve == "all"
    assert back.kwargs == {"y": [TaskRef("y")]}
    assert back.dependencies == frozenset({"x", "y"})
    assert back.run({"x": 1, "y": 2}) == 3  # resolve="all": the nested ref is resolved too
    default = loads_task(dumps_task(Task("d", total, (1, [])), registry), Loader(registry))
    assert default.options is DEFAULT_OPTIONS
    assert default.resolve == "top"


def test_fused_chain_round_trip() -> None:
    registry = FunctionRegistry()
    fid = registry.register(inc)
    chain = Fused(
        [Task("a", inc, (TaskRef("x"),))]
        + [Task(f"c{i}", inc, (TaskRef("a" if i == 0 else f"c{i - 1}"),)) for i in range(50)]
    )
    loader = Loader(registry)
    back = loads_task(dumps_task(chain, registry), loader)
    assert isinstance(back, Fused)
    assert back.key == "c49"
    assert [n.key for n in back.nodes] == [n.key for n in chain.nodes]
    assert back.dependencies == frozenset({"x"})
    assert back.run({"x": 0}) == 51
    assert set(loader.calls) == {fid}


def test_fused_with_data_node_round_trip() -> None:
    registry = FunctionRegistry()
    registry.register(add)
    chain = Fused([DataNode("d", 5), Task("t", add, (TaskRef("d"), TaskRef("x")))])
    back = loads_task(dumps_task(chain, registry), Loader(registry))
    assert isinstance(back.nodes[0], DataNode)
    assert back.dependencies == frozenset({"x"})
    assert back.run({"x": 1}) == 6


def test_data_node_round_trip() -> None:
    value = {"array": np.arange(10_000), "text": "é"}
    back = loads_task(dumps_task(DataNode("d", value), FunctionRegistry()), no_functions)
    assert isinstance(back, DataNode)
    assert back.key == "d"
    np.testing.assert_array_equal(back.run({})["array"], value["array"])
    assert back.run({})["text"] == "é"


def test_lambdas_in_arguments_fall_back_to_cloudpickle() -> None:
    registry = FunctionRegistry()
    registry.register(add)
    offset = 10
    node = Task("t", add, (TaskRef("x"),), {"y": (lambda: offset)()})
    back = loads_task(dumps_task(node, registry), Loader(registry))
    assert back.run({"x": 1}) == 11

    def apply(f: Any, x: int) -> int:
        return int(f(x))

    node = Task("u", apply, (lambda v: v * offset, TaskRef("x")))  # unregistered closure
    back = loads_task(dumps_task(node, registry), Loader(registry))
    assert back.run({"x": 3}) == 30


def test_unpicklable_arguments_raise_type_error_naming_the_task() -> None:
    registry = FunctionRegistry()
    registry.register(add)
    node = Task("needs-a-lock", add, (threading.Lock(),))
    with pytest.raises(TypeError, match="'needs-a-lock'") as info:
        dumps_task(node, registry)
    assert "create the object inside the task" in str(info.value)
    assert info.value.__cause__ is not None


def test_unpicklable_argument_inside_a_fused_chain_names_the_chain() -> None:
    chain = Fused([Task("a", inc, (1,)), Task("b", add, (TaskRef("a"), threading.Lock()))])
    with pytest.raises(TypeError, match="'b'"):
        dumps_task(chain, FunctionRegistry())


def test_not_a_graph_node_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not a graph node"):
        dumps_task(("t", add, 1), FunctionRegistry())


def test_unknown_payload_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown task payload kind 'z'"):
        loads_task(pickle.dumps(("z", "k")), no_functions)


def _get_x(p: Any) -> int:
    return int(p.x)


def test_arguments_defined_in_main_travel_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    main = sys.modules["__main__"]
    # a class defined in the user's script
    point = type("MainPoint", (), {"__module__": "__main__"})
    monkeypatch.setattr(main, "MainPoint", point, raising=False)
    p = point()
    p.x = 7
    registry = FunctionRegistry()
    registry.register(_get_x)
    payload = dumps_task(Task("t", _get_x, (p,)), registry)
    # in the worker process, __main__ is the worker's own module
    monkeypatch.delattr(main, "MainPoint")
    back = loads_task(payload, Loader(registry))
    assert back.run({}) == 7
