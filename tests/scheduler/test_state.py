"""The scheduler's sans-IO state machine, driven by hand: events in, ``Send``\\ s out.

Each test builds a :class:`SchedulerState` with validation on, plays a client and some
workers by calling ``handle_*`` methods, and checks the messages that come back. Workers
are simulated by reading the ``compute`` messages (they carry the ``run_id`` a worker
must echo) and answering ``task-finished`` / ``task-erred``. ``validate_state()`` runs
after every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphexec.errors import InvalidTransition
from graphexec.scheduler import placement
from graphexec.scheduler.state import GraphTooLargeError, SchedulerState, Send, TaskState

BIG = 10**7  # large enough that nobody would inline it


def spec(
    key: str,
    deps: Iterable[str] = (),
    *,
    priority: int = 0,
    demand: dict[str, float] | None = None,
    retries: int = 3,
    prefix: str = "f",
) -> dict[str, Any]:
    return {
        "key": key,
        "payload": b"",
        "deps": list(deps),
        "fids": [],
        "prefix": prefix,
        "priority": priority,
        "demand": demand or {"CPU": 1.0},
        "retries": retries,
    }


def error(type_name: str = "ValueError") -> dict[str, Any]:
    return {"type": type_name, "message": "boom", "traceback": "", "pickled": None, "function": "f"}


class Sim:
    """A scheduler plus a record of what it told whom; validates after every step."""

    def __init__(self) -> None:
        self.state = SchedulerState(validate=True)
        #: key -> (worker id, run id) of the latest ``compute`` sent for it
        self.runs: dict[str, tuple[str, int]] = {}
        self.log: list[Send] = []

    def do(self, method: str, *args: Any, **kwargs: Any) -> list[Send]:
        out: list[Send] = getattr(self.state, method)(*args, **kwargs)
        self.state.validate_state()
        for send in out:
            if send.msg["op"] == "compute":
                self.runs[send.msg["key"]] = (send.dest[1], send.msg["run_id"])
        self.log.extend(out)
        return out

    # -- cluster -----------------------------------------------------------------------

    def node(self, node_id: str, resources: dict[str, float]) -> list[Send]:
        return self.do("handle_add_node", node_id, resources)

    def worker(self, worker_id: str, node_id: str = "n1", cpus: float = 1.0) -> list[Send]:
        return self.do("handle_add_worker", worker_id, f"tcp://{worker_id}", node_id, cpus)

    def submit(
        self, tasks: list[dict[str, Any]], wants: Iterable[str] = (), client: str = "c"
    ) -> list[Send]:
        return self.do("handle_update_graph", client, tasks, list(wants), functions={})

    # -- simulated workers -------------------------------------------------------------

    def where(self, key: str) -> str:
        return self.runs[key][0]

    def finish(
        self, key: str, *, nbytes: int = 8, inline: bool = True, duration: float = 0.5
    ) -> list[Send]:
        worker, run_id = self.runs[key]
        frames = [key.encode()] if inline else None
        return self.do("handle_task_finished", worker, key, run_id, nbytes, frames, duration)

    def err(
        self, key: str, exc: dict[str, Any] | None = None, *, retryable: bool = False
    ) -> list[Send]:
        worker, run_id = self.runs[key]
        return self.do("handle_task_erred", worker, key, run_id, exc or error(), retryable)

    # -- queries -----------------------------------------------------------------------

    def processing(self) -> set[str]:
        return {k for k, ts in self.state.tasks.items() if ts.state == "processing"}

    def status(self, key: str) -> str:
        return self.state.tasks[key].state


def msgs(
    sends: Iterable[Send], op: str, dest: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    return [s.msg for s in sends if s.msg["op"] == op and (dest is None or s.dest == dest)]


def computed(sends: Iterable[Send]) -> list[tuple[str, str]]:
    """``(worker, key)`` of every ``compute`` in ``sends``, in order."""
    return [(s.dest[1], s.msg["key"]) for s in sends if s.msg["op"] == "compute"]


def freed(sends: Iterable[Send]) -> set[tuple[str, str]]:
    """``(worker, key)`` of every key a ``free-keys`` message drops."""
    return {(s.dest[1], k) for s in sends if s.msg["op"] == "free-keys" for k in s.msg["keys"]}


def one_worker(cpus: float = 1.0) -> Sim:
    sim = Sim()
    sim.node("n1", {"CPU": cpus})
    sim.worker("w1", cpus=cpus)
    sim.do("handle_client_connected", "c")
    return sim


def two_workers() -> Sim:
    sim = Sim()
    sim.node("n1", {"CPU": 2})
    sim.worker("w1")
    sim.worker("w2")
    sim.do("handle_client_connected", "c")
    return sim


# ------------------------------------------------------------------------------ ordering


def test_chain_runs_in_dependency_order() -> None:
    sim = one_worker()
    out = sim.submit([spec("a"), spec("b", ["a"]), spec("c", ["b"])], wants=["c"])
    assert computed(out) == [("w1", "a")]
    assert (sim.status("b"), sim.status("c")) == ("waiting", "waiting")
    out = sim.finish("a")
    assert computed(out) == [("w1", "b")]
    (compute,) = msgs(out, "compute")
    assert compute["deps"] == {"a": ["local"]}
    out = sim.finish("b")
    assert computed(out) == [("w1", "c")]
    out = sim.finish("c")
    (report,) = msgs(out, "key-in-memory", ("client", "c"))
    assert report["key"] == "c"
    assert report["inline"] == [b"c"]
    assert sim.processing() == set()


def test_diamond_runs_both_branches_then_the_join() -> None:
    sim = two_workers()
    out = sim.submit(
        [spec("a"), spec("b", ["a"]), spec("c", ["a"]), spec("d", ["b", "c"])], wants=["d"]
    )
    assert computed(out) == [("w1", "a")]
    out = sim.finish("a")
    assert {key for _, key in computed(out)} == {"b", "c"}
    assert sim.status("d") == "waiting"
    out = sim.finish("b")
    assert computed(out) == []
    assert sim.state.tasks["d"].waiting_on == {sim.state.tasks["c"]}
    out = sim.finish("c")
    assert [key for _, key in computed(out)] == ["d"]
    out = sim.finish("d")
    assert [m["key"] for m in msgs(out, "key-in-memory")] == ["d"]


def test_large_result_is_reported_with_its_holders_not_its_bytes() -> None:
    sim = one_worker()
    sim.submit([spec("a")], wants=["a"])
    out = sim.finish("a", nbytes=BIG, inline=False)
    (report,) = msgs(out, "key-in-memory", ("client", "c"))
    assert report == {
        "op": "key-in-memory",
        "key": "a",
        "nbytes": BIG,
        "inline": None,
        "who_has": ["tcp://w1"],
        "store_nodes": [],
    }


def test_inputs_reach_workers_inline_local_or_remote() -> None:
    sim = two_workers()
    sim.do("handle_put", "c", "small", [b"s"], 1)
    sim.do("handle_put", "c", "big1", [], BIG, worker_id="w2")
    sim.do("handle_put", "c", "big2", [], 2 * BIG, worker_id="w1")
    out = sim.submit([spec("x", ["small", "big1", "big2"])], wants=["x"])
    (compute,) = msgs(out, "compute")
    assert sim.where("x") == "w1"  # most input bytes
    assert compute["deps"] == {
        "small": ["inline", [b"s"]],
        "big1": ["remote", ["tcp://w2"]],
        "big2": ["local"],
    }
    # w1 now holds a copy of the inline value (freed with it later)
    assert {ws.id for ws in sim.state.tasks["small"].who_has} == {"w1"}


def test_wanted_key_already_in_memory_is_reported_on_submission() -> None:
    sim = one_worker()
    sim.submit([spec("a")], wants=["a"])
    sim.finish("a")
    out = sim.submit([spec("a")], wants=["a"], client="other")
    assert computed(out) == []
    (report,) = msgs(out, "key-in-memory", ("client", "other"))
    assert report["inline"] == [b"a"]


# ------------------------------------------------------------------------------ lifetime


def test_intermediates_are_freed_once_dependents_finish() -> None:
    sim = one_worker()
    sim.submit([spec("a"), spec("b", ["a"]), spec("c", ["b"])], wants=["c"])
    sim.finish("a", nbytes=BIG, inline=False)
    out = sim.finish("b", nbytes=BIG, inline=False)
    assert ("w1", "a") in freed(out)
    assert sim.status("a") == "released"
    assert sim.state.tasks["a"].who_has == set()
    out = sim.finish("c")
    assert ("w1", "b") in freed(out)
    assert ("w1", "c") not in freed(out)  # the client still wants it
    # lineage is kept while the wanted key lives; releasing it forgets the whole chain
    out = sim.do("handle_release_keys", "c", ["c"])
    assert ("w1", "c") in freed(out)
    assert sim.state.tasks == {}


def test_unwanted_leaf_is_freed_and_forgotten_when_it_finishes() -> None:
    sim = one_worker()
    sim.submit([spec("a")], wants=[])
    out = sim.finish("a", nbytes=BIG, inline=False)
    assert freed(out) == {("w1", "a")}
    assert sim.state.tasks == {}
    assert sim.state.workers["w1"].has_what == set()


def test_intermediate_shared_by_two_dependents_lives_until_both_finish() -> None:
    sim = two_workers()
    sim.submit([spec("a"), spec("b", ["a"]), spec("c", ["a"])], wants=["b", "c"])
    sim.finish("a", nbytes=BIG, inline=False)
    out = sim.finish("b")
    assert freed(out) == set()
    assert sim.status("a") == "memory"
    out = sim.finish("c")
    assert ("w1", "a") in freed(out)


def test_release_keys_frees_and_forgets() -> None:
    sim = one_worker()
    sim.submit([spec("a")], wants=["a"])
    sim.finish("a", nbytes=BIG, inline=False)
    out = sim.do("handle_release_keys", "c", ["a"])
    assert freed(out) == {("w1", "a")}
    assert "a" not in sim.state.tasks
    assert sim.state.clients["c"].wants == set()
    # releasing an unknown key is harmless
    assert sim.do("handle_release_keys", "c", ["a", "nope"]) == []


def test_key_wanted_by_two_clients_lives_until_both_release() -> None:
    sim = one_worker()
    sim.submit([spec("a")], wants=["a"])
    sim.do("handle_want_keys", "other", ["a"])
    sim.finish("a", nbytes=BIG, inline=False)
    assert sim.do("handle_release_keys", "c", ["a"]) == []
    assert sim.status("a") == "memory"
    assert freed(sim.do("handle_release_keys", "other", ["a"])) == {("w1", "a")}
    assert sim.state.tasks == {}


def test_want_keys_for_unknown_key_reports_object_lost() -> None:
    sim = one_worker()
    (send,) = sim.do("handle_want_keys", "c", ["ghost"])
    assert send.dest == ("client", "c")
    assert send.msg["op"] == "key-erred"
    assert send.msg["exception"]["type"] == "ObjectLostError"


def test_client_disconnect_releases_everything_it_wanted() -> None:
    sim = two_workers()
    sim.submit([spec("a"), spec("b")], wants=["a", "b"])
    sim.do("handle_want_keys", "other", ["b"])
    sim.finish("a", nbytes=BIG, inline=False)
    sim.finish("b", nbytes=BIG, inline=False)
    out = sim.do("handle_client_disconnected", "c")
    assert freed(out) == {(sim.where("a"), "a")}
    assert set(sim.state.tasks) == {"b"}
    assert "c" not in sim.state.clients
    sim.do("handle_client_disconnected", "other")
    assert sim.state.tasks == {}
    assert sim.do("handle_client_disconnected", "other") == []


def test_submitting_a_dependency_that_was_released_fails_with_key_error() -> None:
    sim = one_worker()
    out = sim.submit([spec("b", ["gone"])], wants=["b"])
    report = msgs(out, "key-erred", ("client", "c"))[0]
    assert report["exception"]["type"] == "KeyError"
    assert "gone" in report["exception"]["message"]
    assert computed(out) == []


def test_a_task_failing_at_submission_is_reported_once() -> None:
    sim = one_worker()
    out = sim.submit([spec("b", ["gone"])], wants=["b"])
    assert len(msgs(out, "key-erred", ("client", "c"))) == 1


def test_released_input_still_in_lineage_is_recomputed_for_a_new_dependent() -> None:
    sim = one_worker()
    sim.submit([spec("a"), spec("b", ["a"])], wants=["b"])
    sim.finish("a", nbytes=BIG, inline=False)
    sim.finish("b")
    assert sim.status("a") == "released"
    out = sim.submit([spec("c", ["a"])], wants=["c"])
    assert computed(out) == [("w1", "a")]
    assert sim.state.tasks["a"].run_id == 2
    sim.finish("a")
    out = sim.finish("c")
    assert [m["key"] for m in msgs(out, "key-in-memory")] == ["c"]


# ------------------------------------------------------------------------------ errors


def test_error_propagates_to_dependents_and_the_wanting_client() -> None:
    sim = two_workers()
    sim.submit([spec("a"), spec("b", ["a"]), spec("c", ["b"]), spec("d")], wants=["c", "d"])
    out = sim.err("a", error("ZeroDivisionError"))
    assert {sim.status(k) for k in "abc"} == {"erred"}
    assert sim.status("d") == "processing"
    (report,) = msgs(out, "key-erred", ("client", "c"))
    assert report["key"] == "c"
    assert report["origin"] == "a"
    assert report["exception"]["type"] == "ZeroDivisionError"
    assert computed(sim.log).count((sim.where("a"), "a")) == 1
    assert "b" not in sim.runs and "c" not in sim.runs
    sim.finish("d")
    # releasing the failed keys forgets the failed lineage
    sim.do("handle_release_keys", "c", ["c", "d"])
    assert sim.state.tasks == {}


def test_submitting_on_top_of_an_erred_key_fails_at_once() -> None:
    sim = one_worker()
    sim.submit([spec("a")], wants=["a"])
    sim.err("a")
    out = sim.submit([spec("b", ["a"])], wants=["b"], client="other")
    report = msgs(out, "key-erred", ("client", "other"))[0]  # twice: see above
    assert (report["key"], report["origin"]) == ("b", "a")
    assert computed(out) == []


def test_resubmitting_an_erred_key_runs_it_again() -> None:
    sim = one_worker()
    sim.submit([spec("a", retries=0)], wants=["a"])
    sim.err("a")
    out = sim.submit([spec("a", retries=0)], wants=["a"])
    assert msgs(out, "key-erred") == []
    assert computed(out) == [("w1", "a")]


def test_retryable_errors_are_retried_up_to_retries() -> None:
    sim = one_worker()
    sim.submit([spec("a", retries=2)], wants=["a"])
    first = sim.runs["a"][1]
    out = sim.err("a", retryable=True)
    assert msgs(out, "key-erred") == []
    (compute,) = msgs(out, "compute")
    assert compute["run_id"] == first + 1
    assert compute["retryable"] is True
    out = sim.err("a", retryable=True)
    (compute,) = msgs(out, "compute")
    assert compute["retryable"] is False  # no retries left: the worker need not try
    out = sim.err("a", retryable=True)
    assert computed(out) == []
    (report,) = msgs(out, "key-erred", ("client", "c"))
    assert report["origin"] == "a"
    assert sim.state.workers["w1"].processing == {}


def test_non_retryable_error_is_not_retried() -> None:
    sim = one_worker()
    sim.submit([spec("a", retries=3)], wants=["a"])
    out = sim.err("a", retryable=False)
    assert computed(out) == []
    assert msgs(out, "key-erred", ("client", "c"))


def test_retries_minus_one_retries_forever() -> None:
    sim = one_worker()
    sim.submit([spec("a", retries=-1)], wants=["a"])
    for _ in range(10):
        out = sim.err("a", retryable=True)
        assert computed(out) == [("w1", "a")]
    sim.finish("a")
    assert sim.status("a") == "memory"


def test_stale_task_finished_is_ignored() -> None:
    sim = one_worker()
    sim.submit([spec("a")], wants=["a"])
    _, old = sim.runs["a"]
    sim.err("a", retryable=True)  # run 2 now
    out = sim.do("handle_task_finished", "w1", "a", old, 8, [b"old"], 0.1)
    assert msgs(out, "key-in-memory") == []
    assert sim.status("a") == "processing"
    out = sim.do("handle_task_erred", "w1", "a", old, error(), False)
    assert out == []
    assert sim.status("a") == "processing"
    out = sim.finish("a")
    (report,) = msgs(out, "key-in-memory")
    assert report["inline"] == [b"a"]


def test_late_report_of_a_forgotten_key_frees_the_workers_copy() -> None:
    sim = one_worker()
    out = sim.do("handle_task_finished", "w1", "ghost", 1, BIG, None, 0.1)
    assert freed(out) == {("w1", "ghost")}
    assert sim.do("handle_task_finished", "nobody", "ghost", 1, BIG, None, 0.1) == []


def test_cancel_fails_a_queued_task() -> None:
    sim = one_worker()
    sim.submit([spec("a"), spec("b"), spec("c")], wants=["a", "b", "c"])
    assert sim.status("c") == "queued"  # one running, one in the worker's queue
    out = sim.do("handle_cancel", ["c"])
    (report,) = msgs(out, "key-erred", ("client", "c"))
    assert report["key"] == "c"
    assert report["exception"]["type"] == "TaskCancelledError"
    assert msgs(out, "cancel-task") == []
    sim.finish("a")
    sim.finish("b")
    assert "c" not in sim.runs


def test_cancel_a_processing_task_tells_its_worker() -> None:
    sim = one_worker()
    sim.submit([spec("a"), spec("b", ["a"])], wants=["b"])
    out = sim.do("handle_cancel", ["a"])
    assert msgs(out, "cancel-task", ("worker", "w1")) == [{"op": "cancel-task", "key": "a"}]
    (report,) = msgs(out, "key-erred", ("client", "c"))
    assert (report["key"], report["origin"]) == ("b", "a")
    assert sim.state.workers["w1"].processing == {}
    # the worker finished anyway: its copy is dropped
    assert freed(sim.finish("a")) == {("w1", "a")}
    out = sim.do("handle_cancel", ["a"], force=True)  # already erred: nothing to do
    assert out == []


def test_force_cancel_kills_the_worker_through_its_node() -> None:
    sim = one_worker()
    sim.submit([spec("a")], wants=["a"])
    out = sim.do("handle_cancel", ["a"], force=True)
    assert msgs(out, "kill-worker", ("node", "n1")) == [{"op": "kill-worker", "worker": "w1"}]


# ------------------------------------------------------------------------------ failures


def test_removing_a_worker_retries_its_tasks_elsewhere() -> None:
    sim = two_workers()
    sim.submit([spec("a", retries=1)], wants=["a"])
    assert sim.where("a") == "w1"
    out = sim.do("handle_remove_worker", "w1")
    assert computed(out) == [("w2", "a")]
    assert sim.state.tasks["a"].retries == 0
    assert "w1" not in sim.state.workers
    out = sim.finish("a")
    assert msgs(out, "key-in-memory")
    assert sim.do("handle_remove_worker", "w1") == []


def test_removing_a_worker_without_retries_fails_with_worker_crashed() -> None:
    sim = two_workers()
    sim.submit([spec("a", retries=0), spec("b", ["a"])], wants=["b"])
    out = sim.do("handle_remove_worker", "w1")
    assert computed(out) == []
    (report,) = msgs(out, "key-erred", ("client", "c"))
    assert (report["key"], report["origin"]) == ("b", "a")
    assert report["exception"]["type"] == "WorkerCrashedError"
    assert "tcp://w1" in report["exception"]["message"]


def test_removing_a_node_removes_its_workers() -> None:
    sim = Sim()
    sim.node("n1", {"CPU": 1})
    sim.node("n2", {"CPU": 1})
    sim.worker("w1", "n1")
    sim.worker("w2", "n2")
    sim.submit([spec("a")], wants=["a"])
    out = sim.do("handle_remove_node", "n1")
    assert computed(out) == [("w2", "a")]
    assert set(sim.state.workers) == {"w2"}
    assert sim.do("handle_remove_node", "n1") == []


def test_data_only_on_a_dead_worker_is_recomputed_for_a_waiting_dependent() -> None:
    sim = two_workers()
    sim.submit([spec("a"), spec("x"), spec("b", ["a", "x"])], wants=["b"])
    assert (sim.where("a"), sim.where("x")) == ("w1", "w2")
    # short enough that w2 may queue a second task next to x
    sim.finish("a", nbytes=BIG, inline=False, duration=1e-3)
    assert sim.status("b") == "waiting"
    out = sim.do("handle_remove_worker", "w1")
    assert computed(out) == [("w2", "a")]
    assert sim.state.tasks["b"].waiting_on == {sim.state.tasks["a"], sim.state.tasks["x"]}
    sim.finish("x")
    out = sim.finish("a")
    assert computed(out) == [("w2", "b")]
    out = sim.finish("b")
    assert [m["key"] for m in msgs(out, "key-in-memory")] == ["b"]


def test_lost_input_of_a_queued_task_is_recomputed_first() -> None:
    sim = two_workers()
    sim.submit([spec("a")], wants=["a"])
    sim.finish("a", nbytes=BIG, inline=False)  # slow: no queueing beyond one task now
    sim.submit([spec("hold1"), spec("hold2", priority=1)])
    assert (sim.where("hold1"), sim.where("hold2")) == ("w1", "w2")
    sim.submit([spec("b", ["a"])], wants=["b"])
    assert sim.status("b") == "queued"
    out = sim.do("handle_remove_worker", "w1")
    assert computed(out) == []
    assert sim.status("b") == "waiting"
    assert sim.state.tasks["b"].waiting_on == {sim.state.tasks["a"]}
    assert sim.status("a") == "queued"
    out = sim.finish("hold2")
    assert computed(out) == [("w2", "a")]  # the oldest submission goes first
    out = sim.finish("a", nbytes=BIG, inline=False)
    assert msgs(out, "key-in-memory", ("client", "c"))  # reported again after recomputing
    assert computed(out) == [("w2", "hold1")]
    out = sim.finish("hold1")
    assert computed(out) == [("w2", "b")]
    assert msgs(out, "compute")[0]["deps"] == {"a": ["local"]}


def test_released_pending_task_is_dropped_without_running() -> None:
    sim = two_workers()
    sim.submit([spec("a"), spec("b", ["a"])], wants=["b"])
    sim.finish("a", nbytes=BIG, inline=False)
    sim.finish("b", nbytes=BIG, inline=False)
    assert sim.status("a") == "released"
    out = sim.do("handle_remove_worker", "w1")
    # b was lost and the client wants it: recomputed from a, which is recomputed first
    assert computed(out) == [("w2", "a")]
    assert sim.status("b") == "waiting"
    sim.do("handle_release_keys", "c", ["b"])
    # nobody wants b any more and it has not started: it is dropped, not run for nobody
    assert "b" not in sim.state.tasks
    out = sim.finish("a")
    assert computed(out) == []
    assert sim.state.tasks == {}


def test_lost_input_of_a_task_running_elsewhere_is_recomputed_on_retry() -> None:
    sim = Sim()
    sim.node("n1", {"CPU": 2})
    sim.worker("w1")
    sim.submit([spec("a"), spec("b", ["a"])], wants=["b"])
    sim.submit([spec("hold", prefix="h")])  # queued on w1 behind a
    sim.worker("w2")
    out = sim.finish("a", nbytes=BIG, inline=False)  # w1 is full now: b goes to w2
    (compute,) = msgs(out, "compute")
    assert (sim.where("b"), compute["deps"]) == ("w2", {"a": ["remote", ["tcp://w1"]]})
    sim.do("handle_remove_worker", "w1")
    # b, running on w2, still needs a: it is recomputed at once
    assert sim.status("a") in ("queued", "processing")
    # w2 cannot fetch a from the dead worker and says so
    sim.err("b", error("ObjectLostError"), retryable=True)
    assert sim.status("b") == "waiting"  # the retry waits for the recomputed input ...
    if sim.status("a") == "queued":
        sim.finish("hold")
    assert sim.status("a") == "processing"
    out = sim.finish("a", nbytes=BIG, inline=False)
    if sim.status("hold") == "processing":  # w2's only CPU is busy: b waits its turn
        assert computed(out) == []
        out = sim.finish("hold")
    assert [key for _, key in computed(out)] == ["b"]  # ... then runs
    assert msgs(out, "compute")[0]["deps"] == {"a": ["local"]}


def test_node_death_retries_its_tasks_once_elsewhere_after_their_lost_inputs() -> None:
    """A dead node's tasks are not retried on its other (dead) workers, nor told to read
    an input from its (dead) store: they wait for the input's recomputation."""
    sim = Sim()
    sim.do("handle_add_node", "n1", {"CPU": 2}, "127.0.0.1", "tcp://store1")
    sim.worker("w1a", "n1")
    sim.worker("w1b", "n1")
    sim.submit([spec("x"), spec("y", ["x"])], wants=["y"])
    worker, run_id = sim.runs["x"]
    out = sim.do("handle_task_finished", worker, "x", run_id, BIG, None, 0.5, True)
    (compute,) = msgs(out, "compute")
    assert compute["deps"] == {"x": ["store"]}
    assert sim.where("y") in ("w1a", "w1b")
    sim.do("handle_add_node", "n2", {"CPU": 1}, "127.0.0.1", "tcp://store2")
    sim.worker("w2", "n2")
    out = sim.do("handle_remove_node", "n1")
    assert set(sim.state.workers) == {"w2"}
    # x went with n1's store and y needs it: recomputed first; y waits for it
    assert computed(out) == [("w2", "x")]
    assert sim.status("y") == "waiting"
    assert sim.state.tasks["y"].retries == 2  # one retry for one death
    worker, run_id = sim.runs["x"]
    out = sim.do("handle_task_finished", worker, "x", run_id, BIG, None, 0.5, True)
    (compute,) = msgs(out, "compute")
    assert (sim.where("y"), compute["deps"]) == ("w2", {"x": ["store"]})


