"""The scheduler's view of node object stores: where large objects live and who reads them."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

# reuse the simulator of test_state.py (tests are not a package)
_spec = importlib.util.spec_from_file_location(
    "_sched_sim", os.path.join(os.path.dirname(__file__), "test_state.py")
)
assert _spec is not None and _spec.loader is not None
_sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sim)
Sim, spec, msgs, computed, BIG = _sim.Sim, _sim.spec, _sim.msgs, _sim.computed, _sim.BIG


def two_nodes() -> Any:
    sim = Sim()
    sim.do("handle_add_node", "n1", {"CPU": 1, "a": 1}, "127.0.0.1", "tcp://store1")
    sim.do("handle_add_node", "n2", {"CPU": 1, "b": 1}, "127.0.0.1", "tcp://store2")
    sim.worker("w1", "n1")
    sim.worker("w2", "n2")
    return sim


def finish_in_store(sim: Any, key: str) -> list[Any]:
    worker, run_id = sim.runs[key]
    return sim.do("handle_task_finished", worker, key, run_id, BIG, None, 0.5, True)


def test_store_objects_are_read_from_the_node_store_or_copied_from_it() -> None:
    sim = two_nodes()
    sim.submit(
        [
            spec("x", demand={"CPU": 1, "a": 1}),
            spec("same", ["x"], demand={"CPU": 1, "a": 1}),
            spec("other", ["x"], demand={"CPU": 1, "b": 1}),
        ],
        wants=["same", "other"],
    )
    out = finish_in_store(sim, "x")
    deps = {m["key"]: m["deps"] for m in msgs(out, "compute")}
    assert deps["same"] == {"x": ["store"]}  # same node: read it in place
    assert deps["other"] == {"x": ["remote-store", ["tcp://store1"]]}
    ts = sim.state.tasks["x"]
    assert {n.id for n in ts.store_nodes} == {"n1"} and not ts.who_has


def test_a_copy_into_another_store_is_recorded_and_freed_everywhere() -> None:
    sim = two_nodes()
    sim.submit([spec("x", demand={"CPU": 1, "a": 1})], wants=["x"])
    finish_in_store(sim, "x")
    sim.do("handle_stored_copy", "w2", "x")
    assert {n.id for n in sim.state.tasks["x"].store_nodes} == {"n1", "n2"}
    out = sim.do("handle_release_keys", "c", ["x"])
    assert {s.dest for s in out if s.msg["op"] == "free-keys"} == {("node", "n1"), ("node", "n2")}
    assert sim.state.tasks == {}


def test_worker_death_keeps_store_objects_node_death_loses_them() -> None:
    sim = two_nodes()
    sim.submit([spec("x", demand={"CPU": 1, "a": 1})], wants=["x"])
    finish_in_store(sim, "x")
    sim.do("handle_remove_worker", "w1")
    assert sim.status("x") == "memory"  # the node's store still has it
    sim.worker("w1b", "n1")
    out = sim.do("handle_remove_node", "n1")
    # gone with its node, wanted by the client: recomputed (it needs resource "a": no node)
    assert sim.status("x") in ("no-worker", "queued", "processing")
    assert msgs(out, "key-in-memory") == []


def test_a_put_into_a_store_is_located_on_its_node() -> None:
    sim = two_nodes()
    sim.do("handle_put", "c", "p", [], BIG, node_id="n2")
    assert {n.id for n in sim.state.tasks["p"].store_nodes} == {"n2"}
    out = sim.submit([spec("use", ["p"], demand={"CPU": 1, "a": 1})], wants=["use"])
    assert computed(out) == [("w1", "use")]
    (compute,) = msgs(out, "compute")
    assert compute["deps"] == {"p": ["remote-store", ["tcp://store2"]]}


def test_workers_registering_before_their_node_get_its_resources() -> None:
    sim = Sim()
    sim.worker("w1", "late")  # a placeholder node with the worker's CPU only
    sim.do("handle_add_node", "late", {"CPU": 2, "GPU": 1}, "127.0.0.1", "tcp://s")
    assert sim.state.cluster_resources() == {"CPU": 2, "GPU": 1}
    assert sim.state.nodes["late"].store_address == "tcp://s"
