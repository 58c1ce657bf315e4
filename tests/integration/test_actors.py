"""Actors on a real local cluster: calls, order, handles as values, concurrency, refs.

Failures, restarts, names and lifetimes are in ``test_actor_lifecycle.py`` and
``test_actor_drivers.py``.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
import time

import numpy as np
import pytest

import graphexec as ge
from graphexec.errors import TaskError


@pytest.fixture(scope="module")
def cluster():
    ctx = ge.init(num_cpus=2)
    try:
        yield ctx
    finally:
        ge.shutdown()


pytestmark = pytest.mark.allow_leaks("threads")


@ge.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n

    def value(self) -> int:
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def fail(self) -> None:
        raise KeyError("no such thing")

    @ge.method(num_returns=2)
    def pair(self) -> tuple[int, int]:
        return self.n, -self.n

    def echo(self, x):
        return x


@ge.remote
def add(x, y):
    return x + y


@ge.remote
def call_in_task(handle, n):
    return ge.get([handle.incr.remote() for _ in range(n)])[-1]


def test_calls_run_in_order_under_load(cluster):
    c = Counter.remote()
    refs = [c.incr.remote() for _ in range(1000)]
    assert ge.get(refs) == list(range(1, 1001))


def test_actor_runs_in_its_own_process(cluster):
    a, b = Counter.remote(), Counter.remote()
    pids = ge.get([a.pid.remote(), b.pid.remote()])
    assert len(set(pids)) == 2 and os.getpid() not in pids
    workers = {w["pid"] for n in ge.nodes() for w in n["Workers"]}
    assert set(pids) <= workers


def test_constructor_arguments_and_state(cluster):
    c = Counter.remote(start=10)
    assert ge.get(c.incr.remote(5)) == 15
    assert ge.get(c.value.remote()) == 15


def test_method_error_fails_that_call_only(cluster):
    c = Counter.remote()
    with pytest.raises(KeyError) as info:
        ge.get(c.fail.remote())
    assert isinstance(info.value, TaskError) and "Counter.fail" in str(info.value)
    assert ge.get(c.incr.remote()) == 1


def test_num_returns(cluster):
    c = Counter.remote(3)
    a, b = c.pair.remote()
    assert ge.get([a, b]) == [3, -3]
    _x, y = c.echo.options(num_returns=2).remote([1, 2])
    assert ge.get(y) == 2
    bad = c.echo.options(num_returns=2).remote(5)
    with pytest.raises(ValueError, match="num_returns=2"):
        ge.get(bad[0])


def test_method_refs_feed_lazy_tasks_and_other_actors(cluster):
    a, b = Counter.remote(1), Counter.remote(100)
    r = a.incr.remote()  # 2
    total = add.remote(r, 10)  # lazy task on an actor result
    assert ge.get(total) == 12
    assert ge.get(b.incr.remote(a.incr.remote())) == 103  # actor result into another actor


def test_lazy_refs_given_to_an_actor_are_submitted_first(cluster):
    c = Counter.remote()
    lazy = add.remote(add.remote(1, 2), 3)
    assert ge.get(c.incr.remote(lazy)) == 6


def test_failed_input_fails_the_call(cluster):
    @ge.remote
    def boom():
        raise ValueError("input broke")

    c = Counter.remote()
    with pytest.raises(ValueError, match="input broke"):
        ge.get(c.incr.remote(boom.remote()))
    assert ge.get(c.incr.remote()) == 1  # the call never ran


def test_handles_inside_tasks(cluster):
    c = Counter.remote()
    assert ge.get(call_in_task.remote(c, 5)) == 5
    assert ge.get(c.value.remote()) == 5


def test_handles_passed_to_other_actors(cluster):
    @ge.remote
    class Forwarder:
        def __init__(self, target):
            self.target = target

        def forward(self, by):
            return ge.get(self.target.incr.remote(by))

        def forward_to(self, other, by):
            return ge.get(other.incr.remote(by))

    c = Counter.remote()
    f = Forwarder.remote(c)
    assert ge.get(f.forward.remote(2)) == 2
    assert ge.get(f.forward_to.remote(c, 3)) == 5


def test_handles_are_values(cluster):
    c = Counter.remote()
    assert c == pickle.loads(pickle.dumps(c))
    assert len({c, pickle.loads(pickle.dumps(c))}) == 1
    assert "Counter" in repr(c)


def test_subclass_of_a_plain_class(cluster):
    class Base:
        def hello(self):
            return "base"

        def name(self):
            return "base"

    @ge.remote
    class Child(Base):
        def name(self):
            return "child"

    ch = Child.remote()
    assert ge.get([ch.hello.remote(), ch.name.remote()]) == ["base", "child"]


def test_threaded_concurrency(cluster):
    @ge.remote
    class Gate:
        def __init__(self):
            self.barrier = threading.Barrier(3, timeout=10)

        def meet(self):
            return self.barrier.wait()  # only returns when 3 calls run at once

    g = Gate.options(max_concurrency=3).remote()
    assert sorted(ge.get([g.meet.remote() for _ in range(3)], timeout=20)) == [0, 1, 2]


def test_default_concurrency_is_one_call_at_a_time(cluster):
    @ge.remote
    class Slow:
        def __init__(self):
            self.running = 0
            self.peak = 0

        def work(self):
            self.running += 1
            self.peak = max(self.peak, self.running)
            time.sleep(0.01)
            self.running -= 1
            return self.peak

    s = Slow.remote()
    assert max(ge.get([s.work.remote() for _ in range(10)])) == 1


def test_async_actor_runs_calls_concurrently(cluster):
    @ge.remote
    class AsyncWorker:
        def __init__(self):
            self.inflight = 0
            self.peak = 0

        async def work(self, i):
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
            await asyncio.sleep(0.2)
            self.inflight -= 1
            return i

        async def peak_seen(self):
            return self.peak

    w = AsyncWorker.remote()
    start = time.monotonic()
    assert ge.get([w.work.remote(i) for i in range(50)]) == list(range(50))
    assert time.monotonic() - start < 3.0  # 50 x 0.2 s sleeps overlap
    assert ge.get(w.peak_seen.remote()) > 1

    limited = AsyncWorker.options(max_concurrency=2).remote()
    ge.get([limited.work.remote(i) for i in range(6)])
    assert ge.get(limited.peak_seen.remote()) == 2


def test_large_arguments_and_results_go_through_the_store(cluster):
    c = Counter.remote()
    big = np.arange(1_000_000, dtype=np.int64)  # 8 MB
    back = ge.get(c.echo.remote(big))
    np.testing.assert_array_equal(back, big)
    stored = ge.put(big)
    np.testing.assert_array_equal(ge.get(c.echo.remote(stored)), big)
    # an actor's large result as a task's input
    assert ge.get(add.remote(c.echo.remote(big), 1))[-1] == 1_000_000


def test_wait_on_actor_results(cluster):
    @ge.remote
    class Sleeper:
        async def nap(self, t):
            await asyncio.sleep(t)
            return t

    s = Sleeper.remote()
    refs = [s.nap.remote(t) for t in (1.0, 0.05)]
    ready, pending = ge.wait(refs, num_returns=1, timeout=5)
    assert ge.get(ready) == [0.05] and len(pending) == 1


def test_actor_result_refs_can_be_shared_with_tasks(cluster):
    c = Counter.remote(41)
    ref = c.incr.remote()

    @ge.remote
    def read_nested(refs):
        return ge.get(refs[0])  # a nested ref: the task gets the ref itself

    assert ge.get(read_nested.remote([ref])) == 42


def test_bad_use_gives_clear_errors(cluster):
    c = Counter.remote()
    with pytest.raises(AttributeError, match="has no method 'nope'"):
        c.nope.remote()
    with pytest.raises(TypeError, match=r"\.remote"):
        c.incr()
    with pytest.raises(TypeError, match="cannot be instantiated directly"):
        Counter()
    with pytest.raises(TypeError, match="unknown actor option"):
        Counter.options(bogus=1)
    with pytest.raises(ValueError, match="max_concurrency"):
        Counter.options(max_concurrency=0)


def test_get_runtime_of_many_actors(cluster):
    actors = [Counter.remote(i) for i in range(6)]
    assert ge.get([a.value.remote() for a in actors]) == list(range(6))
    info = ge.cluster_info()
    alive = [a for a in info["actors"] if a["state"] == "ALIVE"]
    assert len(alive) >= 6


def test_a_method_returning_a_ref_returns_the_ref(cluster):
    c = Counter.remote()
    inner = ge.put(20)
    (back,) = ge.get(c.echo.remote([inner]))
    assert isinstance(back, ge.ObjectRef) and ge.get(back) == 20
    same = ge.get(c.echo.remote(ge.put("x")))  # a top-level ref arrives as its value
    assert same == "x"
