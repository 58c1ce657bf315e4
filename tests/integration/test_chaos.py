"""Chaos: processes of a real two-node cluster are SIGKILLed mid-graph; results stay exact.

* A task worker killed every second: the tasks it ran (or had queued) are retried
  (``max_retries``, default 3) and the node manager restarts the worker.
* A node manager killed: its workers die with it (parent-death signal), the tasks it ran
  are retried on the other node, and the objects in its store are recomputed from lineage.

The clusters are several node managers on this machine (``graphexec/testing/procs.py``).
"""

from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import psutil

import graphexec as ge
from graphexec.testing.procs import MultiNodeCluster

#: int64 elements per block: 128 KiB, above the inline limit, so blocks live in stores
BLOCK = 16 * 1024


@ge.remote
def leaf(i):
    time.sleep(0.002)  # tiny tasks, but a graph long enough for several kills
    return (i * i) % 7919


@ge.remote
def add(a, b):
    time.sleep(0.002)
    return a + b


def tree_sum(refs):
    """Pairwise reduction: ``len(refs) - 1`` ``add`` tasks."""
    while len(refs) > 1:
        pairs = [add.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        refs = pairs + refs[len(refs) - len(refs) % 2 :]
    return refs[0]


def test_worker_sigkilled_every_second_gives_exact_result():
    n_leaves = 5001  # 5001 leaves + 5000 adds: 10,001 tasks
    expected = sum((i * i) % 7919 for i in range(n_leaves))
    killed: list[int] = []
    done = threading.Event()
    rng = random.Random(5)

    with MultiNodeCluster(nodes=2, num_cpus=2) as cluster:

        def killer():
            while not done.wait(1.0):
                pid = cluster.kill_random_worker(rng)
                if pid is not None:
                    killed.append(pid)

        result = tree_sum([leaf.remote(i) for i in range(n_leaves)])
        ge.persist(result)
        thread = threading.Thread(target=killer, name="graphexec-test-killer", daemon=True)
        thread.start()
        try:
            value = ge.get(result, timeout=240)
        finally:
            done.set()
            thread.join()
        assert value == expected
        # the graph takes several seconds even unloaded (10,001 tasks of 2 ms on 4
        # workers), so the killer struck mid-graph more than once
        assert len(killed) >= 2, killed
        # the cluster is still whole: the node managers restarted the killed workers
        cluster.wait_for_workers()
        assert ge.get(tree_sum([leaf.remote(i) for i in range(10)]), timeout=60) == sum(
            (i * i) % 7919 for i in range(10)
        )


@ge.remote
def block(i, log_dir):
    """A 128 KiB block; each run leaves a file in ``log_dir`` (recomputations show)."""
    import os
    import uuid

    time.sleep(0.01)
    with open(os.path.join(log_dir, f"{i}-{uuid.uuid4().hex}"), "w"):
        pass
    return np.full(BLOCK, i, dtype=np.int64)


@ge.remote
def gate(path, limit=120.0):
    """Finish once ``path`` exists: holds the graph's second level until the test says."""
    import os

    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 0


@ge.remote
def add_gated(a, b, g):
    return a + b + g


@ge.remote
def add_blocks(a, b):
    return a + b


@ge.remote
def total(a):
    return int(a.sum())


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_node_manager_killed_mid_graph_completes_on_remaining_node(tmp_path):
    n_blocks = 64
    expected = sum(range(n_blocks)) * BLOCK
    gate_file = tmp_path / "open"
    runs = tmp_path / "runs"
    runs.mkdir()

    with MultiNodeCluster(nodes=2, num_cpus=2) as cluster:
        g = gate.remote(str(gate_file))
        level = [
            add_gated.remote(block.remote(2 * k, str(runs)), block.remote(2 * k + 1, str(runs)), g)
            for k in range(n_blocks // 2)
        ]
        while len(level) > 1:
            level = [add_blocks.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        result = total.remote(level[0])
        ge.persist(result)

        def stored():
            return {n["node_id"]: n["store_objects"] for n in ge.cluster_info()["nodes"]}

        # most blocks computed and held in a store (the next level waits on the gate;
        # a worker running the gate holds back the blocks queued behind it), several on
        # the node about to die
        victim = "node-1"
        assert _wait(lambda: sum(stored().values()) >= n_blocks // 2 and stored()[victim] >= 4), (
            stored()
        )
        workers = [psutil.Process(pid) for pid in cluster.worker_pids(victim)]
        assert workers
        cluster.kill_node(victim)

        # the node's workers die with their node manager (parent-death signal)
        def gone(proc):
            try:
                return proc.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        assert _wait(lambda: all(gone(p) for p in workers)), workers
        assert _wait(lambda: [n["node_id"] for n in ge.cluster_info()["nodes"]] == ["node-0"])
        gate_file.write_text("go")
        assert ge.get(result, timeout=240) == expected
    # the blocks in the dead node's store were still needed: computed again from lineage
    counts: dict[str, int] = {}
    for name in os.listdir(runs):
        index = name.split("-")[0]
        counts[index] = counts.get(index, 0) + 1
    assert len(counts) == n_blocks
    assert sum(1 for c in counts.values() if c > 1) >= 4, counts


def test_worker_kills_with_objects_in_the_stores_give_exact_result(tmp_path):
    """Results above the inline limit live in node stores: a worker killed between writing
    one and reporting it leaves it sealed there, and the retry writes over it. Kills come
    fast here: more retries than the default, so that only a bug fails the graph."""
    n_blocks = 256
    runs = tmp_path / "runs"
    runs.mkdir()
    killed: list[int] = []
    done = threading.Event()
    rng = random.Random(7)

    with MultiNodeCluster(nodes=2, num_cpus=2) as cluster:

        def killer():
            while not done.wait(0.3):
                pid = cluster.kill_random_worker(rng)
                if pid is not None:
                    killed.append(pid)

        make, merge = block.options(max_retries=10), add_blocks.options(max_retries=10)
        level = [make.remote(i, str(runs)) for i in range(n_blocks)]
        while len(level) > 1:
            level = [merge.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        result = total.remote(level[0])
        ge.persist(result)
        thread = threading.Thread(target=killer, name="graphexec-test-killer", daemon=True)
        thread.start()
        try:
            value = ge.get(result, timeout=240)
        finally:
            done.set()
            thread.join()
        assert value == sum(range(n_blocks)) * BLOCK
        assert len(killed) >= 2, killed