# ------------------------------------------------------------------------------ put


def test_put_value_is_kept_while_wanted() -> None:
    sim = one_worker()
    sim.do("handle_put", "c", "p", [b"value"], 5)
    out = sim.submit([spec("b", ["p"])], wants=["b"])
    (compute,) = msgs(out, "compute")
    assert compute["deps"] == {"p": ["inline", [b"value"]]}
    sim.finish("b")
    assert sim.status("p") == "memory"
    assert sim.state.tasks["p"].inline == [b"value"]
    out = sim.do("handle_release_keys", "c", ["p"])
    assert freed(out) == {("w1", "p")}  # the copy sent inline with b's compute
    assert sim.status("p") == "released"  # kept in b's lineage until b goes
    sim.do("handle_release_keys", "c", ["b"])
    assert sim.state.tasks == {}


def test_lost_large_put_fails_dependents_with_object_lost() -> None:
    sim = two_workers()
    sim.do("handle_put", "c", "p", [], BIG, worker_id="w1")
    sim.submit([spec("hold1"), spec("hold2")])  # keep w2 busy so b queues
    sim.submit([spec("hold3"), spec("hold4")])
    sim.submit([spec("b", ["p"])], wants=["b"])
    assert sim.status("b") == "queued"
    out = sim.do("handle_remove_worker", "w1")
    reports = {m["key"]: m for m in msgs(out, "key-erred", ("client", "c"))}
    assert set(reports) == {"p", "b"}
    assert reports["b"]["origin"] == "p"
    assert reports["p"]["exception"]["type"] == "ObjectLostError"
    assert "put()" in reports["p"]["exception"]["message"]


