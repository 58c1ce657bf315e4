"""The Ray-style API against an in-process cluster (inproc transport, real threads)."""

from __future__ import annotations

import gc
import operator
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphexec as ge
from graphexec.errors import GetTimeoutError, TaskCancelledError, TaskError
from graphexec.graph.local import execute
from graphexec.graph.task import Task, TaskRef
from graphexec.testing.cluster import InProcessCluster

# the module-scoped cluster starts executor threads on demand; they are its own, checked
# when the module's fixture is torn down
pytestmark = pytest.mark.allow_leaks("threads")


@pytest.fixture(scope="module")
def cluster():
    with InProcessCluster(workers=2) as c:
        yield c


@ge.remote
def inc(x):
    return x + 1


@ge.remote
def add(x, y):
    return x + y


@ge.remote
def fail(x):
    raise ValueError(f"bad value {x}")


def test_remote_is_lazy_until_get(cluster, tmp_path):
    marker = tmp_path / "ran"

    @ge.remote
    def record(x):
        marker.write_text(str(x))
        return x

    ref = record.remote(1)
    assert isinstance(ref, ge.ObjectRef)
    time.sleep(0.05)
    assert not marker.exists()  # nothing ran: refs are lazy
    assert ge.get(ref) == 1
    assert marker.read_text() == "1"


def test_get_list_and_chain(cluster):
    refs = [inc.remote(i) for i in range(50)]
    assert ge.get(refs) == list(range(1, 51))
    ref = inc.remote(0)
    for _ in range(99):
        ref = inc.remote(ref)
    assert ref.compute() == 100


def test_refs_nested_in_containers(cluster):
    @ge.remote
    def total(items, mapping):
        # nested refs arrive as ObjectRefs (Ray semantics); get them here
        return sum(ge.get(items)) + ge.get(mapping["k"])

    a, b = inc.remote(1), inc.remote(2)
    assert ge.get(total.remote([a, b], {"k": inc.remote(10)})) == 2 + 3 + 11


def test_delayed_resolves_nested(cluster):
    total = ge.delayed(sum)
    parts = [ge.delayed(operator.mul)(i, 2) for i in range(5)]
    assert ge.compute(total(parts)) == (20,)


def test_error_is_task_error_and_user_class(cluster):
    ref = fail.remote(3)
    with pytest.raises(ValueError, match="bad value 3") as info:
        ge.get(ref)
    assert isinstance(info.value, TaskError)
    assert "Remote traceback" in str(info.value)
    assert "raise ValueError" in info.value.traceback_str
    # dependents fail with the same error
    with pytest.raises(ValueError, match="bad value 3"):
        ge.get(inc.remote(fail.remote(3)))
    # and the worker survives
    assert ge.get(inc.remote(1)) == 2


def test_temporary_refs_as_arguments_stay_alive(cluster):
    # the put's only ref is a temporary: its release must not overtake the graph using it
    for _ in range(20):
        assert ge.get(inc.remote(ge.put(41))) == 42
        assert float(ge.get(add.remote(ge.put(np.ones(200_000)), 0)).sum()) == 200_000
    first = inc.remote(1)
    assert ge.get(first) == 2
    later = add.remote(first, 1)
    del first  # submitted before, referenced only by the lazy task now
    assert ge.get(later) == 3


def test_num_returns(cluster):
    @ge.remote(num_returns=3)
    def three():
        return 1, 2, 3

    a, b, c = three.remote()
    assert ge.get([c, a, b]) == [3, 1, 2]


def test_put_small_and_large(cluster):
    small = ge.put({"a": 1})
    big_array = np.arange(1_000_000, dtype=np.float64)
    big = ge.put(big_array)
    assert ge.get(small) == {"a": 1}

    @ge.remote
    def total(x):
        return float(x.sum())

    assert ge.get(total.remote(big)) == float(big_array.sum())
    np.testing.assert_array_equal(ge.get(big), big_array)


def test_large_results_move_between_workers(cluster):
    @ge.remote
    def make(n):
        return np.ones(n)

    refs = [make.remote(200_000) for _ in range(4)]
    totals = [add.remote(r, 0) for r in refs]
    assert [float(t.sum()) for t in ge.get(totals)] == [200_000.0] * 4


