"""A lost scheduler: every blocked call raises ``SchedulerLostError``, never hangs.

Killed outright, its connections close and clients know at once. Frozen (SIGSTOP: a
hung machine or a network partition looks the same), clients notice the silence after
the heartbeat timeout (``graphexec/comm/heartbeat.py``).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import graphexec as ge
from graphexec.errors import SchedulerLostError

pytestmark = pytest.mark.allow_leaks("threads")


@ge.remote
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@ge.remote
class Sleeper:
    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def _blocked_gets(refs):
    """Run one blocking get per ref on its own thread; returns (threads, outcomes)."""
    outcomes: dict[int, BaseException | object] = {}

    def run(i, ref):
        try:
            outcomes[i] = ge.get(ref, timeout=120)
        except BaseException as err:  # recorded for the assertions
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(refs)]
    for t in threads:
        t.start()
    return threads, outcomes


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_blocked_gets_raise_scheduler_lost(how, monkeypatch):
    monkeypatch.setenv("GRAPHEXEC_HEARTBEAT_TIMEOUT", "3")
    monkeypatch.setenv("GRAPHEXEC_HEARTBEAT_INTERVAL", "0.5")
    ge.init(num_cpus=2)
    pid = ge.cluster_info()["pid"]
    try:
        actor = Sleeper.remote()
        ge.get(actor.nap.remote(0))
        # a task get, and an actor get whose thread reads the actor's socket itself
        threads, outcomes = _blocked_gets([nap.remote(60), actor.nap.remote(60)])
        time.sleep(1.0)
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - t
        assert all(isinstance(o, SchedulerLostError) for o in outcomes.values()), outcomes
        assert elapsed < 30  # well within the test's patience; the timeout is 3 s
        with pytest.raises(SchedulerLostError):
            ge.get(nap.remote(0))
    finally:
        if how == "frozen":
            os.kill(pid, signal.SIGCONT)
        ge.shutdown()


@ge.remote
def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_frozen_worker_is_dropped_and_its_work_retried(monkeypatch):
    monkeypatch.setenv("GRAPHEXEC_HEARTBEAT_TIMEOUT", "3")
    monkeypatch.setenv("GRAPHEXEC_HEARTBEAT_INTERVAL", "0.5")
    ge.init(num_cpus=2)
    try:
        deadline = time.monotonic() + 60
        workers: list = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [w for n in ge.cluster_info()["nodes"] for w in n["workers"]]
            time.sleep(0.05)
        frozen = workers[0]["pid"]
        os.kill(frozen, signal.SIGSTOP)
        try:
            # some of these land on the frozen worker; they finish once it is dropped
            pids = ge.get([pid_after.remote(0.1) for _ in range(8)], timeout=60)
            assert frozen not in pids
            listed = [w["pid"] for n in ge.cluster_info()["nodes"] for w in n["workers"]]
            assert frozen not in listed
        finally:
            os.kill(frozen, signal.SIGCONT)
    finally:
        ge.shutdown()