# ------------------------------------------------------------------------------ placement


def test_gpu_task_waits_for_a_gpu_node() -> None:
    sim = one_worker(cpus=2)
    out = sim.submit([spec("g", demand={"CPU": 1, "GPU": 1})], wants=["g"])
    assert computed(out) == []
    assert sim.status("g") == "no-worker"
    why = sim.state.explain_pending(["g", "unknown"])
    assert "GPU" in why["g"]
    assert "{'CPU': 1.0, 'GPU': 1.0}" in why["g"]
    assert "unknown" in why["unknown"]
    out = sim.node("n2", {"CPU": 1, "GPU": 1})
    assert computed(out) == []  # no worker on the node yet
    assert sim.status("g") == "queued"
    assert "waiting for free resources" in sim.state.explain_pending(["g"])["g"]
    out = sim.worker("w2", "n2")
    assert computed(out) == [("w2", "g")]
    assert "running on worker tcp://w2" in sim.state.explain_pending(["g"])["g"]
    assert sim.state.nodes["n2"].available["GPU"] == 0
    sim.finish("g")
    assert sim.state.nodes["n2"].available["GPU"] == 1


def test_released_no_worker_task_is_forgotten() -> None:
    sim = one_worker()
    sim.submit([spec("g", demand={"CPU": 1, "GPU": 1})], wants=["g"])
    sim.do("handle_release_keys", "c", ["g"])
    assert sim.state.tasks == {}
    assert sim.state.unrunnable == set()
    sim.node("n2", {"CPU": 1, "GPU": 1})
    assert computed(sim.worker("w2", "n2")) == []


