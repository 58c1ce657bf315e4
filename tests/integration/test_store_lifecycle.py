"""Object store lifecycles: spilling, full errors, cleanup, two node managers on one machine."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import graphexec as ge
from graphexec.client.api import _session
from graphexec.errors import ObjectStoreFullError

MB = 1024 * 1024


def _reap(pids, timeout=10.0):
    """Wait for processes that became our children when their parent was killed."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours (reaped elsewhere, or no subreaper)
                if not psutil.pid_exists(pid):
                    break
                time.sleep(0.02)
                continue
            if done:
                break
            time.sleep(0.02)


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.mark.allow_leaks("threads")
def test_spilling_and_restore_under_small_capacity():
    ge.init(num_cpus=1, object_store_memory=64 * MB)
    try:
        arrays = [np.random.default_rng(i).random(2 * MB) for i in range(6)]  # 6 x 16 MB
        digests = [_digest(a) for a in arrays]
        refs = [ge.put(a) for a in arrays]
        del arrays
        stats = ge.object_store_stats()
        assert stats["spilled_bytes"] > 0 and stats["used_bytes"] <= 64 * MB
        for ref, digest in zip(refs, digests, strict=True):
            assert _digest(ge.get(ref)) == digest  # restored transparently
        with pytest.raises(ObjectStoreFullError, match="larger than the whole object store"):
            ge.put(np.zeros(80 * MB // 8))
    finally:
        ge.shutdown()


def test_store_directory_removed_on_shutdown():
    before = set(glob.glob("/dev/shm/graphexec-*"))
    ge.init(num_cpus=1, object_store_memory=32 * MB)
    created = set(glob.glob("/dev/shm/graphexec-*")) - before
    assert created
    ge.shutdown()
    assert _wait(lambda: not (set(glob.glob("/dev/shm/graphexec-*")) & created), 10)


def test_stale_store_of_a_killed_node_manager_is_cleaned_at_next_start():
    before = set(glob.glob("/dev/shm/graphexec-*"))
    ge.init(num_cpus=1, object_store_memory=32 * MB)
    try:
        created = set(glob.glob("/dev/shm/graphexec-*")) - before
        node_manager = psutil.Process(ge.nodes()[0]["Pid"])
        orphans = [p.pid for p in node_manager.children()]  # its worker processes
        node_manager.kill()  # no chance to clean up
        assert created <= set(glob.glob("/dev/shm/graphexec-*"))  # left behind
    finally:
        ge.shutdown()
    _reap(orphans)  # its workers were re-parented to this process when it died
    ge.init(num_cpus=1, object_store_memory=32 * MB)  # the next start cleans it
    try:
        assert not (created & set(glob.glob("/dev/shm/graphexec-*")))
    finally:
        ge.shutdown()


@pytest.mark.allow_leaks("threads")
def test_cross_node_transfer_between_two_node_managers():
    ge.init(num_cpus=1, resources={"first": 1}, object_store_memory=128 * MB)
    cluster = _session["cluster"]
    second = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "graphexec.worker.nodemanager",
            "--scheduler",
            cluster.address,
            "--num-cpus",
            "1",
            "--resources",
            json.dumps({"second": 1}),
            "--object-store-memory",
            str(128 * MB),
            "--owner-pid",
            str(os.getpid()),
        ],
        env=dict(os.environ, GRAPHEXEC_TOKEN=cluster.token),
    )
    try:
        assert _wait(lambda: len(ge.nodes()) == 2)

        @ge.remote(resources={"second": 1})
        def produce():
            return np.arange(10 * MB // 8, dtype=np.int64)  # 10 MB on node 2

        @ge.remote(resources={"first": 1})
        def consume(x):
            return int(x.sum()), bool(x.flags.writeable)

        ref = produce.remote()
        total, writeable = ge.get(consume.remote(ref), timeout=60)
        n = 10 * MB // 8
        assert total == n * (n - 1) // 2 and writeable is False
        np.testing.assert_array_equal(ge.get(ref), np.arange(n))  # driver on node 1
    finally:
        second.terminate()
        second.wait(10)
        ge.shutdown()
