"""Resource limits (issue 5) over real TCP sockets: what one connection may queue, what one
message may hold, and the clear errors a sender gets on its own side.

* ``BatchedSend`` drops a peer that stops reading once more than ``max_pending_bytes``
  wait behind a write; ``send_when_room`` waits instead; a batch with more frames than
  a message holds goes out as several messages.
* The client refuses to submit a graph over ``GRAPHEXEC_MAX_GRAPH_TASKS`` /
  ``GRAPHEXEC_MAX_GRAPH_BYTES`` (nothing is sent, the refs stay usable); the scheduler
  refuses one from a peer that ignores the limits (its wanted keys fail with the reason)
  and ignores a malformed one, leaving no trace in its state either way.
* ``put`` of a buffer larger than a frame fails at once with what to do; ``put`` of more
  buffers than a message holds, or of many large values in a row, just works.

The cluster tests share one cluster in this process: scheduler, two workers and the
client on one event loop thread, every connection real TCP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest

import graphexec as ge
from graphexec.client.client import Client
from graphexec.comm import Comm, connect, framing, listen
from graphexec.comm.batched import BatchedSend
from graphexec.errors import CommClosedError
from graphexec.scheduler.server import Scheduler
from graphexec.testing.cluster import InProcessCluster
from graphexec.worker.worker import Worker

# the module-scoped cluster starts executor threads on demand; they are its own, checked
# when the module's fixture is torn down
pytestmark = pytest.mark.allow_leaks("threads")

TOKEN = "limits-token"
DEADLINE = 20.0
MiB = 2**20
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, DEADLINE)

    return asyncio.run(bounded())


# --------------------------------------------------------------------------- BatchedSend


async def never_reads(comm: Comm) -> None:
    await asyncio.Event().wait()  # holds the connection open, reads nothing, until stopped


def test_batched_send_drops_a_peer_that_stops_reading(caplog: pytest.LogCaptureFixture) -> None:
    """A peer that stops reading: once the kernel's buffers are full and more than the
    limit waits behind the blocked write, the sender drops the connection (logged),
    keeps nothing queued, and its own reader sees the connection closed."""
    chunk = 256 * 1024
    limit = 1 * MiB

    async def main() -> int:
        async with await listen("tcp://127.0.0.1:0", never_reads, token=TOKEN) as listener:
            comm = await connect(listener.address, token=TOKEN)
            batched = BatchedSend(comm, max_pending_bytes=limit, stall_seconds=0.1)
            reading = asyncio.ensure_future(comm.read())
            sent = 0
            # a bounded sender stops after the kernel's socket buffers (a few MiB on
            # loopback) plus the limit, once the write has been stuck for 0.1 s; an
            # unbounded one would go on to the end
            while not comm.closed() and sent < 400:
                batched.send({"op": "data", "i": sent}, [bytes(chunk)])
                sent += 1
                await asyncio.sleep(0.005)
            assert comm.closed(), f"still queueing after {sent * chunk // MiB} MiB"
            assert batched._ops == [] and batched._frames == []  # the queue was let go
            batched.send({"op": "after"})  # ignored: the connection is gone
            assert batched._ops == []
            with pytest.raises(CommClosedError):
                await reading
            await batched.close()
            return sent

    sent = run(main())
    assert sent < 400
    assert any(
        "GRAPHEXEC_MAX_PENDING_BYTES" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )


def test_send_when_room_waits_for_a_slow_peer() -> None:
    """A producer that can wait is held back, not dropped: 48 MiB through a 1 MiB bound
    to a peer that reads slowly, all delivered in order."""
    received: list[int] = []

    async def main() -> None:
        finished = asyncio.Event()

        async def slow_reader(comm: Comm) -> None:
            while len(received) < 48:
                ops, frames = await comm.read()
                received.extend(op["i"] for op in ops)
                assert all(len(f) == MiB for f in frames)
                await asyncio.sleep(0.002)
            finished.set()
            await asyncio.Event().wait()  # keep the connection until the listener closes

        async with await listen("tcp://127.0.0.1:0", slow_reader, token=TOKEN) as listener:
            comm = await connect(listener.address, token=TOKEN)
            batched = BatchedSend(comm, max_pending_bytes=MiB)
            for i in range(48):
                await batched.send_when_room({"op": "data", "i": i}, [bytes(MiB)])
                assert batched._pending_bytes <= MiB
                await asyncio.sleep(0)  # a producer with other things to do
            await asyncio.wait_for(finished.wait(), 10)
            assert not comm.closed()
            await batched.close()
            await comm.close()

    run(main())
    assert received == list(range(48))


def test_a_batch_with_more_frames_than_a_message_holds_goes_out_whole() -> None:
    """12,000 ops with a frame each, queued in one loop iteration: more frames than one
    message may hold (``MAX_FRAMES``), so several messages, and the connection lives."""
    n = framing.MAX_FRAMES + 2000
    received: list[tuple[int, bytes]] = []
    messages = []

    async def main() -> None:
        finished = asyncio.Event()

        async def reader(comm: Comm) -> None:
            while len(received) < n:
                ops, frames = await comm.read()
                messages.append(len(frames))
                received.extend((op["i"], bytes(f)) for op, f in zip(ops, frames, strict=True))
            finished.set()
            await asyncio.Event().wait()  # keep the connection until the listener closes

        async with await listen("tcp://127.0.0.1:0", reader, token=TOKEN) as listener:
            comm = await connect(listener.address, token=TOKEN)
            batched = BatchedSend(comm)
            for i in range(n):
                batched.send({"op": "data", "i": i}, [i.to_bytes(4, "little")])
            await asyncio.wait_for(finished.wait(), 10)
            assert not comm.closed()
            await batched.close()
            await comm.close()

    run(main())
    assert received == [(i, i.to_bytes(4, "little")) for i in range(n)]
    assert len(messages) >= 2 and max(messages) < framing.MAX_FRAMES


# --------------------------------------------------------------------------- the cluster


class TCPCluster(InProcessCluster):
    """:class:`InProcessCluster` with every connection over TCP."""

    async def _start(self) -> None:
        self.scheduler = Scheduler(
            token=self.token, address="tcp://127.0.0.1:0", validate=self.validate
        )
        await self.scheduler.start()
        total = {"CPU": self.cpus_per_worker * self.n_workers}
        self.scheduler.state.handle_add_node(f"node-{self.name}", total)
        for _ in range(self.n_workers):
            await self.add_worker()
        client = Client(self.scheduler.address, token=self.token)
        await client.start_async()
        self.client = client
        for worker in self.workers:
            worker.make_ref = self._make_ref
        while len(self.scheduler.state.workers) < len(self.workers):
            await asyncio.sleep(0.001)

    async def add_worker(self) -> Worker:
        assert self.scheduler is not None
        worker = Worker(
            self.scheduler.address,
            token=self.token,
            node_id=f"node-{self.name}",
            cpus=self.cpus_per_worker,
            validate=self.validate,
        )
        await worker.start()
        self.workers.append(worker)
        return worker

    def scheduler_keys(self) -> set[str]:
        assert self.scheduler is not None
        state = self.scheduler.state

        async def keys() -> set[str]:
            state.validate_state()
            return set(state.tasks)

        result: set[str] = self.run(keys())
        return result


@pytest.fixture(scope="module")
def cluster() -> Iterator[TCPCluster]:
    with TCPCluster(workers=2) as c:
        assert c.scheduler is not None and c.scheduler.address.startswith("tcp://")
        yield c


@ge.remote
def inc(x: int) -> int:
    return x + 1


@ge.remote
def size(data: bytes) -> int:
    return len(data)


def test_client_refuses_a_graph_of_too_many_tasks(
    cluster: TCPCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAPHEXEC_MAX_GRAPH_TASKS", "10")
    before = cluster.scheduler_keys()
    refs = [inc.remote(i) for i in range(30)]
    with pytest.raises(ValueError, match="graph of 30 tasks") as info:
        ge.get(refs, timeout=10)
    message = str(info.value)
    assert "at most 10" in message and "GRAPHEXEC_MAX_GRAPH_TASKS" in message
    assert "Submit the work in parts" in message
    assert cluster.scheduler_keys() <= before  # nothing was sent (old keys may go)
    # the refs were left as they were: in parts, they run
    for start in range(0, 30, 10):
        assert ge.get(refs[start : start + 10], timeout=10) == list(range(start + 1, start + 11))


def test_client_refuses_a_graph_of_too_many_bytes(
    cluster: TCPCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAPHEXEC_MAX_GRAPH_BYTES", "100000")
    before = cluster.scheduler_keys()
    ref = size.remote(bytes(200_000))
    with pytest.raises(ValueError, match="GRAPHEXEC_MAX_GRAPH_BYTES") as info:
        ge.get(ref, timeout=10)
    assert "ge.put" in str(info.value) and "at most 100000" in str(info.value)
    assert cluster.scheduler_keys() <= before  # nothing new (old keys may go)
    assert ge.get(size.remote(ge.put(bytes(200_000))), timeout=10) == 200_000


def task(key: str, payload: bytes = b"") -> dict[str, Any]:
    return {
        "key": key,
        "payload": payload,
        "deps": [],
        "fids": [],
        "prefix": "limits",
        "priority": 0,
        "demand": {"CPU": 1.0},
        "retries": 0,
    }


def exchange(cluster: TCPCluster, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register as a client on a connection of our own, send ``ops`` in one message as
    they are (no client-side checks), and return every op received until a ``sync``
    sent after them is answered: the connection stays open all along."""
    assert cluster.scheduler is not None
    address = cluster.scheduler.address

    async def talk() -> list[dict[str, Any]]:
        async with await connect(address, token=cluster.token) as comm:
            client = f"limits-{uuid.uuid4().hex[:8]}"
            await comm.write([{"op": "register-client", "client": client}, *ops])
            await comm.write([{"op": "sync", "rid": 7}])
            received: list[dict[str, Any]] = []
            while not any(op.get("rid") == 7 for op in received):
                header, _ = await comm.read()
                received += header
            return received

    result: list[dict[str, Any]] = cluster.run(talk())
    return result