def test_queued_task_becomes_no_worker_when_its_only_node_goes() -> None:
    sim = Sim()
    sim.node("n1", {"CPU": 1})
    sim.worker("w1", "n1")
    sim.node("n2", {"CPU": 1, "GPU": 1})
    sim.worker("w2", "n2")
    gpu = {"CPU": 1, "GPU": 1}
    sim.submit([spec("g1", demand=gpu), spec("g2", demand=gpu, priority=1)], wants=["g1", "g2"])
    assert (sim.status("g1"), sim.status("g2")) == ("processing", "queued")
    sim.do("handle_remove_node", "n2")
    assert sim.status("g1") == "no-worker"
    assert sim.status("g2") == "no-worker"
    assert "no node has that much" in sim.state.explain_pending(["g2"])["g2"]


def test_explain_pending_names_the_input_a_task_waits_for() -> None:
    sim = one_worker()
    sim.submit([spec("a"), spec("b", ["a"])], wants=["b"])
    assert sim.state.explain_pending(["b"]) == {"b": "waiting for input a"}


def test_cluster_and_available_resources() -> None:
    sim = one_worker(cpus=2)
    sim.node("n2", {"CPU": 1, "GPU": 2})
    assert sim.state.cluster_resources() == {"CPU": 3, "GPU": 2}
    sim.submit([spec("a")])
    assert sim.state.available_resources() == {"CPU": 2, "GPU": 2}


