"""The executor's admission control, driven with real threads and events (no sleeps).

Tasks here block on ``threading.Event``\\ s the test controls; every wait has a deadline
so a broken executor fails the test instead of hanging it. Every executor is closed
before its test ends (the harness fails tests that leak ``graphexec-*`` threads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from graphexec.worker.executor import ExecItem, Executor, current_item, notify_blocked

TIMEOUT = 5.0


class Done:
    """``on_done`` that records batches and lets tests wait for keys."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._cond = threading.Condition()

    def __call__(self, items: list[ExecItem]) -> None:
        with self._cond:
            self.batches.append([item.key for item in items])
            self._cond.notify_all()

    @property
    def keys(self) -> list[str]:
        with self._cond:  # reentrant: also called from wait_for's predicate
            return [key for batch in self.batches for key in batch]

    def wait_for(self, *keys: str, timeout: float = TIMEOUT) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: set(keys) <= set(self.keys), timeout)
        assert ok, f"not delivered in {timeout}s: {set(keys) - set(self.keys)}"


@pytest.fixture
def done() -> Done:
    return Done()


@pytest.fixture
def make_executor(done: Done) -> Iterator[Callable[..., Executor]]:
    made: list[Executor] = []

    def make(cpus: float) -> Executor:
        ex = Executor(cpus, done, name="graphexec-test-runner")
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.close()


class Gate:
    """A task body that says it started, then waits until the test opens the gate."""

    def __init__(self, result: Any = None) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()
        self.result = result

    def __call__(self) -> Any:
        self.started.set()
        assert self.opened.wait(TIMEOUT), "gate never opened"
        return self.result

    def wait_started(self) -> None:
        assert self.started.wait(TIMEOUT), "task never started"


def test_runs_items_and_keeps_results(make_executor: Callable[..., Executor], done: Done) -> None:
    ex = make_executor(2)
    items = [ExecItem(f"k{i}", 1.0, lambda i=i: i * i) for i in range(10)]
    ex.submit(items)
    done.wait_for(*(item.key for item in items))
    assert [item.result for item in items] == [i * i for i in range(10)]
    assert sorted(done.keys) == sorted(item.key for item in items)  # each exactly once


def test_admission_by_cpus(make_executor: Callable[..., Executor], done: Done) -> None:
    ex = make_executor(2)
    gates = [Gate() for _ in range(3)]
    ex.submit([ExecItem(f"g{i}", 1.0, gate) for i, gate in enumerate(gates)])
    gates[0].wait_started()
    gates[1].wait_started()
    assert not gates[2].started.is_set()
    assert ex.queued == 1  # 2 CPUs busy: the third waits in line
    gates[0].opened.set()
    gates[2].wait_started()
    for gate in gates:
        gate.opened.set()
    done.wait_for("g0", "g1", "g2")


def test_fractional_items_pack_into_one_cpu(
    make_executor: Callable[..., Executor], done: Done
) -> None:
    ex = make_executor(1)
    together = threading.Barrier(4, timeout=TIMEOUT)  # breaks unless all 4 run at once
    ex.submit([ExecItem(f"q{i}", 0.25, together.wait) for i in range(4)])
    done.wait_for("q0", "q1", "q2", "q3")


def test_item_larger_than_the_executor_starts_when_idle(
    make_executor: Callable[..., Executor], done: Done
) -> None:
    ex = make_executor(1)
    first = Gate()
    ex.submit([ExecItem("small", 1.0, first), ExecItem("huge", 4.0, lambda: "ran")])
    first.wait_started()
    assert ex.queued == 1
    first.opened.set()
    done.wait_for("huge")


def test_zero_cpu_items_always_start(make_executor: Callable[..., Executor], done: Done) -> None:
    ex = make_executor(1)
    busy = Gate()
    ex.submit([ExecItem("busy", 1.0, busy)])
    busy.wait_started()
    zeros = [Gate() for _ in range(3)]
    ex.submit([ExecItem(f"z{i}", 0.0, gate) for i, gate in enumerate(zeros)])
    for gate in zeros:
        gate.wait_started()  # all three run beside the busy CPU
    for gate in [busy, *zeros]:
        gate.opened.set()
    done.wait_for("busy", "z0", "z1", "z2")


def test_block_lends_the_slot_to_a_task_queued_behind(
    make_executor: Callable[..., Executor], done: Done
) -> None:
    ex = make_executor(1)
    child_ran = threading.Event()

    def parent() -> str:
        item = current_item()
        assert item is not None and item.key == "parent"
        ex.block(item)  # as a nested ``get`` does
        try:
            assert child_ran.wait(TIMEOUT), "deadlock: the child never got a slot"
        finally:
            ex.unblock(item)
        return "parent done"

    def child() -> str:
        child_ran.set()
        return "child done"

    parent_item = ExecItem("parent", 1.0, parent)
    ex.submit([parent_item, ExecItem("child", 1.0, child)])
    done.wait_for("parent", "child")
    assert parent_item.result == "parent done"


