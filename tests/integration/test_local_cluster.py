"""Real processes over real TCP: the local cluster that ``init()`` starts."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

import graphexec as ge
from graphexec.errors import WorkerCrashedError


@pytest.fixture(scope="module")
def cluster():
    ctx = ge.init(num_cpus=2, resources={"disk": 1})
    try:
        yield ctx
    finally:
        ge.shutdown()


@ge.remote
def square(x):
    return x * x


def _descendants():
    return psutil.Process().children(recursive=True)


@pytest.mark.allow_leaks("threads")
def test_basic_get_and_resources(cluster):
    assert ge.get([square.remote(i) for i in range(10)]) == [i * i for i in range(10)]
    resources = ge.cluster_resources()
    assert resources["CPU"] == 2.0 and resources["disk"] == 1.0
    assert resources["node:127.0.0.1"] == 1.0
    assert ge.is_initialized()
    nodes = ge.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"]
    assert ":" in cluster.address


@pytest.mark.allow_leaks("threads")
def test_numpy_round_trip_between_processes(cluster):
    @ge.remote
    def make(n):
        return np.arange(n, dtype=np.int64)

    @ge.remote
    def total(a):
        return int(a.sum())

    arrays = [make.remote(300_000) for _ in range(3)]
    assert ge.get([total.remote(a) for a in arrays]) == [sum(range(300_000))] * 3
    np.testing.assert_array_equal(ge.get(arrays[0]), np.arange(300_000))


@pytest.mark.allow_leaks("threads")
def test_user_exception_does_not_kill_worker(cluster):
    @ge.remote
    def boom():
        raise KeyError("nope")

    pids_before = {w["pid"] for n in ge.nodes() for w in n["Workers"]}
    with pytest.raises(KeyError):
        ge.get(boom.remote())
    assert ge.get(square.remote(3)) == 9
    pids_after = {w["pid"] for n in ge.nodes() for w in n["Workers"]}
    assert pids_before == pids_after


@pytest.mark.allow_leaks("threads", "processes")
def test_worker_death_costs_a_retry_not_a_result(cluster, tmp_path):
    marker = tmp_path / "died-once"

    @ge.remote(max_retries=2)
    def die_once():
        if not marker.exists():
            marker.write_text("x")
            os._exit(1)  # the worker process dies mid-task
        return "survived"

    assert ge.get(die_once.remote(), timeout=60) == "survived"
    # the node manager restarts the dead worker
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sum(len(n["Workers"]) for n in ge.nodes()) == 2:
            break
        time.sleep(0.05)
    assert sum(len(n["Workers"]) for n in ge.nodes()) == 2


@pytest.mark.allow_leaks("threads", "processes")
def test_worker_crash_without_retries_is_reported(cluster):
    @ge.remote(max_retries=0)
    def always_die():
        os._exit(1)

    with pytest.raises(WorkerCrashedError, match="died"):
        ge.get(always_die.remote(), timeout=60)


@pytest.mark.allow_leaks("threads")
def test_nested_tasks_across_processes(cluster):
    @ge.remote
    def fan_out(n):
        return sum(ge.get([square.remote(i) for i in range(n)]))

    assert ge.get([fan_out.remote(4) for _ in range(4)], timeout=60) == [14] * 4


@pytest.mark.allow_leaks("threads")
def test_errors_for_misuse(cluster):
    with pytest.raises(RuntimeError, match="already called"):
        ge.init()
    assert ge.init(ignore_reinit_error=True) is cluster
    with pytest.raises(TypeError, match="unknown keyword"):
        ge.init(num_cpu=2)


@pytest.mark.allow_leaks("threads", "processes")
def test_available_resources_reflect_running_work_and_force_cancel(cluster, tmp_path):
    from graphexec.errors import TaskCancelledError

    started = tmp_path / "started"

    @ge.remote(num_cpus=1)
    def hold():
        started.write_text("x")
        time.sleep(60)

    ref = ge.persist(hold.remote())
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists()
    assert ge.available_resources()["CPU"] == 1.0  # one of two CPUs is busy
    ge.cancel(ref, force=True)  # kills the worker running it
    with pytest.raises(TaskCancelledError):
        ge.get(ref, timeout=10)
    deadline = time.monotonic() + 20
    while ge.available_resources()["CPU"] != 2.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ge.available_resources()["CPU"] == 2.0
    assert ge.get(square.remote(5)) == 25
