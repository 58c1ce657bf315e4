"""``ActorPool`` over real actors: order, completion order, queueing, timeouts, errors."""

from __future__ import annotations

import time

import pytest

import graphexec as ge
from graphexec.actors.pool import ActorPool
from graphexec.errors import ActorDiedError, GetTimeoutError

# the module-scoped cluster's client threads are checked when its fixture is torn down
pytestmark = pytest.mark.allow_leaks("threads")


@ge.remote
class Worker:
    def double(self, x):
        return 2 * x

    def slow(self, x, delay):
        time.sleep(delay)
        return x

    def fail(self, x):
        raise ValueError(f"bad value {x}")


@pytest.fixture(scope="module")
def cluster():
    ge.init(num_cpus=2)
    try:
        yield
    finally:
        ge.shutdown()


@pytest.fixture(scope="module")
def actors(cluster):
    """Two actors shared by the module's tests (creating one costs a process)."""
    handles = [Worker.remote(), Worker.remote()]
    assert ge.get([a.double.remote(0) for a in handles]) == [0, 0]  # both up
    return handles


def double(actor, value):
    return actor.double.remote(value)


def slow(actor, value):
    x, delay = value
    return actor.slow.remote(x, delay)


def test_map_yields_in_input_order(actors):
    pool = ActorPool(actors)
    # the first value is the slowest: order must still be the input order
    values = [(0, 0.3), (1, 0.0), (2, 0.0), (3, 0.1), (4, 0.0)]
    assert list(pool.map(slow, values)) == [0, 1, 2, 3, 4]
    assert not pool.has_next()
    assert list(pool.map(double, range(6))) == [0, 2, 4, 6, 8, 10]


def test_map_unordered_yields_every_result_as_it_completes(actors):
    pool = ActorPool(actors)
    values = [(0, 0.5), (1, 0.0), (2, 0.0), (3, 0.0)]
    results = list(pool.map_unordered(slow, values))
    assert sorted(results) == [0, 1, 2, 3]
    assert results[-1] == 0  # the slow one, on one actor, while the other did the rest
    assert sorted(pool.map_unordered(double, [1, 2, 3])) == [2, 4, 6]


def test_submit_and_get_next_in_submission_order(actors):
    pool = ActorPool(actors)
    assert not pool.has_next()
    for i in range(5):
        pool.submit(double, i)
    assert pool.has_next()
    assert not pool.has_free()  # two running, three queued
    assert [pool.get_next() for _ in range(5)] == [0, 2, 4, 6, 8]
    assert not pool.has_next()
    assert pool.has_free()
    with pytest.raises(StopIteration, match="No more results to get"):
        pool.get_next()
    with pytest.raises(StopIteration, match="No more results to get"):
        pool.get_next_unordered()


def test_get_next_unordered_returns_the_first_ready(actors):
    pool = ActorPool(actors)
    pool.submit(slow, (0, 0.5))
    pool.submit(slow, (1, 0.0))
    assert pool.get_next_unordered() == 1
    assert pool.get_next_unordered() == 0
    # get_next after get_next_unordered: the oldest result not yet retrieved
    pool.submit(slow, ("a", 0.3))
    pool.submit(slow, ("b", 0.0))
    assert pool.get_next_unordered() == "b"
    assert pool.get_next() == "a"
    assert not pool.has_next()


def test_free_pop_and_push(actors):
    a1, a2 = actors
    pool = ActorPool([a1])
    assert pool.has_free()
    pool.submit(double, 1)
    assert not pool.has_free()
    assert pool.pop_idle() is None
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a1)  # busy
    pool.push(a2)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a2)  # idle
    assert pool.get_next() == 2
    popped = {id(pool.pop_idle()), id(pool.pop_idle())}
    assert popped == {id(a1), id(a2)}
    assert pool.pop_idle() is None
    assert not pool.has_free()


def test_empty_pool_queues_until_an_actor_is_pushed(actors):
    pool = ActorPool([])
    assert not pool.has_free()
    pool.submit(double, 21)
    assert pool.has_next()
    with pytest.raises(RuntimeError, match="push"):
        pool.get_next()
    pool.push(actors[0])  # starts the queued submission
    assert pool.get_next() == 42
    assert pool.has_free()


def test_get_next_timeout_keeps_the_call_unless_ignored(actors):
    pool = ActorPool(actors)
    pool.submit(slow, ("late", 0.6))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.05)
    assert time.monotonic() - start < 0.5
    assert pool.has_next()  # still pending
    assert pool.get_next() == "late"

    pool.submit(slow, ("dropped", 0.6))
    with pytest.raises(GetTimeoutError, match="ignored"):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert not pool.has_next()
    assert pool.has_free()  # its actor came back at once

    pool.submit(slow, ("late", 0.6))
    pool.submit(slow, ("later", 0.6))
    with pytest.raises(GetTimeoutError):
        pool.get_next_unordered(timeout=0.05)
    with pytest.raises(GetTimeoutError, match="ignored"):
        pool.get_next_unordered(timeout=0.05, ignore_if_timedout=True)
    assert pool.get_next() == "later"  # "late" was the one dropped
    assert not pool.has_next()


def test_an_erroring_call_raises_and_its_actor_stays(actors):
    pool = ActorPool(actors[:1])
    pool.submit(lambda a, v: a.fail.remote(v), 7)
    pool.submit(double, 8)  # queued behind the failing call
    with pytest.raises(ValueError, match="bad value 7"):
        pool.get_next()
    assert pool.get_next() == 16
    assert pool.has_free()
    assert list(pool.map(double, [1, 2])) == [2, 4]


def test_fn_must_return_a_ref(actors):
    pool = ActorPool(actors[:1])
    with pytest.raises(TypeError, match="must return the ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free() and not pool.has_next()
    # a failing fn for a queued value is raised in that value's turn
    pool.submit(double, 1)
    pool.submit(lambda a, v: 1 / 0, 2)
    pool.submit(double, 3)
    assert pool.get_next() == 2
    with pytest.raises(ZeroDivisionError):
        pool.get_next()
    assert pool.get_next() == 6


def test_a_dead_actor_leaves_the_pool(cluster):
    doomed = Worker.remote()
    # up before it is killed: an actor killed while starting slows ge.shutdown() by ~3 s
    assert ge.get(doomed.double.remote(0)) == 0
    pool = ActorPool([doomed])
    pool.submit(slow, ("never", 5.0))
    pool.submit(double, 1)  # queued: no actor will be left to run it
    ge.kill(doomed)
    with pytest.raises(ActorDiedError):
        pool.get_next()
    assert not pool.has_free()
    assert pool.has_next()
    with pytest.raises(RuntimeError, match="push"):
        pool.get_next_unordered()
