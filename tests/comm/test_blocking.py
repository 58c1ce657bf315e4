"""Blocking connections (the actor-call path): handshake first, framing, bad input."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import uuid

import pytest

from graphexec.comm.blocking import (
    BlockingComm,
    blocking_connect,
    blocking_listener,
    local_listener,
    serve_handshake,
)
from graphexec.errors import CommClosedError, ProtocolError

TOKEN = "s3cret-token"


class EchoServer:
    """Accepts connections; echoes every message back; records handshake failures."""

    def __init__(self, kind: str = "tcp") -> None:
        if kind == "local":
            listener = local_listener(f"graphexec-test-{uuid.uuid4().hex}")
            if listener is None:
                pytest.skip("no abstract Unix sockets on this platform")
            self.sock, self.address = listener
        else:
            self.sock, self.address = blocking_listener("127.0.0.1")
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, name="graphexec-test-accept")
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="graphexec-test-conn")
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn = serve_handshake(conn, TOKEN)
            comm = BlockingComm(conn)
            while True:
                for header, frames in comm.read_batch():
                    comm.send(header, frames)
        except (ProtocolError, CommClosedError, OSError) as err:
            self.errors.append(err)
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture(params=["tcp", "local"])
def server(request):
    srv = EchoServer(request.param)
    try:
        yield srv
    finally:
        srv.close()


def test_round_trip_with_frames(server):
    comm = blocking_connect(server.address, TOKEN)
    try:
        big = bytes(range(256)) * 4096  # 1 MiB frame
        comm.send([{"op": "x", "nframes": 2}], [b"small", big])
        ((header, frames),) = comm.read_batch()
        assert header == [{"op": "x", "nframes": 2}]
        assert frames == [b"small", big]
        for i in range(50):  # a burst arrives as whole messages, in order
            comm.send([{"i": i}])
        got: list[int] = []
        while len(got) < 50:
            got += [h[0]["i"] for h, _ in comm.read_batch()]
        assert got == list(range(50))
    finally:
        comm.close()


def test_wrong_token_is_refused_before_any_parsing(server):
    with pytest.raises(ProtocolError, match="token"):
        blocking_connect(server.address, "not-the-token")
    comm = blocking_connect(server.address, TOKEN)  # the server keeps serving
    comm.send([{"ok": 1}])
    assert comm.read_batch()[0][0] == [{"ok": 1}]
    comm.close()


def test_malformed_frame_closes_only_that_connection(server):
    good = blocking_connect(server.address, TOKEN)
    bad = blocking_connect(server.address, TOKEN)
    bad.sock.sendall(struct.pack("<IQ", 0, 5) + b"xxxxx")  # zero frames: a protocol error
    with pytest.raises(CommClosedError):
        bad.read_batch()
    good.send([{"still": "here"}])
    assert good.read_batch()[0][0] == [{"still": "here"}]
    good.close()
    bad.close()


def test_closing_wakes_a_blocked_reader(server):
    comm = blocking_connect(server.address, TOKEN)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            comm.read_batch()
        except CommClosedError as err:
            errors.append(err)

    t = threading.Thread(target=read, name="graphexec-test-reader")
    t.start()
    comm.close()
    t.join(5)
    assert not t.is_alive() and errors
    with pytest.raises(CommClosedError):
        comm.send([{"after": "close"}])


def test_read_batch_with_a_timeout(server):
    comm = blocking_connect(server.address, TOKEN)
    try:
        t = time.monotonic()
        assert comm.read_batch(timeout=0.05) == []  # nothing sent: empty, not blocked
        assert 0.04 <= time.monotonic() - t < 2
        assert comm.read_batch(timeout=0) == []
        comm.send([{"late": 1}])
        assert comm.read_batch(timeout=5)[0][0] == [{"late": 1}]
    finally:
        comm.close()


def test_local_address_is_unix_and_refused_when_absent():
    listener = local_listener(f"graphexec-test-{uuid.uuid4().hex}")
    if listener is None:
        pytest.skip("no abstract Unix sockets on this platform")
    sock, address = listener
    sock.close()
    assert address.startswith("unix:@")
    with pytest.raises(OSError):  # nobody listens: refused at once (callers fall back)
        blocking_connect(address, TOKEN, timeout=2)
