"""Wire fuzzing against a real local cluster (issue 5): real processes, real TCP, no mocks.

Hypothesis throws random bytes, broken framing, huge length prefixes, well-formed msgpack
with wrong fields, and well-formed but unauthenticated messages carrying a booby-trapped
pickle at every listening server process of a local cluster: the scheduler, each worker
and the node manager (its object-store service; the node manager's link to the
scheduler is outgoing). After every example the target must still be the same process
and still answer an authenticated request; after every test real tasks still run, and the
trapped pickle never went off.

Each target is asked a request it answers: the scheduler ``sync`` (after
``register-client``), a worker ``get-data`` (for a key it does not hold), the store
``store-info``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pickle
import socket
import struct
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphexec as ge
from graphexec._context import current_client
from graphexec.comm import framing
from graphexec.comm.auth import DIGEST_BYTES, MAGIC, NONCE_BYTES, proof
from graphexec.comm.blocking import (
    BlockingComm,
    blocking_connect,
    blocking_listener,
    serve_handshake,
)
from graphexec.errors import CommClosedError
from graphexec.protocol.wire import dumps_header

# the driver's client keeps its I/O thread for the whole module (module-scoped cluster)
pytestmark = pytest.mark.allow_leaks("threads")

KINDS = ("scheduler", "worker", "node manager")
#: how long a server gets to answer or to close a connection
IO_TIMEOUT = 30.0  # generous: CI machines are small and busy
GREETING_BYTES = len(MAGIC) + NONCE_BYTES
#: how much a server's resident memory may grow while peers announce huge frames
RSS_SLACK = 64 * 1024 * 1024
PROBE_KEY = "fuzz-probe-no-such-key"

FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- the cluster


@dataclass(frozen=True)
class Target:
    kind: str
    address: str
    pid: int
    node: str = ""

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.removeprefix("tcp://").rpartition(":")
        return host, int(port)


@dataclass
class Cluster:
    token: str
    targets: list[Target]
    markers: pathlib.Path

    def of(self, kind: str) -> list[Target]:
        return [t for t in self.targets if t.kind == kind]


def _targets() -> list[Target]:
    info = ge.cluster_info()
    targets = [Target("scheduler", info["address"], info["pid"])]
    for node in info["nodes"]:
        targets += [
            Target("worker", w["address"], w["pid"], node["node_id"]) for w in node["workers"]
        ]
        targets.append(Target("node manager", node["store_address"], node["pid"], node["node_id"]))
    return targets


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ge.init(num_cpus=2)
    try:
        deadline = time.monotonic() + 30
        while len(targets := _targets()) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)  # the workers register a moment after their node
        assert sorted(t.kind for t in targets) == sorted(
            ["scheduler", "worker", "worker", "node manager"]
        )
        yield Cluster(current_client().token, targets, tmp_path_factory.mktemp("markers"))
    finally:
        ge.shutdown()


@ge.remote
def square(x: int) -> int:
    return x * x


def test_every_listening_socket_is_a_target(cluster: Cluster) -> None:
    """The fuzz targets are all the TCP ports the cluster's processes listen on."""
    listening = {
        (proc.pid, f"tcp://{conn.laddr.ip}:{conn.laddr.port}")
        for proc in psutil.Process().children(recursive=True)
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening == {(t.pid, t.address) for t in cluster.targets}


def check_cluster(cluster: Cluster) -> None:
    """Every target is the same live process and answers; real tasks still run."""
    assert _targets() == cluster.targets, "a server process died or was replaced"
    for target in cluster.targets:
        assert_serves(cluster, target)
    assert ge.get([square.remote(i) for i in range(6)]) == [i * i for i in range(6)]
    assert _targets() == cluster.targets


# --------------------------------------------------------------------------- probing


def read_until(comm: BlockingComm, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first op of a reply batch that ``match`` accepts (fails after IO_TIMEOUT)."""
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        for header, _ in comm.read_batch(timeout=max(0.0, deadline - time.monotonic())):
            for op in header if isinstance(header, list) else [header]:
                if isinstance(op, dict) and match(op):
                    return op
    raise AssertionError(f"no answer from {comm.peer} within {IO_TIMEOUT} s")


def assert_serves(cluster: Cluster, target: Target) -> None:
    """``target`` is alive and answers a request on a fresh authenticated connection."""
    assert psutil.pid_exists(target.pid), f"the {target.kind} (pid {target.pid}) is gone"
    comm = blocking_connect(target.address, cluster.token, timeout=IO_TIMEOUT)
    with contextlib.closing(comm):
        if target.kind == "scheduler":
            client_id = f"fuzz-probe-{uuid.uuid4().hex[:8]}"
            comm.send([{"op": "register-client", "client": client_id}, {"op": "sync", "rid": 1}])
            op = read_until(comm, lambda op: op.get("op") == "response" and op.get("rid") == 1)
            assert op.get("result") is True, op
        elif target.kind == "worker":
            comm.send([{"op": "get-data", "keys": [PROBE_KEY]}])
            op = read_until(comm, lambda op: op.get("key") == PROBE_KEY)
            assert op == {"op": "data", "key": PROBE_KEY, "status": "missing"}
        else:
            comm.send([{"op": "store-info", "rid": 1}])
            op = read_until(comm, lambda op: op.get("rid") == 1)
            assert op.get("node") == target.node, op


def sent_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not)."""
    sock.settimeout(IO_TIMEOUT)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open for {IO_TIMEOUT} s"
            ) from None
        if not chunk:
            return data
        data += chunk


def assert_closed_by_server(comm: BlockingComm) -> None:
    """The server closes ``comm`` (whatever it answers first is fine)."""
    deadline = time.monotonic() + IO_TIMEOUT
    with pytest.raises(CommClosedError):
        while time.monotonic() < deadline:
            comm.read_batch(timeout=max(0.0, deadline - time.monotonic()))
        raise AssertionError(f"{comm.peer} kept a broken connection open for {IO_TIMEOUT} s")


def half_close(comm: BlockingComm) -> None:
    with contextlib.suppress(OSError):
        comm.sock.shutdown(socket.SHUT_WR)


def send_raw(sock: socket.socket, data: bytes) -> None:
    """Send, tolerating a server that already hung up on what it read so far."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def frame(header: bytes, *frames: bytes, lengths: list[int] | None = None) -> bytes:
    """One message on the wire, with the true lengths unless ``lengths`` lies."""
    parts = [header, *frames]
    sizes = lengths if lengths is not None else [len(p) for p in parts]
    return struct.pack(f"<I{len(sizes)}Q", len(sizes), *sizes) + b"".join(parts)


def opening(kind: str) -> bytes:
    """A valid first message for ``kind`` (what a well-behaved peer would send first)."""
    if kind == "scheduler":
        header: Any = [{"op": "register-client", "client": f"fuzz-{uuid.uuid4().hex[:8]}"}]
    elif kind == "worker":
        header = [{"op": "get-data", "keys": [PROBE_KEY]}]
    else:
        header = [{"op": "store-info", "rid": 0}]
    return frame(dumps_header(header))


# --------------------------------------------------------------------------- 1. garbage


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(
    junk=st.binary(max_size=63)  # shorter than a proof: the server waits for the rest
    | st.binary(min_size=DIGEST_BYTES + NONCE_BYTES, max_size=512)  # a proof, and more
    | st.builds(lambda b: MAGIC + b, st.binary(max_size=100)),
    read_greeting=st.booleans(),
)
def test_unauthenticated_garbage_is_refused(
    cluster: Cluster, kind: str, junk: bytes, read_greeting: bool
) -> None:
    """Random bytes without a handshake: the server sends its greeting, nothing more,
    closes, and goes on serving."""
    for target in cluster.of(kind):
        with socket.create_connection(target.host_port, timeout=IO_TIMEOUT) as sock:
            received = b""
            if read_greeting:
                while len(received) < GREETING_BYTES:
                    chunk = sock.recv(GREETING_BYTES - len(received))
                    assert chunk, "closed before the greeting"
                    received += chunk
            send_raw(sock, junk)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            received += sent_until_closed(sock)
        assert len(received) <= GREETING_BYTES, "the server answered an unauthenticated peer"
        assert received == received[:GREETING_BYTES] and MAGIC.startswith(received[:4])
        assert_serves(cluster, target)


def test_unauthenticated_garbage_leaves_the_cluster_working(cluster: Cluster) -> None:
    check_cluster(cluster)


# --------------------------------------------------------------------------- 2. framing

U64 = st.integers(0, 2**64 - 1)


@st.composite
def framing_violation(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(what, bytes)``: a message the reader must refuse as soon as it sees it."""
    what = draw(st.sampled_from(["zero frames", "too many frames", "huge header", "huge frame"]))
    if what == "zero frames":
        return what, struct.pack("<IQ", 0, draw(U64))
    if what == "too many frames":
        return what, struct.pack("<IQ", draw(st.integers(framing.MAX_FRAMES + 1, 2**32 - 1)), 1)
    huge = draw(st.integers(framing.MAX_FRAME_BYTES + 1, 2**64 - 1) | st.just(2**60))
    if what == "huge header":
        return what, struct.pack("<IQ", 1, huge)
    n = draw(st.integers(2, 6))
    lengths = [draw(st.integers(0, 100)) for _ in range(n)]
    lengths[draw(st.integers(1, n - 1))] = huge
    return what, struct.pack(f"<I{n}Q", n, *lengths)


@st.composite
def truncated_message(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(what, bytes)``: a message cut short, or random bytes (then the peer hangs up)."""
    what = draw(st.sampled_from(["cut prefix", "cut length table", "cut body", "random"]))
    if what == "random":
        return what, draw(st.binary(min_size=1, max_size=300))
    header = dumps_header([{"op": "x", "nframes": 2}])
    frames = [draw(st.binary(max_size=50)), draw(st.binary(min_size=1, max_size=50))]
    whole = frame(header, *frames)
    if what == "cut prefix":
        return what, whole[: draw(st.integers(1, framing.PREFIX_BYTES - 1))]
    table_end = framing.PREFIX_BYTES + 8 * len(frames)
    if what == "cut length table":
        return what, whole[: draw(st.integers(framing.PREFIX_BYTES, table_end - 1))]
    # announce more than is sent: up to the largest frame a reader accepts
    claimed = draw(st.integers(len(frames[1]) + 1, framing.MAX_FRAME_BYTES))
    lying = frame(header, *frames, lengths=[len(header), len(frames[0]), claimed])
    return what, lying[: draw(st.integers(table_end, len(lying)))]


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(case=framing_violation(), lead=st.booleans())
def test_framing_violation_drops_only_that_connection(
    cluster: Cluster, kind: str, case: tuple[str, bytes], lead: bool
) -> None:
    """Frame counts of 0 or too many, length prefixes up to 2**64 after a valid
    handshake (and maybe a valid first message): the server hangs up at once, without
    waiting for more bytes or for our side to close, and serves everyone else."""
    _, data = case  # what it is shows in a failing example
    for target in cluster.of(kind):
        comm = blocking_connect(target.address, cluster.token, timeout=IO_TIMEOUT)
        with contextlib.closing(comm):
            send_raw(comm.sock, (opening(kind) if lead else b"") + data)
            assert_closed_by_server(comm)  # our side stays open: no waiting for EOF
        assert_serves(cluster, target)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(case=truncated_message(), lead=st.booleans())
def test_truncated_message_drops_only_that_connection(
    cluster: Cluster, kind: str, case: tuple[str, bytes], lead: bool
) -> None:
    """A prefix, length table or body cut short (or random bytes), then the peer hangs
    up: the server closes that connection and serves everyone else."""
    _, data = case  # what it is shows in a failing example
    for target in cluster.of(kind):
        comm = blocking_connect(target.address, cluster.token, timeout=IO_TIMEOUT)
        with contextlib.closing(comm):
            send_raw(comm.sock, (opening(kind) if lead else b"") + data)
            half_close(comm)
            assert_closed_by_server(comm)
        assert_serves(cluster, target)


@pytest.mark.parametrize("kind", KINDS)
def test_announced_frame_sizes_are_not_allocated(cluster: Cluster, kind: str) -> None:
    """Peers announcing the largest frames a reader accepts, then sending a few bytes,
    do not make the server's resident memory grow by what they announced."""
    conns = 4
    for target in cluster.of(kind):
        process = psutil.Process(target.pid)
        before = process.memory_info().rss
        comms = [blocking_connect(target.address, cluster.token) for _ in range(conns)]
        try:
            for i, comm in enumerate(comms):
                sizes = [framing.MAX_FRAME_BYTES] if i % 2 else [3, framing.MAX_FRAME_BYTES]
                send_raw(comm.sock, struct.pack(f"<I{len(sizes)}Q", len(sizes), *sizes) + b"abc")
            assert_serves(cluster, target)  # the server read what we sent by now
            grown = process.memory_info().rss - before
            assert grown < RSS_SLACK, f"the {kind} grew by {grown / 2**20:.0f} MiB"
        finally:
            for comm in comms:
                comm.close()
        assert_serves(cluster, target)


def test_bad_framing_leaves_the_cluster_working(cluster: Cluster) -> None:
    check_cluster(cluster)


@pytest.mark.parametrize("nframes", [2, framing.MAX_FRAMES])
def test_blocking_reader_does_not_allocate_announced_sizes(nframes: int) -> None:
    """The blocking reader (actor calls; actor processes serve it) given the largest
    frames it accepts: it waits for the bytes with bounded buffers (it asked ``recv``
    for everything announced, up to 20 TB, and failed with ``MemoryError``)."""
    listener, address = blocking_listener("127.0.0.1")
    outcome: list[BaseException] = []

    def serve() -> None:
        sock, _ = listener.accept()
        try:
            sock = serve_handshake(sock, "token")
            BlockingComm(sock).read_batch(timeout=IO_TIMEOUT)
        except BaseException as err:  # what the reader raised is the verdict
            outcome.append(err)
        finally:
            sock.close()

    server = threading.Thread(target=serve, name="test-blocking-reader")
    tracemalloc.start()
    try:
        server.start()
        comm = blocking_connect(address, "token")
        with contextlib.closing(comm):
            sizes = [framing.MAX_FRAME_BYTES] * nframes
            comm.sock.sendall(struct.pack(f"<I{nframes}Q", nframes, *sizes) + bytes(1000))
        server.join(IO_TIMEOUT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        listener.close()
    assert not server.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], CommClosedError), outcome
    assert peak < RSS_SLACK, f"the reader allocated {peak / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- 3. wrong fields

#: op names every server knows (except ops that legitimately stop a server)
OP_NAMES = [
    "register-client",
    "register-worker",
    "register-node",
    "update-graph",
    "release-keys",
    "want-keys",
    "put",
    "cancel",
    "cluster-info",
    "explain-pending",
    "expect-keys",
    "key-failed",
    "create-actor",
    "get-actor",
    "watch-actor",
    "unwatch-actor",
    "kill-actor",
    "sync",
    "task-finished",
    "stored-copy",
    "task-erred",
    "task-blocked",
    "actor-ready",
    "actor-failed",
    "get-data",
    "compute",
    "free-keys",
    "cancel-task",
    "store-data",
    "actor-init",
    "store-allocate",
    "store-seal",
    "store-abort",
    "store-lease",
    "store-release",
    "store-read",
    "store-stats",
    "store-info",
]
FIELDS = [
    "client",
    "worker",
    "node",
    "address",
    "cpus",
    "pid",
    "actor",
    "resources",
    "host",
    "store_address",
    "rid",
    "key",
    "keys",
    "tasks",
    "wants",
    "functions",
    "payload",
    "deps",
    "demand",
    "nframes",
    "nbytes",
    "inline_limit",
    "run_id",
    "exception",
    "name",
    "namespace",
    "start",
    "length",
    "lengths",
    "offset",
    "leases",
    "force",
    "incarnation",
    "blocked",
]

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
OPS = st.fixed_dictionaries(
    {"op": st.sampled_from(OP_NAMES) | VALUES},
    optional={name: VALUES for name in FIELDS},
)


def _registration(kind: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    if kind != "scheduler":
        return st.just([])
    ident = st.text(min_size=1, max_size=8).map(lambda s: f"fuzz-{s}")
    return st.one_of(
        st.just([]),
        st.builds(lambda c: [{"op": "register-client", "client": c}], ident),
        st.builds(lambda op, w: [{**op, "op": "register-worker", "worker": w}], OPS, ident),
        st.builds(lambda op, n: [{**op, "op": "register-node", "node": n}], OPS, ident),
    )


@st.composite
def wrong_fields(draw: st.DrawFn, kind: str) -> tuple[Any, list[bytes]]:
    """A well-framed message whose header is valid msgpack but not what the server
    expects: known ops with missing or mistyped fields, unknown ops, a dict or a
    scalar where a list of ops belongs, nested garbage."""
    frames = draw(st.lists(st.binary(max_size=32), max_size=3))
    shape = draw(st.sampled_from(["ops", "ops", "anything"]))
    if shape == "anything":
        return draw(VALUES), frames
    ops = draw(_registration(kind)) + draw(st.lists(OPS | VALUES, max_size=4))
    return ops, frames


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_wrong_fields_do_not_hurt_the_server(cluster: Cluster, kind: str, data: Any) -> None:
    """Valid msgpack with missing, mistyped or unknown fields after a valid handshake:
    the server ignores or refuses it (it may hang up), then closes on our EOF, and
    serves everyone else."""
    messages = data.draw(st.lists(wrong_fields(kind), min_size=1, max_size=3))
    for target in cluster.of(kind):
        comm = blocking_connect(target.address, cluster.token, timeout=IO_TIMEOUT)
        with contextlib.closing(comm):
            with contextlib.suppress(CommClosedError):  # it may hang up after any of them
                for header, frames in messages:
                    comm.send(header, frames)
            half_close(comm)
            assert_closed_by_server(comm)
        assert_serves(cluster, target)


@pytest.mark.parametrize(
    "registration",
    [
        {"op": "register-node", "node": "fuzz-n1", "resources": {"CPU": None}},
        {"op": "register-node", "node": "fuzz-n2", "resources": {"CPU": 1.0}, "pid": "x"},
        {"op": "register-node", "node": "fuzz-n3", "resources": {"CPU": None}, "pid": "x"},
        {"op": "register-node", "node": "fuzz-n4", "resources": [1, 2]},
        {"op": "register-worker", "worker": "fuzz-w1", "address": "x", "node": "y", "cpus": "a"},
        {"op": "register-worker", "worker": "fuzz-w2", "address": 5, "node": "fuzz-n5"},
        {"op": "register-worker", "worker": "fuzz-w3", "address": "x", "node": "y", "pid": 1.5},
        {"op": "register-client", "client": ["not", "a", "string"]},
    ],
    ids=[
        "node-resources-none",
        "node-pid-str",
        "node-both",
        "node-resources-list",
        "worker-cpus-str",
        "worker-address-int",
        "worker-pid-float",
        "client-id-list",
    ],
)
def test_malformed_registration_leaves_no_trace(
    cluster: Cluster, registration: dict[str, Any]
) -> None:
    """Regression (found by the fuzzer): a registration that failed half-way left a
    node behind for good, one whose resources broke every later ``cluster-info``."""
    before = ge.cluster_info()
    scheduler = cluster.of("scheduler")[0]
    comm = blocking_connect(scheduler.address, cluster.token, timeout=IO_TIMEOUT)
    with contextlib.closing(comm):
        comm.send([{**registration, "rid": 1}])
        assert_closed_by_server(comm)  # refused: no reply, no registration
    after = ge.cluster_info()
    assert after["cluster_resources"] == before["cluster_resources"]
    assert after["nodes"] == before["nodes"] and after["workers"] == before["workers"]


def test_wrong_fields_leave_the_cluster_working(cluster: Cluster) -> None:
    check_cluster(cluster)


# --------------------------------------------------------------------------- 4. unauthenticated


class Trap:
    """Unpickling this creates ``path`` (and does nothing else)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


def trap(path: pathlib.Path) -> bytes:
    return pickle.dumps(Trap(path), protocol=5)


def trapped_messages(kind: str, path: pathlib.Path) -> list[bytes]:
    """Well-framed messages that would unpickle ``trap(path)`` if a server processed them
    (for the scheduler: a task whose payload is the trap, run by a worker)."""
    bait = trap(path)
    key = f"fuzz-trap-{uuid.uuid4().hex[:8]}"
    if kind == "scheduler":
        ops: list[dict[str, Any]] = [
            {"op": "register-client", "client": f"fuzz-{uuid.uuid4().hex[:8]}"},
            trapped_task(key, bait),
            {"op": "put", "key": key + "-put", "nframes": 1},
        ]
    elif kind == "worker":
        ops = [
            {"op": "compute", "key": key, "payload": bait, "functions": {"f": bait}},
            {"op": "store-data", "key": key, "nframes": 1},
            {"op": "get-data", "keys": [key]},
        ]
    else:
        ops = [
            {"op": "store-allocate", "key": key, "nbytes": len(bait), "rid": 1},
            {"op": "store-seal", "key": key, "lengths": [len(bait)], "nframes": 1, "rid": 2},
        ]
    return [
        frame(dumps_header(ops), bait),
        frame(bait),  # a pickle where the msgpack header belongs
    ]


def trapped_task(key: str, bait: bytes) -> dict[str, Any]:
    task = {
        "key": key,
        "payload": bait,
        "deps": [],
        "fids": [],
        "prefix": "fuzz-trap",
        "priority": 0,
        "demand": {"CPU": 1.0},
        "retries": 0,
    }
    return {"op": "update-graph", "tasks": [task], "wants": [key], "functions": {}}


def bad_proof(how: str, token: str, nonce: bytes) -> bytes:
    """A client proof that must not pass (what follows it is the trapped message)."""
    client_nonce = os.urandom(NONCE_BYTES)
    if how == "zeros":
        return bytes(DIGEST_BYTES + NONCE_BYTES)
    if how == "wrong token":
        return proof(b"not-" + token.encode(), b"client", nonce) + client_nonce
    if how == "reflected":  # the right token, the server's label
        return proof(token.encode(), b"server", nonce) + client_nonce
    if how == "replayed":  # the right token over another connection's nonce
        return proof(token.encode(), b"client", os.urandom(NONCE_BYTES)) + client_nonce
    if how == "short":  # a valid proof cut short: the message's first byte completes it
        return proof(token.encode(), b"client", nonce)[:-1]
    raise AssertionError(how)


AUTH = ["no handshake", "zeros", "wrong token", "reflected", "replayed", "short"]


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(
    how=st.sampled_from(AUTH),
    which=st.integers(0, 1),
    copies=st.integers(1, 3),
    hang_up=st.booleans(),
)
def test_unauthenticated_messages_are_never_unpickled(
    cluster: Cluster, kind: str, how: str, which: int, copies: int, hang_up: bool
) -> None:
    """Well-framed messages carrying a trapped pickle, sent with no handshake or a failed
    one: the server answers nothing past its greeting, closes, and nothing is
    unpickled (checked for all examples at once in the next test)."""
    marker = cluster.markers / f"{kind.replace(' ', '-')}-{uuid.uuid4().hex[:8]}"
    for target in cluster.of(kind):
        with socket.create_connection(target.host_port, timeout=IO_TIMEOUT) as sock:
            greeting = b""
            while len(greeting) < GREETING_BYTES:
                chunk = sock.recv(GREETING_BYTES - len(greeting))
                assert chunk, "closed before the greeting"
                greeting += chunk
            assert greeting.startswith(MAGIC)
            nonce = greeting[len(MAGIC) :]
            lead = b"" if how == "no handshake" else bad_proof(how, cluster.token, nonce)
            send_raw(sock, lead + trapped_messages(kind, marker)[which] * copies)
            if hang_up:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            assert sent_until_closed(sock) == b"", "the server answered a failed handshake"
        assert_serves(cluster, target)
    assert not marker.exists()


def test_trapped_pickles_never_went_off(cluster: Cluster) -> None:
    """After everything the unauthenticated tests sent has had every chance to run."""
    check_cluster(cluster)
    time.sleep(0.2)  # a task would have reached a worker long ago; be generous
    assert sorted(p.name for p in cluster.markers.iterdir()) == []


def test_the_trap_goes_off_when_authenticated(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    """Control: the trapped update-graph, sent *with* the token, does get unpickled by a
    worker, so the tests above would notice if a server let it through."""
    marker = tmp_path / "control"
    pickle.loads(trap(marker))
    assert marker.exists()
    marker.unlink()
    scheduler = cluster.of("scheduler")[0]
    comm = blocking_connect(scheduler.address, cluster.token, timeout=IO_TIMEOUT)
    with contextlib.closing(comm):
        send_raw(comm.sock, trapped_messages("scheduler", marker)[0])
        read_until(comm, lambda op: op.get("op") == "key-erred")  # the payload was no task
        assert marker.exists()
    check_cluster(cluster)
