"""The worker's sans-IO task state machine, driven by hand.

``WorkerTaskState`` takes scheduler messages and executor/fetch events and returns
instructions; nothing here runs a task or opens a connection.
"""

from __future__ import annotations

from typing import Any

import pytest

from graphexec.errors import InvalidTransition
from graphexec.worker.state import WorkerTask, WorkerTaskState


def compute(
    key: str, deps: dict[str, list[Any]] | None = None, *, run_id: int = 1, cpus: float = 1.0
) -> dict[str, Any]:
    return {
        "op": "compute",
        "key": key,
        "payload": b"",
        "deps": deps or {},
        "cpus": cpus,
        "run_id": run_id,
        "retryable": True,
    }


class Worker:
    """A state machine over a fake local store (a set of keys); validates every step."""

    def __init__(self, *local: str) -> None:
        self.store = set(local)
        self.state = WorkerTaskState(self.store.__contains__)

    def do(self, method: str, *args: Any) -> Any:
        out = getattr(self.state, method)(*args)
        self.state.validate_state()
        return out

    def status(self, key: str) -> str:
        return self.state.tasks[key].status


def kinds(instructions: list[tuple[Any, ...]]) -> list[str]:
    return [ins[0] for ins in instructions]


def test_task_with_local_inputs_is_ready_at_once() -> None:
    w = Worker("a")
    out = w.do("handle_compute", compute("b", {"a": ["local"]}, run_id=7, cpus=0.5))
    assert kinds(out) == ["execute"]
    task = out[0][1]
    assert isinstance(task, WorkerTask)
    assert (task.key, task.status, task.run_id, task.cpus) == ("b", "ready", 7, 0.5)
    assert w.state.fetching == {}


def test_inline_inputs_are_stored_and_do_not_wait() -> None:
    w = Worker()
    out = w.do("handle_compute", compute("b", {"a": ["inline", [b"frame"]]}))
    assert out[0] == ("store-inline", "a", [b"frame"])
    assert kinds(out) == ["store-inline", "execute"]


def test_remote_inputs_are_fetched_then_the_task_is_ready() -> None:
    w = Worker()
    out = w.do(
        "handle_compute",
        compute("c", {"a": ["remote", ["tcp://x"]], "b": ["remote", ["tcp://y", "tcp://z"]]}),
    )
    assert sorted(out) == [("fetch", "a", ["tcp://x"]), ("fetch", "b", ["tcp://y", "tcp://z"])]
    assert w.status("c") == "fetching"
    assert w.state.tasks["c"].missing == {"a", "b"}
    assert w.do("handle_fetched", "a") == []
    assert w.status("c") == "fetching"
    out = w.do("handle_fetched", "b")
    assert kinds(out) == ["execute"]
    assert w.status("c") == "ready"
    assert w.state.fetching == {}


def test_local_input_missing_from_storage_is_fetched() -> None:
    w = Worker()  # the scheduler thinks we hold "a", but storage does not have it
    out = w.do("handle_compute", compute("b", {"a": ["local"]}))
    assert out == [("fetch", "a", [])]


def test_one_fetch_serves_every_task_waiting_for_the_key() -> None:
    w = Worker()
    out1 = w.do("handle_compute", compute("b", {"a": ["remote", ["tcp://x"]]}))
    out2 = w.do("handle_compute", compute("c", {"a": ["remote", ["tcp://x"]]}))
    assert kinds(out1) == ["fetch"]
    assert out2 == []
    out = w.do("handle_fetched", "a")
    assert sorted(ins[1].key for ins in out) == ["b", "c"]
    # a second notification for the same key is harmless
    assert w.do("handle_fetched", "a") == []


def test_execute_then_done_reports_and_forgets() -> None:
    w = Worker()
    (ins,) = w.do("handle_compute", compute("a"))
    task = ins[1]
    assert w.do("handle_started", "a") is True
    assert w.status("a") == "executing"
    assert w.do("handle_started", "a") is False  # already running
    report = {"op": "task-finished", "key": "a", "run_id": 1}
    assert w.do("handle_done", task, report) == [("send", report)]
    assert w.state.tasks == {}
    assert w.do("handle_started", "a") is False  # unknown now


def test_fetch_failure_errs_the_waiting_tasks_retryably() -> None:
    w = Worker()
    w.do("handle_compute", compute("b", {"a": ["remote", ["tcp://x"]]}, run_id=3))
    w.do("handle_compute", compute("c", {"a": ["remote", ["tcp://x"]]}, run_id=4))
    out = w.do("handle_fetch_failed", "a", "tcp://x: connection refused")
    assert sorted(op["key"] for kind, op in out) == ["b", "c"]
    assert set(kinds(out)) == {"send"}
    op = next(op for _, op in out if op["key"] == "b")
    assert op["op"] == "task-erred"
    assert op["run_id"] == 3
    assert op["retryable"] is True
    assert op["exception"]["type"] == "ObjectLostError"
    assert "could not fetch input a: tcp://x: connection refused" in op["exception"]["message"]
    assert w.state.tasks == {}
    assert w.state.fetching == {}


