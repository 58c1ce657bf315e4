"""The scheduler's actor table, driven by hand: lifecycle, placement, resources, lifetime.

No network: a :class:`SchedulerState` with one node of two 1-CPU workers; node managers,
actor workers and clients are played by calling ``handle_*`` methods and reading the
``Send`` instructions that come back.
"""

from __future__ import annotations

from typing import Any

import pytest

from graphexec.errors import InvalidTransition
from graphexec.scheduler.state import SchedulerState, Send


def actor_spec(actor_id: str = "actor-1", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "actor": actor_id,
        "class_name": "Counter",
        "fid": "fid-1",
        "payload": b"",
        "demand": {"CPU": 1.0},
        "hold": {},
        "max_restarts": 0,
        "methods": {"incr": {"num_returns": 1}},
    }
    spec.update(extra)
    return spec


def task_spec(key: str, deps: list[str]) -> dict[str, Any]:
    return {
        "key": key,
        "payload": b"",
        "deps": deps,
        "fids": [],
        "prefix": "t",
        "priority": 0,
        "demand": {"CPU": 1.0},
        "retries": 3,
    }


@pytest.fixture
def state() -> SchedulerState:
    st = SchedulerState(validate=True)
    st.handle_add_node("node-1", {"CPU": 2.0, "memory": 1e9, "disk": 1.0})
    st.handle_add_worker("w1", "tcp://w1", "node-1", 1.0)
    st.handle_add_worker("w2", "tcp://w2", "node-1", 1.0)
    st.handle_client_connected("client-1")
    return st


def ops(out: list[Send], name: str) -> list[Send]:
    return [s for s in out if s.msg.get("op") == name]


def start(state: SchedulerState, actor_id: str = "actor-1", **extra: Any) -> str:
    """Create an actor and play its node manager and worker until it is alive."""
    answer, out = state.actors.create("client-1", actor_spec(actor_id, **extra))
    assert "error" not in answer
    (launch,) = ops(out, "start-actor")
    assert launch.dest == ("node", "node-1")
    worker_id = launch.msg["worker"]
    out = state.handle_add_worker(worker_id, f"tcp://{worker_id}", "node-1", 0.0, 0, actor_id)
    (init,) = ops(out, "actor-init")
    assert init.dest == ("worker", worker_id)
    out = state.actors.ready(state.workers[worker_id], actor_id, init.msg["incarnation"], "tcp://a")
    (info,) = ops(out, "actor-info")
    assert info.msg["status"] == "alive" and info.msg["address"] == "tcp://a"
    state.validate_state()
    return worker_id


def test_lifecycle_pending_alive_dead(state: SchedulerState) -> None:
    worker_id = start(state)
    rec = state.actors.actors["actor-1"]
    assert rec.status == "alive" and state.workers[worker_id].actor == "actor-1"
    out = state.handle_remove_worker(worker_id)
    (info,) = ops(out, "actor-info")
    assert info.msg["status"] == "dead" and "died unexpectedly" in info.msg["cause"]["message"]
    assert info.dest == ("client", "client-1")


def test_restart_reruns_constructor_in_a_new_process(state: SchedulerState) -> None:
    worker_id = start(state, max_restarts=1)
    out = state.handle_remove_worker(worker_id)
    assert [s.msg["status"] for s in ops(out, "actor-info")] == ["restarting"]
    (launch,) = ops(out, "start-actor")
    assert launch.msg["worker"] != worker_id
    new = launch.msg["worker"]
    out = state.handle_add_worker(new, f"tcp://{new}", "node-1", 0.0, 0, "actor-1")
    (init,) = ops(out, "actor-init")
    assert init.msg["incarnation"] == 2
    out = state.actors.ready(state.workers[new], "actor-1", 2, "tcp://b")
    assert ops(out, "actor-info")[0].msg["status"] == "alive"
    # restarts used up: the next death is final
    out = state.handle_remove_worker(new)
    assert ops(out, "actor-info")[0].msg["status"] == "dead"
    assert "after 1 restart" in ops(out, "actor-info")[0].msg["cause"]["message"]


def test_stale_worker_of_a_restarted_actor_is_killed(state: SchedulerState) -> None:
    start(state)
    out = state.handle_add_worker("w-stale", "tcp://x", "node-1", 0.0, 0, "actor-1")
    assert ops(out, "kill-worker")[0].msg["worker"] == "w-stale"


def test_constructor_error_kills_the_actor_with_its_cause(state: SchedulerState) -> None:
    _, out = state.actors.create("client-1", actor_spec(max_restarts=3))
    worker_id = ops(out, "start-actor")[0].msg["worker"]
    state.handle_add_worker(worker_id, "tcp://w", "node-1", 0.0, 0, "actor-1")
    error = {"type": "ValueError", "message": "bad", "traceback": "", "pickled": None}
    out = state.actors.constructor_failed(state.workers[worker_id], "actor-1", error)
    (info,) = ops(out, "actor-info")
    assert info.msg["status"] == "dead" and info.msg["cause"]["constructor"] is True
    assert ops(out, "kill-worker")  # no restart for a constructor that raises
    assert not ops(state.handle_remove_worker(worker_id), "start-actor")


def test_kill_with_and_without_restart(state: SchedulerState) -> None:
    worker_id = start(state, max_restarts=1)
    out = state.actors.kill("actor-1", no_restart=False)
    assert ops(out, "kill-worker")[0].msg["worker"] == worker_id
    out = state.handle_remove_worker(worker_id)
    assert ops(out, "actor-info")[0].msg["status"] == "restarting"
    out = state.actors.kill("actor-1", no_restart=True)
    assert ops(out, "actor-info")[0].msg["status"] == "dead"
    assert "graphexec.kill" in ops(out, "actor-info")[0].msg["cause"]["message"]