def test_fractional_cpu_tasks_pack_onto_one_worker() -> None:
    sim = one_worker()
    out = sim.submit([spec(f"q{i}", demand={"CPU": 0.25}) for i in range(4)])
    assert sorted(computed(out)) == [("w1", f"q{i}") for i in range(4)]
    assert sim.state.workers["w1"].assigned_cpus == pytest.approx(1.0)


def test_custom_resources_are_held_while_processing() -> None:
    sim = Sim()
    sim.node("n1", {"CPU": 2, "disk": 1})
    sim.worker("w1")
    sim.worker("w2")
    demand = {"CPU": 1, "disk": 1}
    out = sim.submit([spec("a", demand=demand), spec("b", demand=demand)], wants=["a", "b"])
    assert [key for _, key in computed(out)] == ["a"]
    assert sim.state.nodes["n1"].available["disk"] == 0
    assert sim.status("b") == "queued"
    out = sim.finish("a")
    assert [key for _, key in computed(out)] == ["b"]
    assert sim.state.nodes["n1"].available["disk"] == 0
    sim.finish("b")
    assert sim.state.nodes["n1"].available == {"CPU": 2, "disk": 1}


def test_resource_task_is_not_queued_behind_others() -> None:
    sim = Sim()
    sim.node("n1", {"CPU": 1, "disk": 2})
    sim.worker("w1")
    demand = {"CPU": 1, "disk": 1}
    out = sim.submit([spec("a", demand=demand), spec("b", demand=demand)])
    assert [key for _, key in computed(out)] == ["a"]  # CPU-bound, no queueing slack


