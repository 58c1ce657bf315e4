"""``Queue``: the actor's logic driven by hand, then real queues shared with tasks and actors."""

from __future__ import annotations

import asyncio
import pickle
import queue as stdlib_queue
import time

import pytest

import graphexec as ge
from graphexec.actors.queue import _QueueActor
from graphexec.errors import ActorDiedError
from graphexec.util import Queue as UtilQueue
from graphexec.util.queue import Empty, Full, Queue

# ------------------------------------------------------------------ the actor, by hand


def test_exceptions_are_the_stdlib_ones():
    assert issubclass(Empty, stdlib_queue.Empty) and issubclass(Full, stdlib_queue.Full)
    assert UtilQueue is Queue


def test_actor_logic_without_a_cluster():
    async def main():
        actor = _QueueActor(2)
        assert await actor.put((1,), 0) and await actor.put((2,), None)
        assert await actor.full() and await actor.qsize() == 2
        assert not await actor.put((3,), 0)
        assert not await actor.put((3,), 0.01)  # waited, timed out
        assert await actor.put_nowait_batch([3]) is not None  # all or nothing
        assert await actor.get(0) == (True, 1)
        assert await actor.get_nowait_batch(2) == (
            False,
            "Cannot get 2 items from queue of size 1.",
        )
        assert await actor.get_nowait_batch(1) == (True, [2])
        assert await actor.empty() and await actor.get(0) == (False, None)
        assert await actor.get(0.01) == (False, None)

        waiter = asyncio.ensure_future(actor.get(None))
        await asyncio.sleep(0)
        drained = asyncio.ensure_future(actor.drain())
        await asyncio.sleep(0)
        assert not drained.done()  # a consumer is waiting
        assert await actor.put((4,), None)
        assert await waiter == (True, 4)
        await asyncio.wait_for(drained, 1)

    asyncio.run(main())


# ------------------------------------------------------------------ real queues

# the module-scoped cluster's client threads are checked when its fixture is torn down
allow_threads = pytest.mark.allow_leaks("threads")


@pytest.fixture(scope="module")
def cluster():
    ge.init(num_cpus=2)
    try:
        yield
    finally:
        ge.shutdown()


@pytest.fixture
def q(cluster):
    queue = Queue(maxsize=3)
    try:
        yield queue
    finally:
        queue.shutdown(force=True)


@ge.remote
def produce(q, n):
    for i in range(n):
        q.put(i)
    return n


@ge.remote
def consume(q, n):
    return [q.get(timeout=30) for _ in range(n)]


@ge.remote
class Consumer:
    def take(self, q, n):
        return [q.get(timeout=30) for _ in range(n)]


@allow_threads
def test_producer_task_consumer_driver(q):
    done = ge.submit(produce.remote(q, 10))  # blocks on the full queue (maxsize 3) in turns
    assert [q.get(timeout=30) for _ in range(10)] == list(range(10))
    assert ge.get(done) == 10
    assert q.empty()


@allow_threads
def test_driver_producer_actor_consumer(q):
    consumer = Consumer.remote()
    try:
        taken = consumer.take.remote(q, 5)
        for i in range(5):
            q.put(i * i, timeout=30)
        assert ge.get(taken, timeout=30) == [0, 1, 4, 9, 16]
    finally:
        ge.kill(consumer)


@allow_threads
def test_task_consumer_and_pickled_copy(q):
    copy = pickle.loads(pickle.dumps(q))
    copy.put_nowait("a")
    assert q.get_nowait() == "a"
    q.put_nowait_batch(["x", "y"])
    assert ge.get(consume.remote(q, 2), timeout=30) == ["x", "y"]


@allow_threads
def test_a_ref_comes_out_as_the_same_ref(q):
    ref = ge.put([1, 2, 3])  # held here for the whole test
    q.put(ref)
    q.put_nowait_batch([ref])
    first, second = q.get(timeout=30), q.get_nowait()
    assert isinstance(first, ge.ObjectRef) and first == ref and second == ref
    assert ge.get(first) == [1, 2, 3]


@allow_threads
def test_blocking_get_times_out_with_empty(q):
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 2.0
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)