@pytest.mark.parametrize(
    ("variable", "tasks", "says"),
    [
        ("GRAPHEXEC_MAX_GRAPH_TASKS", [task(f"big-{i}") for i in range(4)], "4 tasks"),
        ("GRAPHEXEC_MAX_GRAPH_BYTES", [task("big-0", bytes(2000))], "bytes of tasks"),
    ],
    ids=["tasks", "bytes"],
)
def test_scheduler_refuses_an_oversized_graph_from_a_peer_that_ignores_the_limit(
    cluster: TCPCluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    tasks: list[dict[str, Any]],
    says: str,
) -> None:
    monkeypatch.setenv(variable, "3" if variable.endswith("TASKS") else "1000")
    before = cluster.scheduler_keys()
    wants = [t["key"] for t in tasks]
    graph = {"op": "update-graph", "tasks": tasks, "wants": wants, "functions": {}}
    received = exchange(cluster, [graph])
    erred = {op["key"]: op["exception"]["message"] for op in received if op["op"] == "key-erred"}
    assert set(erred) == set(wants)
    for message in erred.values():
        assert "the scheduler refused this graph" in message and says in message
        assert variable in message and "smaller parts" in message
    assert cluster.scheduler_keys() <= before  # nothing new (old keys may go)
    assert any("refused a graph" in r.getMessage() for r in caplog.records)
    assert ge.get([inc.remote(1), inc.remote(2)], timeout=10) == [2, 3]