def test_resources_come_back_when_a_holder_dies() -> None:
    sim = Sim()
    sim.node("n1", {"CPU": 2, "disk": 1})
    sim.worker("w1")
    sim.worker("w2")
    sim.submit([spec("a", demand={"CPU": 1, "disk": 1})], wants=["a"])
    out = sim.do("handle_remove_worker", "w1")
    assert computed(out) == [("w2", "a")]
    assert sim.state.nodes["n1"].available["disk"] == 0
    sim.finish("a")
    assert sim.state.nodes["n1"].available["disk"] == 1


def test_multi_cpu_task_waits_for_both_workers_of_its_node() -> None:
    sim = two_workers()
    out = sim.submit([spec("x")], wants=["x"])
    assert computed(out) == [("w1", "x")]
    out = sim.submit([spec("big", demand={"CPU": 2})], wants=["big"])
    assert computed(out) == []  # w2 alone has 1 CPU idle
    assert sim.status("big") == "queued"
    out = sim.finish("x")
    assert [key for _, key in computed(out)] == ["big"]
    ws1, ws2 = sim.state.workers["w1"], sim.state.workers["w2"]
    assert ws1.assigned_cpus + ws2.assigned_cpus == pytest.approx(2.0)
    sim.finish("big")
    assert (ws1.assigned_cpus, ws2.assigned_cpus) == (0.0, 0.0)


def test_multi_cpu_task_blocks_the_lending_sibling() -> None:
    sim = two_workers()
    out = sim.submit([spec("big", demand={"CPU": 2})], wants=["big"])
    assert [key for _, key in computed(out)] == ["big"]
    lender = "w2" if sim.where("big") == "w1" else "w1"
    out = sim.submit([spec("y"), spec("z")], wants=["y", "z"])
    assert [w for w, _ in computed(out)].count(lender) == 0


def test_locality_beats_load() -> None:
    sim = Sim()
    sim.node("n1", {"CPU": 2})
    sim.worker("w2")
    sim.worker("w1")
    sim.submit([spec("busy")])
    assert sim.where("busy") == "w2"
    sim.do("handle_put", "c", "big", [], BIG, worker_id="w2")
    out = sim.submit([spec("b", ["big"])], wants=["b"])
    assert computed(out) == [("w2", "b")]
    assert msgs(out, "compute")[0]["deps"] == {"big": ["local"]}


def test_least_loaded_worker_wins_without_locality() -> None:
    sim = two_workers()
    out = sim.submit([spec("a"), spec("b")])
    assert sorted(computed(out)) == [("w1", "a"), ("w2", "b")]


def test_unknown_durations_queue_at_most_one_extra_task_per_cpu() -> None:
    sim = one_worker()
    out = sim.submit([spec(f"t{i}", priority=i) for i in range(20)])
    assert computed(out) == [("w1", "t0"), ("w1", "t1")]
    assert placement.queue_allowance(None) == 1.0


def test_tiny_durations_deepen_the_queue() -> None:
    sim = one_worker()
    sim.submit([spec(f"t{i}", priority=i) for i in range(20)])
    out = sim.finish("t0", duration=1e-4)
    assert sim.state.durations["f"] == pytest.approx(1e-4)
    assert placement.queue_allowance(1e-4) >= 19
    assert len(computed(out)) == 18  # everything left
    assert len(sim.processing()) == 19


def test_slow_durations_stop_queueing() -> None:
    sim = one_worker()
    sim.submit([spec(f"t{i}", priority=i) for i in range(5)])
    out = sim.finish("t0", duration=5.0)
    assert placement.queue_allowance(5.0) == 0.0
    assert len(sim.processing()) == 1  # t1 was already sent; nothing more fits
    out = sim.finish("t1", duration=5.0)
    assert computed(out) == [("w1", "t2")]


def test_durations_are_tracked_per_prefix() -> None:
    sim = one_worker()
    sim.submit([spec("fast0", prefix="fast")])
    sim.finish("fast0", duration=1e-5)
    out = sim.submit([spec(f"slow{i}", prefix="slow") for i in range(5)])
    assert len(computed(out)) == 2  # "slow" is still unknown


def test_zero_cpu_tasks_are_bounded_per_worker() -> None:
    sim = one_worker()
    n = placement.MAX_ZERO_CPU_TASKS + 5
    out = sim.submit([spec(f"z{i}", demand={"CPU": 0}) for i in range(n)])
    assert len(computed(out)) == placement.MAX_ZERO_CPU_TASKS


