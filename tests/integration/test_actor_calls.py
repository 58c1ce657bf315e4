"""The call path of actors: who reads the answers, timeouts while reading, local sockets.

A thread blocked in ``get`` on one actor's calls reads that actor's connection itself;
the link's reader thread reads when nobody does (answers nobody waits for, ``wait`` on
several actors). See ``graphexec/actors/caller.py``.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import graphexec as ge
from graphexec._context import current_client
from graphexec.actors.caller import _close_comm, caller_of
from graphexec.errors import GetTimeoutError


@pytest.fixture(scope="module")
def cluster():
    ctx = ge.init(num_cpus=2)
    try:
        yield ctx
    finally:
        ge.shutdown()


pytestmark = pytest.mark.allow_leaks("threads")


@ge.remote
class Box:
    def __init__(self) -> None:
        self.n = 0

    def blob(self, nbytes: int) -> bytes:
        self.n += 1
        return b"x" * nbytes

    def count(self) -> int:
        return self.n

    def echo(self, x):
        return x

    def slow(self, seconds: float, x=None):
        time.sleep(seconds)
        return x


def _link(handle):
    return caller_of(current_client()).links[handle._actor_id]


def test_answers_nobody_waits_for_are_read(cluster):
    box = Box.remote()
    ge.get(box.count.remote())
    # 2,000 answers of 8 KiB: far more than a socket buffer holds. Nobody calls get; the
    # link's reader must take them, else the actor would block writing them.
    refs = [box.blob.remote(8192) for _ in range(2000)]
    client = current_client()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with client._lock:
            pending = sum(client._results[r.key].status == "pending" for r in refs)
        if not pending:
            break
        time.sleep(0.05)
    assert pending == 0
    assert ge.get(refs[-1]) == b"x" * 8192
    assert ge.get(box.count.remote()) == 2000


def test_get_timeout_while_reading_then_the_value(cluster):
    box = Box.remote()
    ref = box.slow.remote(1.5, "done")
    t = time.monotonic()
    with pytest.raises(GetTimeoutError, match="running on the actor"):
        ge.get(ref, timeout=0.2)
    assert time.monotonic() - t < 1.4  # the leading thread kept to its timeout
    assert ge.get(ref, timeout=30) == "done"


def test_many_threads_calling_one_actor(cluster):
    box = Box.remote()
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(tid: int) -> None:
        try:
            results[tid] = [ge.get(box.echo.remote(tid * 1000 + i)) for i in range(200)]
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(tid,)) for tid in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    for tid in range(4):
        assert results[tid] == [tid * 1000 + i for i in range(200)]


def test_wait_across_actors_and_a_slow_leader(cluster):
    a, b = Box.remote(), Box.remote()
    slow = a.slow.remote(0.5, "a")
    fast = b.echo.remote("b")
    ready, pending = ge.wait([slow, fast], num_returns=2, timeout=30)
    assert len(ready) == 2 and not pending
    assert ge.get([slow, fast]) == ["a", "b"]

    # one thread leads on a slow call; another waits on a quick one of the same actor
    slow = a.slow.remote(0.5, "slow")
    quick = a.echo.remote("quick")
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(ge.get(slow)))
    reader.start()
    assert ge.get(quick, timeout=30) == "quick"
    reader.join(30)
    assert got == ["slow"]


def test_calls_use_the_local_socket_and_fall_back_to_tcp(cluster):
    box = Box.remote()
    assert ge.get(box.echo.remote(1)) == 1
    link = _link(box)
    assert link.local_address.startswith("unix:@")
    assert link.comm is not None and link.comm.sock.family == socket.AF_UNIX

    # a local address that nobody listens on: the caller connects over TCP instead
    client = current_client()
    with client._lock:
        link.local_address = "unix:@graphexec-test-nobody-listens"
        _close_comm(link)
    assert ge.get(box.echo.remote(2), timeout=30) == 2
    assert link.comm is not None and link.comm.sock.family == socket.AF_INET
    assert ge.get([box.echo.remote(i) for i in range(100)]) == list(range(100))