def test_invalid_transition_is_refused(state: SchedulerState) -> None:
    start(state)
    rec = state.actors.actors["actor-1"]
    rec.status = "dead"
    with pytest.raises(InvalidTransition):
        state.actors._move(rec, "alive")


def test_names_are_unique_per_namespace(state: SchedulerState) -> None:
    answer, _ = state.actors.create("client-1", actor_spec("a1", name="svc"))
    assert answer["status"] == "pending"
    answer, out = state.actors.create("client-1", actor_spec("a2", name="svc"))
    assert answer["error"] == "ValueError" and "already exists" in answer["message"]
    assert out == []
    answer, _ = state.actors.create("client-1", actor_spec("a3", name="svc", get_if_exists=True))
    assert answer["actor"] == "a1"
    answer, _ = state.actors.create("client-1", actor_spec("a4", name="svc", namespace="other"))
    assert answer["actor"] == "a4"
    assert state.actors.lookup("client-1", "svc", "default")["actor"] == "a1"  # type: ignore[index]
    assert state.actors.lookup("client-1", "nope", "default") is None


def test_held_cpus_are_taken_from_tasks_and_given_back(state: SchedulerState) -> None:
    worker_id = start(state, demand={"CPU": 2.0}, hold={"CPU": 2.0})
    assert state.available_resources()["CPU"] == 0.0
    state.handle_remove_worker(worker_id)  # dead: its CPUs come back
    assert state.available_resources()["CPU"] == 2.0


def test_default_actor_holds_no_cpu(state: SchedulerState) -> None:
    start(state)
    assert state.available_resources()["CPU"] == 2.0


def test_infeasible_actor_waits_for_a_node(state: SchedulerState) -> None:
    _, out = state.actors.create("client-1", actor_spec(demand={"GPU": 1.0}, hold={"GPU": 1.0}))
    assert not ops(out, "start-actor")
    summary = state.cluster_resources and state.actors.summaries()[0]
    assert summary["state"] == "PENDING" and "no node has" in summary["waiting"]
    out = state.handle_add_node("node-2", {"CPU": 1.0, "GPU": 1.0})
    assert ops(out, "start-actor")[0].dest == ("node", "node-2")


def test_held_resources_busy_then_free(state: SchedulerState) -> None:
    start(state, "a1", demand={"disk": 1.0}, hold={"disk": 1.0})
    _, out = state.actors.create(
        "client-1", actor_spec("a2", demand={"disk": 1.0}, hold={"disk": 1.0})
    )
    assert not ops(out, "start-actor")
    assert "to be free" in state.actors.actors["a2"].waiting
    out = state.actors.kill("a1")
    launch = ops(out, "start-actor") or ops(
        state.handle_remove_worker(state.actors.actors["a1"].worker.id),
        "start-actor",  # type: ignore[union-attr]
    )
    assert launch and launch[0].msg["actor"] == "a2"


def test_driver_exit_ends_non_detached_actors_only(state: SchedulerState) -> None:
    start(state, "plain")
    start(state, "kept", detached=True, name="kept")
    out = state.handle_client_disconnected("client-1")
    assert [s.msg["worker"] for s in ops(out, "kill-worker")] == [
        state.actors.actors["plain"].worker.id  # type: ignore[union-attr]
    ]
    assert state.actors.actors["plain"].status == "dead"
    assert state.actors.actors["kept"].status == "alive"


def test_dropped_handles_end_an_unnamed_actor(state: SchedulerState) -> None:
    start(state)
    state.actors.watch("client-2", "actor-1")  # another process holds a handle
    assert state.actors.unwatch("client-1", "actor-1") == []  # still referenced
    out = state.actors.unwatch("client-2", "actor-1")
    assert ops(out, "kill-worker")
    assert state.actors.actors["actor-1"].status == "dead"


def test_watch_of_unknown_actor_says_dead(state: SchedulerState) -> None:
    (info,) = state.actors.watch("client-1", "actor-missing")
    assert info.msg["status"] == "dead" and "not known" in info.msg["cause"]["message"]


def test_actor_workers_get_no_tasks(state: SchedulerState) -> None:
    worker_id = start(state)
    spec = task_spec("t1", [])
    out = state.handle_update_graph("client-1", [spec], ["t1"])
    assert all(s.dest != ("worker", worker_id) for s in ops(out, "compute"))


def test_external_key_feeds_a_task_once_published(state: SchedulerState) -> None:
    state.handle_expect_keys("client-1", ["call-1"])
    spec = task_spec("t1", ["call-1"])
    out = state.handle_update_graph("client-1", [spec], ["t1"])
    assert not ops(out, "compute")
    assert "actor call" in state.explain_pending(["call-1"])["call-1"]
    out = state.handle_put("client-1", "call-1", [b"x"], 1)
    assert ops(out, "compute")[0].msg["key"] == "t1"


def test_external_key_failure_fails_dependents(state: SchedulerState) -> None:
    state.handle_expect_keys("client-1", ["call-1"])
    spec = task_spec("t1", ["call-1"])
    state.handle_update_graph("client-1", [spec], ["t1"])
    error = {"type": "ValueError", "message": "bad", "traceback": "", "pickled": None}
    out = state.handle_key_failed("client-1", "call-1", error)
    (erred,) = [s for s in out if s.msg.get("op") == "key-erred" and s.msg["key"] == "t1"]
    assert erred.msg["origin"] == "call-1"