def test_blocked_task_lends_its_cpu() -> None:
    sim = one_worker()
    sim.submit([spec(f"t{i}", priority=i) for i in range(10)])
    assert len(sim.processing()) == 2
    out = sim.do("handle_task_blocked", "w1", "t0", True)
    assert len(computed(out)) == 2  # capacity 2 now, with the same queue depth
    assert sim.state.workers["w1"].capacity == 2.0
    assert sim.do("handle_task_blocked", "w1", "t0", False) == []
    assert sim.state.workers["w1"].capacity == 1.0
    assert sim.do("handle_task_blocked", "ghost", "t0", True) == []


# ------------------------------------------------------------------------------ transitions


def test_impossible_transition_raises() -> None:
    sim = one_worker()
    sim.submit([spec("a"), spec("b", ["a"])], wants=["b"])
    sim.finish("a", nbytes=BIG, inline=False)
    sim.finish("b")
    ts = sim.state.tasks["a"]
    assert ts.state == "released"
    with pytest.raises(InvalidTransition, match="a: released -> memory"):
        sim.state._transition(ts, "memory")
    with pytest.raises(InvalidTransition):
        sim.state._transition(TaskState("fresh"), "processing")
    with pytest.raises(InvalidTransition):
        sim.state._transition(sim.state.tasks["b"], "waiting")


def test_processing_to_memory_only_through_task_finished() -> None:
    sim = one_worker()
    sim.submit([spec("a")])
    with pytest.raises(InvalidTransition):
        sim.state._transition(sim.state.tasks["a"], "memory")


def test_validate_state_catches_broken_cross_references() -> None:
    sim = one_worker()
    sim.submit([spec("a")])
    sim.state.workers["w1"].processing.clear()
    with pytest.raises(AssertionError):
        sim.state.validate_state()


# ------------------------------------------------------------------------------ malformed graphs


def snapshot(state: SchedulerState) -> dict[str, Any]:
    """Everything an ``update-graph`` may change, in comparable form."""
    return {
        "tasks": {
            k: (ts.state, ts.payload, sorted(d.key for d in ts.dependencies))
            for k, ts in state.tasks.items()
        },
        "functions": dict(state.functions),
        "wants": {cid: sorted(ts.key for ts in cs.wants) for cid, cs in state.clients.items()},
        "queued": {sig: len(heap) for sig, heap in state.queued.items()},
        "processing": {w: sorted(ws.processing) for w, ws in state.workers.items()},
    }


MALFORMED: list[tuple[Any, Any, Any, str]] = [
    # (tasks, wants, functions, what the error names)
    ([spec("a"), {"payload": b""}], ["a"], {}, "'key'"),
    ([spec("a"), {"key": "b"}], ["a"], {}, "'payload'"),
    ([spec("a"), {**spec("b"), "payload": "text"}], ["a"], {}, "'payload'"),
    ([spec("a"), {**spec("b"), "key": ["b"]}], ["a"], {}, "'key'"),
    ([spec("a"), {**spec("b"), "deps": "a"}], ["b"], {}, "'deps'"),
    ([spec("a"), {**spec("b"), "deps": [["a"]]}], ["b"], {}, "'deps'"),
    ([spec("a"), {**spec("b"), "fids": [1]}], ["b"], {}, "'fids'"),
    ([spec("a"), {**spec("b"), "prefix": 3}], ["b"], {}, "'prefix'"),
    ([spec("a"), {**spec("b"), "priority": "high"}], ["b"], {}, "'priority'"),
    ([spec("a"), {**spec("b"), "retries": None}], ["b"], {}, "'retries'"),
    ([spec("a"), {**spec("b"), "retries": -2}], ["b"], {}, "'retries'"),
    ([spec("a"), {**spec("b"), "demand": {"CPU": "1"}}], ["b"], {}, "'demand'"),
    ([spec("a"), {**spec("b"), "demand": {"CPU": -1.0}}], ["b"], {}, "'demand'"),
    ([spec("a"), {**spec("b"), "demand": {"CPU": float("nan")}}], ["b"], {}, "'demand'"),
    ([spec("a"), {**spec("b"), "demand": [1.0]}], ["b"], {}, "'demand'"),
    ([spec("a"), "b"], ["a"], {}, "not a dict"),
    ({"a": spec("a")}, ["a"], {}, "'tasks'"),
    ([spec("a")], [["a"]], {}, "'wants'"),
    ([spec("a")], "a", {}, "'wants'"),
    ([spec("a")], ["a"], {"f": "not bytes"}, "'functions'"),
    ([spec("a")], ["a"], [("f", b"")], "'functions'"),
]


@pytest.mark.parametrize(("tasks", "wants", "functions", "names"), MALFORMED)
def test_malformed_update_graph_leaves_no_trace(
    tasks: Any, wants: Any, functions: Any, names: str
) -> None:
    """Regression (found by the wire fuzzer): a task spec with a missing or mistyped
    field left a half-built task behind. Now the whole message is checked first."""
    sim = one_worker()
    sim.submit([spec("x")], wants=["x"])
    before = snapshot(sim.state)
    with pytest.raises(ValueError, match=f"malformed update-graph: .*{names}"):
        sim.state.handle_update_graph("c", tasks, wants, functions)
    sim.state.validate_state()
    assert snapshot(sim.state) == before
    # the same keys, well formed, still go through
    sim.submit([spec("a"), spec("b", ["a"])], wants=["b"])
    for key in ("x", "a", "b"):
        sim.finish(key)
    assert {m["key"] for m in msgs(sim.log, "key-in-memory")} == {"x", "b"}


JUNK = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=4)
    | st.binary(max_size=4)
    | st.lists(st.integers() | st.text(max_size=2), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.floats() | st.text(max_size=2), max_size=2)
)


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(
        ["key", "payload", "deps", "fids", "prefix", "priority", "demand", "retries"]
    ),
    value=JUNK,
    drop=st.booleans(),
)
def test_any_mistyped_field_is_taken_whole_or_refused_whole(
    field: str, value: Any, drop: bool
) -> None:
    sim = one_worker()
    sim.submit([spec("x")], wants=["x"])
    bad = spec("b", ["a"])
    if drop:
        del bad[field]
    else:
        bad[field] = value
    before = snapshot(sim.state)
    try:
        sim.state.handle_update_graph("c", [spec("a"), bad], ["a"], {})
    except ValueError:
        assert snapshot(sim.state) == before
    sim.state.validate_state()