def test_scheduler_ignores_a_malformed_graph(
    cluster: TCPCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (found by the wire fuzzer): wrong field types left a half-built task
    in the scheduler. Now it is logged and ignored, and the connection goes on."""
    before = cluster.scheduler_keys()
    bad = {**task("bad-1"), "demand": {"CPU": "lots"}}
    graph = {"op": "update-graph", "tasks": [task("bad-0"), bad], "wants": ["bad-1"]}
    received = exchange(cluster, [graph])
    assert [op["op"] for op in received] == ["response"]  # the sync, nothing else
    assert cluster.scheduler_keys() <= before  # nothing new (old keys may go)
    assert any("malformed update-graph" in r.getMessage() for r in caplog.records)
    assert ge.get(inc.remote(41), timeout=10) == 42


def test_put_of_a_buffer_larger_than_a_frame_fails_at_once(cluster: TCPCluster) -> None:
    huge = np.zeros(framing.MAX_FRAME_BYTES + 1, dtype=np.uint8)  # untouched pages: free
    with pytest.raises(ValueError, match="MAX_FRAME_BYTES") as info:
        ge.put(huge)
    assert "smaller pieces" in str(info.value)
    assert ge.get(ge.put(np.arange(10)), timeout=10).tolist() == list(range(10))


def test_put_of_more_buffers_than_a_message_holds(cluster: TCPCluster) -> None:
    arrays = [np.full(256, i, dtype=np.float64) for i in range(framing.MAX_FRAMES)]
    back = ge.get(ge.put(arrays), timeout=10)
    assert len(back) == len(arrays) and all(
        (a == b).all() for a, b in zip(arrays, back, strict=True)
    )


def test_many_large_puts_in_a_row_wait_for_room(cluster: TCPCluster) -> None:
    """Large puts faster than the connection takes them: ``put`` waits while the
    connection's queue is full rather than the connection being dropped."""
    client = cluster.client
    assert client is not None and client._batched is not None
    batched = client._batched
    saved = batched.max_pending_bytes, batched.stall_seconds
    batched.max_pending_bytes, batched.stall_seconds = MiB, 0.0  # drop at once if over
    try:
        refs = [ge.put(np.full(2**18, i, dtype=np.float64)) for i in range(24)]  # 2 MiB
        values = ge.get(refs, timeout=10)
    finally:
        batched.max_pending_bytes, batched.stall_seconds = saved
    assert [float(v[-1]) for v in values] == [float(i) for i in range(24)]
    assert client._comm is not None and not client._comm.closed()
