"""The shared-memory object store under a real local cluster (processes, TCP, /dev/shm)."""

from __future__ import annotations

import gc
import glob
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import graphexec as ge

MB = 1024 * 1024


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def cluster():
    ge.init(num_cpus=2, object_store_memory=256 * MB)
    try:
        yield
    finally:
        ge.shutdown()


@ge.remote
def make_array(n, seed=0):
    return np.random.default_rng(seed).random(n)


@ge.remote
def describe(x):
    return {
        "sum": float(x.sum()),
        "writeable": bool(x.flags.writeable),
        "owndata": bool(x.flags.owndata),
    }


pytestmark = pytest.mark.allow_leaks("threads")


def test_put_get_is_zero_copy_and_read_only(cluster):
    array = np.arange(4 * MB // 8, dtype=np.float64)
    ref = ge.put(array)
    first, second = ge.get(ref), ge.get(ref)
    np.testing.assert_array_equal(first, array)
    assert not first.flags.writeable and not first.flags.owndata
    assert np.shares_memory(first, second)  # both are views of the one shared copy
    with pytest.raises(ValueError):
        first[0] = 1.0


def test_round_trips_of_common_types(cluster):
    df = pd.DataFrame({"a": np.arange(200_000), "b": np.random.default_rng(1).random(200_000)})
    table = pa.table({"x": np.arange(300_000), "y": [str(i % 7) for i in range(300_000)]})
    nested = {"arrays": [np.ones(100_000), np.zeros(50_000)], "text": "x" * 200_000, "n": 3}
    for value in (df, table, nested):
        back = ge.get(ge.put(value))
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(back, value)
        elif isinstance(value, pa.Table):
            assert back.equals(value)
        else:
            assert back["text"] == nested["text"] and back["n"] == 3
            np.testing.assert_array_equal(back["arrays"][0], nested["arrays"][0])


def test_task_results_live_in_the_store_and_tasks_read_them_zero_copy(cluster):
    big = make_array.remote(2 * MB)  # 16 MB: goes to the store
    info = ge.get(describe.remote(big))
    assert info["writeable"] is False and info["owndata"] is False
    assert info["sum"] == pytest.approx(float(ge.get(big).sum()))
    stats = ge.object_store_stats()
    assert stats["num_objects"] >= 1 and stats["used_bytes"] >= 16 * MB


def test_one_object_to_many_tasks_keeps_one_copy(cluster):
    stats_before = ge.object_store_stats()
    ref = ge.put(np.ones(100 * MB // 8))
    results = ge.get([describe.remote(ref) for _ in range(8)])
    assert all(r["sum"] == 100 * MB // 8 and not r["writeable"] for r in results)
    stats = ge.object_store_stats()
    grown = stats["used_bytes"] - stats_before["used_bytes"]
    assert 100 * MB <= grown < 101 * MB  # one copy, not eight


def test_dropping_refs_frees_the_store(cluster):
    refs = [ge.put(np.full(MB, i, dtype=np.uint8)) for i in range(5)]
    before = ge.object_store_stats()["num_objects"]
    del refs
    gc.collect()
    assert _wait(lambda: ge.object_store_stats()["num_objects"] <= before - 5)


def test_store_directory_exists_while_running(cluster):
    dirs = glob.glob("/dev/shm/graphexec-*")
    assert dirs, "the store should live in /dev/shm on this machine"
    assert ge.cluster_resources()["object_store_memory"] == 256 * MB