def test_wait_completion_order_and_timeout(cluster):
    @ge.remote
    def sleepy(t):
        time.sleep(t)
        return t

    slow, fast = sleepy.remote(0.5), sleepy.remote(0.01)
    ready, not_ready = ge.wait([slow, fast], num_returns=1, timeout=5)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = ge.wait([slow, fast], num_returns=2, timeout=5)
    assert set(ready) == {slow, fast} and not_ready == []
    blocked = sleepy.remote(2)
    ready, not_ready = ge.wait([blocked], timeout=0.05)
    assert ready == [] and not_ready == [blocked]


def test_get_timeout_explains(cluster):
    @ge.remote(resources={"unicorn": 1})
    def needs_unicorn():
        return 1

    with pytest.raises(GetTimeoutError, match="unicorn"):
        ge.get(needs_unicorn.remote(), timeout=0.2)


def test_nested_tasks_do_not_deadlock(cluster):
    @ge.remote
    def parent(n):
        return sum(ge.get([inc.remote(i) for i in range(n)]))

    # more parents than CPU slots, each blocking on children
    assert ge.get([parent.remote(5) for _ in range(6)]) == [15] * 6


def test_fractional_cpus_pack(cluster):
    @ge.remote(num_cpus=0.25)
    def span():
        start = time.monotonic()
        time.sleep(0.3)
        return start, time.monotonic()

    spans = ge.get([span.remote() for _ in range(8)], timeout=20)
    # 8 quarter-CPU tasks on 2 CPUs: all run at once, so every pair overlaps
    latest_start = max(s for s, _ in spans)
    earliest_end = min(e for _, e in spans)
    assert latest_start < earliest_end


def test_cancel_pending(cluster):
    @ge.remote(resources={"unicorn": 1})
    def never():
        return 1

    ref = never.remote()
    ge.persist(ref)
    ge.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ge.get(ref, timeout=5)


def test_released_refs_free_cluster_memory(cluster):
    refs = [inc.remote(i) for i in range(20)]
    ge.get(refs)
    del refs
    gc.collect()
    state = cluster.scheduler.state

    def leftover():
        return [k for k in state.tasks if k.startswith("inc-")]

    deadline = time.monotonic() + 5
    while leftover() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leftover() == []
    cluster.validate_state()


def test_pure_tasks_share_results(cluster, tmp_path):
    @ge.remote
    def once(x):
        with open(tmp_path / "calls", "a") as f:
            f.write(f"{x}\n")
        return x * 2

    pure = once.options(pure=True)
    a, b = pure.remote(21), pure.remote(21)
    assert a == b  # same key
    assert ge.get([a, b]) == [42, 42]
    assert (tmp_path / "calls").read_text() == "21\n"


def test_options_errors(cluster):
    with pytest.raises(ValueError, match="did you mean 'num_cpus'"):
        inc.options(num_cpu=1)
    with pytest.raises(TypeError, match="cannot be called directly"):
        inc(1)
    with pytest.raises(TypeError, match="ObjectRef"):
        ge.get(1)
    with pytest.raises(TypeError, match="ObjectRef"):
        ge.get([inc.remote(1), 2])


def test_unserializable_argument_is_clear(cluster):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot serialize"):
        ge.get(inc.remote(lock))


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_random_dags_match_sequential(cluster, data):
    """The distributed result of a random DAG equals a sequential evaluation."""
    n = data.draw(st.integers(1, 25))
    graph = {}
    refs = []
    for i in range(n):
        deps = data.draw(st.lists(st.integers(0, i - 1), max_size=3)) if i else []
        const = data.draw(st.integers(-5, 5))
        graph[f"k{i}"] = Task(f"k{i}", _combine, (const, *[TaskRef(f"k{d}") for d in deps]))
        refs.append(add_many.remote(const, *[refs[d] for d in deps]))
    wanted = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5, unique=True))
    expected = execute(graph, [f"k{w}" for w in wanted])
    assert ge.get([refs[w] for w in wanted]) == [expected[f"k{w}"] for w in wanted]


def _combine(*xs):
    return sum(xs) + 1


@ge.remote
def add_many(*xs):
    return sum(xs) + 1