def test_block_and_unblock_are_idempotent(
    make_executor: Callable[..., Executor], done: Done
) -> None:
    ex = make_executor(1)
    gate = Gate()
    after = Gate()

    def body() -> None:
        item = current_item()
        assert item is not None
        ex.block(item)
        ex.block(item)  # one CPU lent, not two
        gate()
        ex.unblock(item)
        ex.unblock(item)

    last = Gate()
    ex.submit([ExecItem("b", 1.0, body), ExecItem("x", 1.0, after), ExecItem("y", 1.0, last)])
    after.wait_started()
    assert ex.queued == 1  # lent one CPU: x runs, y still waits
    for g in (gate, after, last):
        g.opened.set()
    done.wait_for("b", "x", "y")


def test_notify_blocked_lends_the_slot_and_tells_on_block(done: Done) -> None:
    calls: list[tuple[str, bool]] = []
    ex = Executor(
        1,
        done,
        name="graphexec-test-runner",
        on_block=lambda item, blocked: calls.append((item.key, blocked)),
    )
    child_ran = threading.Event()

    def parent() -> bool:
        notify_blocked(True)
        try:
            return child_ran.wait(TIMEOUT)
        finally:
            notify_blocked(False)

    parent_item = ExecItem("parent", 1.0, parent)
    try:
        ex.submit([parent_item, ExecItem("child", 1.0, child_ran.set)])
        done.wait_for("parent", "child")
    finally:
        ex.close()
    assert parent_item.result is True
    assert calls == [("parent", True), ("parent", False)]


def test_notify_blocked_outside_runner_threads_is_a_no_op() -> None:
    notify_blocked(True)
    notify_blocked(False)


def test_current_item_is_none_outside_runner_threads() -> None:
    assert current_item() is None


def test_cancel_drops_a_queued_item(make_executor: Callable[..., Executor], done: Done) -> None:
    ex = make_executor(1)
    busy = Gate()
    ran = threading.Event()
    ex.submit([ExecItem("busy", 1.0, busy), ExecItem("later", 1.0, ran.set)])
    busy.wait_started()
    assert ex.cancel("later") is True
    assert ex.cancel("busy") is False  # already running
    assert ex.cancel("unknown") is False
    busy.opened.set()
    done.wait_for("busy")
    ex.close()
    assert not ran.is_set()
    assert done.keys == ["busy"]


def test_every_result_is_handed_back_once(
    make_executor: Callable[..., Executor], done: Done
) -> None:
    ex = make_executor(1)
    first = Gate()
    items = [ExecItem("first", 1.0, first)]
    items += [ExecItem(f"t{i}", 1.0, lambda i=i: i) for i in range(50)]
    ex.submit(items)  # all queued behind the first one
    first.wait_started()
    first.opened.set()
    done.wait_for(*(item.key for item in items))
    assert sorted(done.keys) == sorted(item.key for item in items)
    # one call per item, in order: coalescing wake-ups is the owner's job (worker.py)
    assert [b for batch in done.batches for b in batch] == [item.key for item in items]


def test_a_result_is_not_held_back_by_the_next_slow_item(
    make_executor: Callable[..., Executor], done: Done
) -> None:
    ex = make_executor(1)
    fast_reported = threading.Event()
    seen: list[bool] = []

    def on_done(items: list[ExecItem]) -> None:
        done(items)
        if any(item.key == "fast" for item in items):
            fast_reported.set()

    ex._on_done = on_done

    def slow() -> None:
        # e.g. a task that waits (nested get) for a result the scheduler only learns
        # about once "fast" is reported
        seen.append(fast_reported.wait(0.5))

    ex.submit([ExecItem("fast", 1.0, lambda: 1), ExecItem("slow", 1.0, slow)])
    done.wait_for("fast", "slow")
    assert seen == [True]


def test_close_joins_idle_runner_threads(done: Done) -> None:
    ex = Executor(4, done, name="graphexec-close-test")
    gates = [Gate() for _ in range(4)]
    ex.submit([ExecItem(f"g{i}", 1.0, gate) for i, gate in enumerate(gates)])
    for gate in gates:
        gate.wait_started()
    for gate in gates:
        gate.opened.set()
    done.wait_for("g0", "g1", "g2", "g3")
    threads = [t for t in threading.enumerate() if t.name.startswith("graphexec-close-test")]
    assert threads
    ex.close()
    assert not any(t.is_alive() for t in threads)
    ex.submit([ExecItem("late", 1.0, lambda: None)])  # ignored once closed
    assert ex.queued == 0


def test_close_from_a_runner_drops_queued_items_and_flushes_the_running_one(
    done: Done,
) -> None:
    ex = Executor(1, done, name="graphexec-close-test")
    ran = threading.Event()

    def closing() -> str:
        ex.close()  # from a runner thread: must not try to join itself
        return "closed"

    ex.submit([ExecItem("closing", 1.0, closing), ExecItem("queued", 1.0, ran.set)])
    done.wait_for("closing")
    ex.close()
    assert done.keys == ["closing"]
    assert not ran.is_set()


def test_back_to_back_submits_reuse_one_runner() -> None:
    """A woken runner that has not taken its item yet must not make submit start another
    thread (the soak benchmark found task workers at 289 threads)."""
    done: list[ExecItem] = []
    ex = Executor(1.0, done.extend)
    try:
        for i in range(2000):
            ex.submit([ExecItem(f"k{i}", 1.0, lambda: None)])
        deadline = time.monotonic() + 30
        while len(done) < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(done) == 2000
        assert len(ex._threads) == 1
    finally:
        ex.close()