def test_fetch_failure_of_an_unknown_key_does_nothing() -> None:
    w = Worker()
    assert w.do("handle_fetch_failed", "nope", "gone") == []


def test_task_waiting_on_two_fetches_errs_once() -> None:
    w = Worker()
    w.do("handle_compute", compute("c", {"a": ["remote", ["x"]], "b": ["remote", ["y"]]}))
    out = w.do("handle_fetch_failed", "a", "down")
    assert [op["key"] for _, op in out] == ["c"]
    assert w.do("handle_fetch_failed", "b", "down") == []
    assert w.do("handle_fetched", "b") == []


def test_cancel_a_ready_task_unqueues_it() -> None:
    w = Worker()
    (ins,) = w.do("handle_compute", compute("a"))
    assert w.do("handle_cancel", "a") == [("unqueue", "a")]
    assert w.state.tasks == {}
    assert ins[1].status == "cancelled"
    assert w.do("handle_started", "a") is False  # the executor must not run it
    assert w.do("handle_cancel", "a") == []


def test_cancel_a_fetching_task_ignores_the_later_fetch() -> None:
    w = Worker()
    w.do("handle_compute", compute("b", {"a": ["remote", ["tcp://x"]]}))
    assert w.do("handle_cancel", "b") == []
    assert w.state.tasks == {}
    assert w.do("handle_fetched", "a") == []


def test_cancel_an_executing_task_discards_its_result() -> None:
    w = Worker()
    (ins,) = w.do("handle_compute", compute("a"))
    w.do("handle_started", "a")
    assert w.do("handle_cancel", "a") == []
    report = {"op": "task-finished", "key": "a"}
    # the result the executor still produces is dropped from storage, never reported
    assert w.do("handle_done", ins[1], report) == [("discard", "a")]


def test_newer_run_supersedes_an_executing_one() -> None:
    w = Worker()
    (old,) = w.do("handle_compute", compute("a", run_id=1))
    w.do("handle_started", "a")
    (new,) = w.do("handle_compute", compute("a", run_id=2))
    assert old[1].status == "cancelled"
    assert w.state.tasks["a"] is new[1]
    # the old run's result must not be reported, nor delete the new run's slot
    assert w.do("handle_done", old[1], {"op": "task-finished", "run_id": 1}) == []
    w.do("handle_started", "a")
    report = {"op": "task-finished", "key": "a", "run_id": 2}
    assert w.do("handle_done", new[1], report) == [("send", report)]


def test_newer_run_unqueues_a_superseded_ready_task() -> None:
    w = Worker()
    w.do("handle_compute", compute("a", run_id=1))
    out = w.do("handle_compute", compute("a", run_id=2))
    assert kinds(out) == ["unqueue", "execute"]


def test_invalid_transitions_raise() -> None:
    w = Worker()
    w.do("handle_compute", compute("b", {"a": ["remote", ["x"]]}))
    task = w.state.tasks["b"]
    with pytest.raises(InvalidTransition, match="worker task b: fetching -> done"):
        w.state.handle_done(task, {"op": "task-finished"})
    with pytest.raises(InvalidTransition, match="fetching -> executing"):
        w.state._move(task, "executing")
    (ins,) = w.do("handle_fetched", "a")
    with pytest.raises(InvalidTransition, match="ready -> done"):
        w.state.handle_done(ins[1], {"op": "task-finished"})
    with pytest.raises(InvalidTransition, match="ready -> erred"):
        w.state._move(ins[1], "erred")
    w.do("handle_started", "b")
    with pytest.raises(InvalidTransition, match="executing -> ready"):
        w.state._move(ins[1], "ready")


def test_validate_state_catches_inconsistencies() -> None:
    w = Worker()
    w.do("handle_compute", compute("b", {"a": ["remote", ["x"]]}))
    w.state.fetching.clear()  # the fetch bookkeeping lost track of b
    with pytest.raises(AssertionError):
        w.state.validate_state()
    w = Worker()
    w.do("handle_compute", compute("b"))
    w.state.tasks["b"].status = "done"  # a done task must have been forgotten
    with pytest.raises(AssertionError):
        w.state.validate_state()


def test_store_inputs_are_read_in_place_or_copied_in() -> None:
    state = WorkerTaskState(lambda key: False)
    out = state.handle_compute(
        {"key": "t", "deps": {"a": ["store"], "b": ["remote-store", ["tcp://s2"]]}}
    )
    assert ("in-store", "a") in out
    assert ("fetch-store", "b", ["tcp://s2"]) in out
    assert state.tasks["t"].status == "fetching"
    out = state.handle_fetched("b")
    assert [ins[0] for ins in out] == ["execute"]
    state.validate_state()