@allow_threads
def test_full_queue_put(q):
    for i in range(3):
        q.put_nowait(i)
    assert q.full() and q.qsize() == 3 and len(q) == 3 and q.size() == 3
    with pytest.raises(Full):
        q.put_nowait(3)
    start = time.monotonic()
    with pytest.raises(Full):
        q.put(3, timeout=0.1)
    assert time.monotonic() - start >= 0.09
    with pytest.raises(Full):
        q.put(3, block=True, timeout=0)
    with pytest.raises(ValueError, match="non-negative"):
        q.put(3, timeout=-0.5)
    assert q.get() == 0
    assert not q.full()


@allow_threads
def test_batch_operations_are_all_or_nothing(q):
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full, match="Cannot add 2 items"):
        q.put_nowait_batch([3, 4])
    assert q.qsize() == 2
    q.put_nowait_batch(iter([3]))
    with pytest.raises(Empty, match="Cannot get 4 items"):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait_batch(3) == [1, 2, 3]
    assert q.empty() and not q.full()
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)


@allow_threads
def test_async_put_and_get(q):
    async def main():
        with pytest.raises(Empty):
            await q.get_async(block=False, timeout=5)  # block=False ignores the timeout
        with pytest.raises(Empty):
            await q.get_async(timeout=0.05)
        await q.put_async("first")
        await q.put_async("second", timeout=5)
        assert await q.get_async() == "first"
        await q.put_async("third", block=False)
        await q.put_async("fourth", block=False)
        with pytest.raises(Full):
            await q.put_async("fifth", block=False)
        with pytest.raises(Full):
            await q.put_async("fifth", timeout=0.05)
        with pytest.raises(Empty):
            q.get_nowait_batch(4)
        return [await q.get_async(timeout=5) for _ in range(3)]

    assert asyncio.run(main()) == ["second", "third", "fourth"]
    assert q.empty()


@allow_threads
def test_unbounded_queue_and_shutdown(cluster):
    queue = Queue()
    copy = pickle.loads(pickle.dumps(queue))
    queue.put_nowait_batch(range(100))
    assert len(queue) == 100 and not queue.full()
    start = time.monotonic()
    queue.shutdown()  # nothing in progress: no need to wait the grace period
    assert time.monotonic() - start < 2.0
    queue.shutdown()  # a second call does nothing
    with pytest.raises(RuntimeError, match="shut down"):
        queue.put(1)
    # kill is asynchronous (as ray.kill): a call already on its way may still be answered
    deadline = time.monotonic() + 10
    with pytest.raises(ActorDiedError):
        while time.monotonic() < deadline:
            copy.qsize()


@allow_threads
def test_shutdown_gives_calls_in_progress_the_grace_period(cluster):
    # Calls from one process reach an actor in order, so each raw `get` below is waiting
    # in the actor before the `drain` that shutdown() sends.
    queue = Queue()
    ends_by_itself = queue.actor.get.remote(0.2)  # a get that times out after 0.2 s
    start = time.monotonic()
    queue.shutdown(grace_period_s=30)
    assert 0.15 <= time.monotonic() - start < 10.0  # returned when the get ended
    assert ge.get(ends_by_itself, timeout=30) == (False, None)

    queue = Queue()
    assert queue.empty()  # up (see test_forced_shutdown_does_not_wait)
    blocked = queue.actor.get.remote(None)  # a consumer that would wait forever
    start = time.monotonic()
    queue.shutdown(grace_period_s=0.3)
    assert 0.25 <= time.monotonic() - start < 10.0
    with pytest.raises(ActorDiedError):
        ge.get(blocked, timeout=30)
    with pytest.raises(ValueError, match="grace_period_s"):
        queue.shutdown(grace_period_s=-1)


@allow_threads
def test_forced_shutdown_does_not_wait(cluster):
    queue = Queue()
    # up before it is killed: an actor killed while starting slows ge.shutdown() by ~3 s
    assert queue.empty()
    blocked = queue.actor.get.remote(None)
    start = time.monotonic()
    queue.shutdown(force=True, grace_period_s=30)
    assert time.monotonic() - start < 5.0
    with pytest.raises(ActorDiedError):
        ge.get(blocked, timeout=30)
    with pytest.raises(RuntimeError, match="shut down"):
        queue.get()