def test_oversized_update_graph_is_refused_whole() -> None:
    sim = one_worker()
    before = snapshot(sim.state)
    tasks = [spec("a"), spec("b", ["a"]), spec("c", ["b"])]
    with pytest.raises(GraphTooLargeError, match=r"3 tasks in one update-graph.* limit of 2"):
        sim.state.handle_update_graph("c", tasks, ["c"], {}, max_tasks=2)
    functions = {"f": bytes(100)}
    with pytest.raises(GraphTooLargeError, match=r"102 bytes .* limit of 101"):
        sim.state.handle_update_graph("c", [spec("a")], ["a"], functions, max_bytes=101)
    assert snapshot(sim.state) == before
    sim.state.handle_update_graph("c", tasks, ["c"], functions, max_tasks=3, max_bytes=106)
    assert sim.processing() == {"a"} and sim.state.functions == functions


# ------------------------------------------------------------------------------ property


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str]]:
    n = draw(st.integers(1, 30))
    tasks = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        big = draw(st.booleans())
        t = spec(
            f"t{i}", [f"t{d}" for d in sorted(deps)], priority=i, prefix="big" if big else "small"
        )
        tasks.append(t)
    wants = draw(st.lists(st.sampled_from([t["key"] for t in tasks]), min_size=1, unique=True))
    return tasks, wants


@settings(max_examples=60, deadline=None)
@given(graph=dags(), n_workers=st.integers(1, 3), data=st.data())
def test_random_dags_run_to_completion(
    graph: tuple[list[dict[str, Any]], list[str]], n_workers: int, data: st.DataObject
) -> None:
    tasks, wants = graph
    sim = Sim()
    sim.node("n1", {"CPU": n_workers})
    for i in range(n_workers):
        sim.worker(f"w{i}")
    sim.submit(tasks, wants=wants)
    done: set[str] = set()
    for _ in range(10 * len(tasks)):
        running = sorted(sim.processing())
        if not running:
            break
        key = data.draw(st.sampled_from(running))
        deps = {d for t in tasks if t["key"] == key for d in t["deps"]}
        assert deps <= done, f"{key} ran before its inputs {deps - done}"
        big = sim.state.tasks[key].prefix == "big"
        sim.finish(
            key,
            nbytes=BIG if big else 8,
            inline=not big,
            duration=data.draw(st.sampled_from([0.0, 1e-4, 0.5])),
        )
        done.add(key)
    assert sim.processing() == set()
    reported = [m["key"] for m in msgs(sim.log, "key-in-memory", ("client", "c"))]
    assert sorted(reported) == sorted(wants)
    assert msgs(sim.log, "key-erred") == []
    assert all(sim.status(k) == "memory" for k in wants)
    for key in wants:
        sim.do("handle_release_keys", "c", [key])
    assert sim.state.tasks == {}
    assert all(not ws.has_what and not ws.processing for ws in sim.state.workers.values())


class Stores:
    """What each simulated worker really holds, to answer a ``compute`` as a worker would."""

    def __init__(self, workers: Iterable[str]) -> None:
        self.held: dict[str, set[str]] = {w: set() for w in workers}
        self.computes: dict[str, dict[str, Any]] = {}

    def absorb(self, sends: Iterable[Send]) -> None:
        for send in sends:
            kind, worker = send.dest
            if kind != "worker" or worker not in self.held:
                continue
            if send.msg["op"] == "compute":
                self.computes[send.msg["key"]] = send.msg
                # a worker stores inline inputs as soon as the compute arrives
                for dep, (kind, *_) in send.msg["deps"].items():
                    if kind == "inline":
                        self.held[worker].add(dep)
            elif send.msg["op"] == "free-keys":
                self.held[worker].difference_update(send.msg["keys"])

    def gather(self, worker: str, key: str) -> bool:
        """Fetch ``key``'s inputs onto ``worker``; False when one cannot be had."""
        for dep, (kind, *info) in self.computes[key]["deps"].items():
            peers = info[0] if kind == "remote" else []
            if kind == "inline" or any(
                dep in self.held.get(address.removeprefix("tcp://"), ()) for address in peers
            ):
                self.held[worker].add(dep)
            elif dep not in self.held[worker]:
                return False
        return True


@settings(max_examples=60, deadline=None)
@given(graph=dags(), n_workers=st.integers(2, 3), data=st.data())
def test_random_dags_survive_worker_deaths(
    graph: tuple[list[dict[str, Any]], list[str]], n_workers: int, data: st.DataObject
) -> None:
    tasks = [{**t, "retries": -1} for t in graph[0]]
    wants = graph[1]
    sim = Sim()
    sim.node("n1", {"CPU": n_workers})
    for i in range(n_workers):
        sim.worker(f"w{i}")
    stores = Stores(sim.state.workers)
    stores.absorb(sim.submit(tasks, wants=wants))
    deaths = data.draw(st.integers(0, n_workers - 1))
    for _ in range(40 * len(tasks)):
        running = sorted(sim.processing())
        if not running:
            break
        if deaths and data.draw(st.integers(0, 3)) == 0:
            victim = data.draw(st.sampled_from(sorted(stores.held)))
            del stores.held[victim]
            deaths -= 1
            stores.absorb(sim.do("handle_remove_worker", victim))
            continue
        key = data.draw(st.sampled_from(running))
        worker = sim.where(key)
        if not stores.gather(worker, key):  # the worker's fetch fails: it says so
            stores.absorb(sim.err(key, error("ObjectLostError"), retryable=True))
            continue
        stores.held[worker].add(key)
        big = sim.state.tasks[key].prefix == "big"
        duration = data.draw(st.sampled_from([1e-3, 0.5]))
        out = sim.finish(key, nbytes=BIG if big else 8, inline=not big, duration=duration)
        stores.absorb(out)
    assert sim.processing() == set()
    assert msgs(sim.log, "key-erred") == []
    assert all(sim.status(k) == "memory" for k in wants)
    # recomputed keys may be reported again, but every wanted key is reported
    assert {m["key"] for m in msgs(sim.log, "key-in-memory", ("client", "c"))} == set(wants)
    sim.do("handle_release_keys", "c", wants)
    assert sim.state.tasks == {}
