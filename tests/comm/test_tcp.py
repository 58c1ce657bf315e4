"""TCP transport: round trips, limits, authentication, hostile peers, socket adoption.

Every test runs its own event loop (``asyncio.run``) and closes every listener and
connection it opens. Nothing sleeps to synchronize: tests wait on events, EOFs and
futures, each under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphexec.comm import Comm, Handler, Listener, connect, listen, parse_address
from graphexec.comm.auth import DIGEST_BYTES, MAGIC, NONCE_BYTES, proof
from graphexec.errors import CommClosedError, ProtocolError
from graphexec.protocol.wire import dumps_header

TOKEN = "test-token"
DEADLINE = 20.0
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, DEADLINE)

    return asyncio.run(bounded())


async def echo(comm: Comm) -> None:
    while True:
        try:
            header, frames = await comm.read()
        except CommClosedError:
            return
        await comm.write(header, frames)


class Recorder:
    """A handler that records what it receives and how its connection ends."""

    def __init__(self) -> None:
        self.connections = 0
        self.messages: list[tuple[Any, list[Any]]] = []
        self.ended: asyncio.Future[BaseException] | None = None

    async def __call__(self, comm: Comm) -> None:
        self.connections += 1
        loop = asyncio.get_running_loop()
        if self.ended is None or self.ended.done():
            self.ended = loop.create_future()
        ended = self.ended
        try:
            while True:
                self.messages.append(await comm.read())
        except (CommClosedError, ProtocolError) as err:
            ended.set_result(err)


async def tcp_listener(handler: Handler, **kwargs: Any) -> Listener:
    return await listen("tcp://127.0.0.1:0", handler, token=TOKEN, **kwargs)


@contextlib.asynccontextmanager
async def serving(handler: Handler, **kwargs: Any) -> AsyncIterator[tuple[Listener, Comm]]:
    """A listener on a free local port and one client connected to it."""
    async with (
        await tcp_listener(handler, **kwargs) as listener,
        await connect(listener.address, token=TOKEN) as comm,
    ):
        yield listener, comm


async def assert_serves(listener: Listener) -> None:
    """The listener still answers an authenticated client (with an echo handler)."""
    async with await connect(listener.address, token=TOKEN) as comm:
        await comm.write({"op": "still-there"}, [b"yes"])
        header, frames = await comm.read()
        assert header == {"op": "still-there"} and bytes(frames[0]) == b"yes"


async def raw_connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    _, host, port = parse_address(address)
    return await asyncio.open_connection(host, port)


async def raw_authenticated(
    address: str, token: str = TOKEN
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw socket that has done the handshake by hand: what follows is up to the test."""
    reader, writer = await raw_connect(address)
    greeting = await reader.readexactly(len(MAGIC) + NONCE_BYTES)
    assert greeting[: len(MAGIC)] == MAGIC
    client_nonce = bytes(range(NONCE_BYTES))
    writer.write(proof(token.encode(), b"client", greeting[len(MAGIC) :]) + client_nonce)
    server_proof = await reader.readexactly(DIGEST_BYTES)
    assert server_proof == proof(token.encode(), b"server", client_nonce)
    return reader, writer


async def wait_eof(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection; return what it sent."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def message(header: bytes, *frames: bytes, lengths: list[int] | None = None) -> bytes:
    parts = [header, *frames]
    sizes = lengths if lengths is not None else [len(p) for p in parts]
    return struct.pack(f"<I{len(sizes)}Q", len(sizes), *sizes) + b"".join(parts)


# ------------------------------------------------------------------ round trips


def test_round_trip_headers_and_frames() -> None:
    async def main() -> None:
        async with await tcp_listener(echo) as listener:
            assert listener.address.startswith("tcp://127.0.0.1:")
            assert parse_address(listener.address)[2] != 0
            async with await connect(listener.address, token=TOKEN) as comm:
                assert comm.peer == listener.address
                arr = np.arange(30_000, dtype=np.float64).reshape(100, 300)
                frames = [b"", b"abc", bytearray(b"xyz"), memoryview(b"0123456789")[2:5], arr]
                header = {"op": "x", "b": b"\x00\x01", "n": [1, 2.5, None]}
                await comm.write(header, frames)
                got_header, got = await comm.read()
                assert got_header == header
                assert [bytes(f) for f in got[:4]] == [b"", b"abc", b"xyz", b"234"]
                np.testing.assert_array_equal(
                    np.frombuffer(got[4], dtype=np.float64).reshape(100, 300), arr
                )
                await comm.write(None)
                assert await comm.read() == (None, [])

    run(main())


def test_large_frame_50mb() -> None:
    async def main() -> None:
        payload = np.random.default_rng(0).integers(0, 255, 50 * 2**20, dtype=np.uint8)
        async with serving(echo) as (_, comm):
            await comm.write({"op": "big"}, [b"small", payload, b"tail"])
            header, frames = await comm.read()
            assert header == {"op": "big"}
            assert bytes(frames[0]) == b"small" and bytes(frames[2]) == b"tail"
            received = np.frombuffer(frames[1], dtype=np.uint8)
            assert received.nbytes == payload.nbytes
            assert np.array_equal(received, payload)
            assert received.flags.writeable  # large frames arrive in their own buffer

    run(main())


def test_many_small_messages_keep_their_order() -> None:
    async def main() -> None:
        async with serving(echo) as (_, comm):
            n = 5000
            for i in range(n):
                comm.write_nowait({"i": i}, [str(i).encode()] if i % 7 == 0 else ())
            await comm.write({"i": n})
            for i in range(n + 1):
                header, frames = await comm.read()
                assert header == {"i": i}
                if i % 7 == 0 and i < n:
                    assert bytes(frames[0]) == str(i).encode()
            for i in range(200):  # strict request/response
                await comm.write({"seq": i})
                assert (await comm.read())[0] == {"seq": i}

    run(main())


def test_write_and_write_nowait_interleave_in_order() -> None:
    async def main() -> None:
        recorder = Recorder()
        big = np.ones(200_000, dtype=np.uint8)
        async with serving(recorder) as (_, comm):
            comm.write_nowait({"n": 0})
            comm.write_nowait({"n": 1}, [big])
            await comm.write({"n": 2}, [big, b"x"])
            comm.write_nowait({"n": 3})
            comm.write_nowait({"n": 4}, [b"y"])
            await comm.close()  # flushes what write_nowait queued
            assert comm.closed()
            assert recorder.ended is not None
            await recorder.ended
        assert [h["n"] for h, _ in recorder.messages] == [0, 1, 2, 3, 4]
        assert [[len(f) for f in frames] for _, frames in recorder.messages] == [
            [], [big.nbytes], [big.nbytes, 1], [], [1]
        ]  # fmt: skip

    run(main())


def test_concurrent_clients() -> None:
    async def client(address: str, n: int) -> None:
        async with await connect(address, token=TOKEN) as comm:
            for i in range(50):
                await comm.write({"client": n, "i": i}, [bytes([n]) * (i * 100)])
                header, frames = await comm.read()
                assert header == {"client": n, "i": i}
                assert bytes(frames[0]) == bytes([n]) * (i * 100)

    async def main() -> None:
        async with await tcp_listener(echo) as listener:
            await asyncio.gather(*(client(listener.address, n) for n in range(20)))

    run(main())


def test_concurrent_writers_on_one_comm_do_not_interleave() -> None:
    async def main() -> None:
        recorder = Recorder()
        async with await tcp_listener(recorder) as listener:
            async with await connect(listener.address, token=TOKEN) as comm:
                big = np.zeros(300_000, dtype=np.uint8)

                async def writer(w: int) -> None:
                    for i in range(20):
                        await comm.write({"w": w, "i": i}, [big, b"%d" % w])

                await asyncio.gather(*(writer(w) for w in range(4)))
            assert recorder.ended is not None
            await recorder.ended
        assert len(recorder.messages) == 80
        for header, frames in recorder.messages:
            assert bytes(frames[1]) == b"%d" % header["w"]
        for w in range(4):
            assert [h["i"] for h, _ in recorder.messages if h["w"] == w] == list(range(20))

    run(main())


# ------------------------------------------------------------------ closing


def test_messages_before_close_are_delivered_then_comm_closed_error() -> None:
    async def main() -> None:
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def handler(comm: Comm) -> None:
            while True:
                try:
                    await got.put(await comm.read())
                except CommClosedError as err:
                    await got.put(err)
                    return

        async with await tcp_listener(handler) as listener:
            comm = await connect(listener.address, token=TOKEN)
            await comm.write({"last": 1}, [b"words"])
            await comm.close()
            assert comm.closed()
            header, frames = await got.get()
            assert header == {"last": 1} and bytes(frames[0]) == b"words"
            assert isinstance(await got.get(), CommClosedError)
            with pytest.raises(CommClosedError):
                await comm.write({"op": "late"})
            with pytest.raises(CommClosedError):
                comm.write_nowait({"op": "late"})
            with pytest.raises(CommClosedError):
                await comm.read()
            comm.abort()  # idempotent
            await comm.close()

    run(main())


def test_peer_closing_wakes_a_pending_read() -> None:
    async def main() -> None:
        async def closer(comm: Comm) -> None:
            await comm.read()

        async with serving(closer) as (_, comm):
            await comm.write({"op": "bye"})  # the handler returns: its comm closes
            with pytest.raises(CommClosedError, match="closed"):
                await comm.read()
            assert comm.closed()

    run(main())


def test_read_after_local_close_raises_even_with_messages_buffered() -> None:
    async def main() -> None:
        async def burst(comm: Comm) -> None:
            for i in range(50):
                comm.write_nowait({"i": i}, [b"x" * i])
            await comm.read()  # until the client goes away

        async with serving(burst) as (_, comm):
            header, frames = await comm.read()
            assert header == {"i": 0} and frames == [b""]
            header, frames = await comm.read()
            assert isinstance(frames[0], bytes)  # small frames are copied out of the chunk
            comm.abort()
            with pytest.raises(CommClosedError, match="closed locally"):
                await comm.read()

    run(main())


def test_cancelled_read_aborts_the_comm() -> None:
    async def main() -> None:
        async with await tcp_listener(echo) as listener:
            comm = await connect(listener.address, token=TOKEN)
            task = asyncio.ensure_future(comm.read())
            await asyncio.sleep(0)  # let the read start
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert comm.closed()

    run(main())


def test_listener_close_cancels_handlers_and_closes_their_comms() -> None:
    async def main() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def waits_forever(comm: Comm) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        listener = await tcp_listener(waits_forever)
        comm = await connect(listener.address, token=TOKEN)
        await started.wait()
        await listener.close()
        assert cancelled.is_set() and listener.stopped
        with pytest.raises(CommClosedError):
            await comm.read()
        comm.abort()
        with pytest.raises(CommClosedError):
            await connect(listener.address, token=TOKEN, timeout=0.2)

    run(main())


def test_handler_exception_is_logged_and_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async def handler(comm: Comm) -> None:
            header, _ = await comm.read()
            if header == "fail":
                raise RuntimeError("handler bug")
            await echo(comm)

        async with await tcp_listener(handler) as listener:
            async with await connect(listener.address, token=TOKEN) as bad:
                await bad.write("fail")
                with pytest.raises(CommClosedError):
                    await bad.read()
            async with await connect(listener.address, token=TOKEN) as good:
                await good.write("hello")
                await good.write({"op": "still-there"}, [b"yes"])
                assert (await good.read())[0] == {"op": "still-there"}

    run(main())
    assert any(
        r.name == "graphexec.comm" and r.exc_info and "handler bug" in str(r.exc_info[1])
        for r in caplog.records
    )


# ------------------------------------------------------------------ encoding errors


def test_unencodable_header_raises_and_comm_stays_usable() -> None:
    async def main() -> None:
        async with serving(echo) as (_, comm):
            with pytest.raises(ProtocolError, match="msgpack"):
                await comm.write({"op": object()})
            with pytest.raises(ProtocolError):
                comm.write_nowait({"op": object()})
            await comm.write({"op": "fine"})
            assert (await comm.read())[0] == {"op": "fine"}

    run(main())


def test_max_frame_bytes_on_both_sides(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        recorder = Recorder()
        async with await tcp_listener(recorder, max_frame_bytes=1000) as listener:
            async with await connect(listener.address, token=TOKEN, max_frame_bytes=100) as comm:
                with pytest.raises(ProtocolError, match="max_frame_bytes=100"):
                    await comm.write({"op": "x"}, [bytes(101)])
                await comm.write({"op": "x"}, [bytes(100)])  # still usable
            async with await connect(listener.address, token=TOKEN) as comm:
                await comm.write({"op": "too-big-for-the-server"}, [bytes(1001)])
                assert recorder.ended is not None
                err = await recorder.ended
                assert isinstance(err, ProtocolError)
                with pytest.raises(CommClosedError):
                    await comm.read()
        assert [h for h, _ in recorder.messages] == [{"op": "x"}]

    run(main())
    assert any("exceeds max_frame_bytes=1000" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ authentication


def test_wrong_token_is_refused_and_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def main() -> None:
        async def counting_echo(comm: Comm) -> None:
            nonlocal calls
            calls += 1
            await echo(comm)

        async with await tcp_listener(counting_echo) as listener:
            with pytest.raises(CommClosedError, match="authentication") as info:
                await connect(listener.address, token="wrong", timeout=5)
            assert isinstance(info.value, ConnectionError)
            assert info.value.__cause__ is not None
            await assert_serves(listener)

    run(main())
    assert calls == 1
    assert any(
        r.levelno == logging.WARNING and "wrong token" in r.getMessage() for r in caplog.records
    )


def test_client_refuses_a_server_without_the_token() -> None:
    async def main() -> None:
        async def fake_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(MAGIC + bytes(NONCE_BYTES))
            await reader.readexactly(DIGEST_BYTES + NONCE_BYTES)
            writer.write(bytes(DIGEST_BYTES))  # not the right proof
            await wait_eof(reader)
            await close_raw(writer)

        server = await asyncio.start_server(fake_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(CommClosedError, match="server failed to prove"):
                await connect(f"tcp://127.0.0.1:{port}", token=TOKEN, timeout=5)

    run(main())


def test_client_refuses_a_server_that_is_not_graphexec() -> None:
    async def main() -> None:
        async def http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(40))
            await wait_eof(reader)
            await close_raw(writer)

        server = await asyncio.start_server(http_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(CommClosedError, match="not a graphexec server"):
                await connect(f"tcp://127.0.0.1:{port}", token=TOKEN, timeout=5)

    run(main())


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(DIGEST_BYTES + NONCE_BYTES),  # right size, wrong proof
        b"\xff" * 10_000,
        message(dumps_header({"op": "exec"}), b"pickled code"),  # a message before auth
    ],
)
def test_unauthenticated_junk_closes_only_that_connection(junk: bytes) -> None:
    async def main() -> None:
        recorder = Recorder()
        async with await tcp_listener(recorder) as listener:
            reader, writer = await raw_connect(listener.address)
            writer.write(junk)
            writer.write_eof()
            sent = await wait_eof(reader)
            assert sent[: len(MAGIC)] == MAGIC and len(sent) == len(MAGIC) + NONCE_BYTES
            await close_raw(writer)
            async with await connect(listener.address, token=TOKEN) as comm:
                await comm.write("after")
            assert recorder.ended is not None
            await recorder.ended
        assert recorder.connections == 1
        assert recorder.messages == [("after", [])]

    run(main())


def test_handshake_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with await tcp_listener(echo, handshake_timeout=0.2) as listener:
            reader, writer = await raw_connect(listener.address)
            writer.write(b"half a proof")  # then silence
            sent = await wait_eof(reader)  # the server gives up on its own
            assert sent[: len(MAGIC)] == MAGIC
            await close_raw(writer)
            await assert_serves(listener)

    run(main())
    assert any("no handshake within" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ hostile authenticated peers


def _violations() -> list[tuple[str, bytes, type[Exception]]]:
    header = dumps_header({"op": "x"})
    return [
        ("zero frames", struct.pack("<IQ", 0, 0), ProtocolError),
        ("too many frames", struct.pack("<IQ", 1_000_000, 1), ProtocolError),
        ("huge length prefix", struct.pack("<IQ", 1, 2**40), ProtocolError),
        ("huge frame length", message(header, b"", lengths=[len(header), 2**62]), ProtocolError),
        ("invalid msgpack", message(b"\xc1"), ProtocolError),
        ("hostile msgpack array32", message(b"\xdd\xff\xff\xff\xff"), ProtocolError),
        ("hostile msgpack str32", message(b"\xdb\xff\xff\xff\xff"), ProtocolError),
        ("msgpack with extra data", message(header + b"\x01"), ProtocolError),
        ("truncated header", message(header, lengths=[len(header) + 100]), CommClosedError),
        (
            "truncated frame",
            message(header, b"abc", lengths=[len(header), 10_000_000]),
            CommClosedError,
        ),
        ("truncated prefix", b"\x01\x00\x00", CommClosedError),
    ]


@pytest.mark.parametrize(
    ("name", "data", "error"), _violations(), ids=[v[0] for v in _violations()]
)
def test_protocol_violation_closes_only_that_connection(
    name: str, data: bytes, error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        recorder = Recorder()

        async def handler(comm: Comm) -> None:
            if recorder.connections == 0:
                await recorder(comm)
            else:
                await echo(comm)

        async with await tcp_listener(handler) as listener:
            reader, writer = await raw_authenticated(listener.address)
            writer.write(message(dumps_header({"op": "fine"})) + data)
            writer.write_eof()
            assert recorder.ended is None or not recorder.ended.done()
            await wait_eof(reader)  # the server dropped us
            await close_raw(writer)
            assert recorder.ended is not None
            err = await recorder.ended
            assert isinstance(err, error), name
            assert recorder.messages == [({"op": "fine"}, [])]
            await assert_serves(listener)

    run(main())
    if error is ProtocolError:
        assert any(
            r.name == "graphexec.comm" and r.levelno == logging.WARNING for r in caplog.records
        )


# ------------------------------------------------------------------ connecting and listening


def test_connect_retries_until_a_listener_appears(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="graphexec.comm")

    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        address = f"tcp://127.0.0.1:{port}"
        refused = asyncio.Event()

        class OnRetry(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "refused; retrying" in record.getMessage():
                    refused.set()

        handler = OnRetry()
        logging.getLogger("graphexec.comm").addHandler(handler)
        try:
            pending = asyncio.ensure_future(connect(address, token=TOKEN, timeout=15))
            await refused.wait()
            assert not pending.done()
            async with await listen(address, echo, token=TOKEN) as listener:
                assert listener.address == address
                async with await pending as comm:
                    await comm.write("hi")
                    assert (await comm.read())[0] == "hi"
        finally:
            logging.getLogger("graphexec.comm").removeHandler(handler)

    run(main())


def test_connect_gives_up_after_timeout_naming_the_address() -> None:
    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(CommClosedError, match=f"127.0.0.1:{port}") as info:
            await connect(f"tcp://127.0.0.1:{port}", token=TOKEN, timeout=0.1)
        assert isinstance(info.value, OSError)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)

    run(main())


def test_listen_adopts_a_prebound_socket_with_queued_connections() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        # a client connects while nobody accepts yet: the connection waits in the backlog
        pending = asyncio.ensure_future(connect(f"tcp://127.0.0.1:{port}", token=TOKEN))
        queued = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: queued.done() or queued.set_result(None))
        try:
            await queued
        finally:
            loop.remove_reader(sock.fileno())
        assert not pending.done()
        async with await listen("tcp://", echo, token=TOKEN, sock=sock) as listener:
            assert listener.address == f"tcp://127.0.0.1:{port}"
            async with await pending as comm:
                await comm.write("queued")
                assert (await comm.read())[0] == "queued"
            await assert_serves(listener)
        assert sock.fileno() == -1  # the listener owned it and closed it

    run(main())


def test_listen_adopts_a_bound_socket_that_is_not_listening_yet() -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        async with await listen("tcp://", echo, token=TOKEN, sock=sock) as listener:
            await assert_serves(listener)

    run(main())


def test_listen_on_a_port_in_use_fails() -> None:
    async def main() -> None:
        async with await tcp_listener(echo) as listener:
            with pytest.raises(OSError):
                await listen(listener.address, echo, token=TOKEN)

    run(main())


def test_empty_token_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="token"):
            await listen("tcp://127.0.0.1:0", echo, token="")

    run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))

    async def main() -> None:
        async with await tcp_listener(echo, ssl_context=server_ctx) as listener:
            async with await connect(listener.address, token=TOKEN, ssl_context=client_ctx) as comm:
                payload = np.arange(1_000_000, dtype=np.uint8)
                await comm.write({"op": "tls"}, [payload])
                header, frames = await comm.read()
                assert header == {"op": "tls"}
                np.testing.assert_array_equal(np.frombuffer(frames[0], np.uint8), payload)
            with pytest.raises(CommClosedError):  # plain TCP against a TLS server
                await connect(listener.address, token=TOKEN, timeout=1)

    run(main())


# ------------------------------------------------------------------ fuzzing


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(junk=st.binary(max_size=300), half_close=st.booleans())
def test_fuzz_unauthenticated_bytes_never_reach_the_handler(junk: bytes, half_close: bool) -> None:
    async def main() -> None:
        recorder = Recorder()
        async with await tcp_listener(recorder, handshake_timeout=0.25) as listener:
            reader, writer = await raw_connect(listener.address)
            writer.write(junk)
            if half_close:
                writer.write_eof()
            await wait_eof(reader)  # refused: wrong proof, EOF, or handshake timeout
            await close_raw(writer)
            assert recorder.connections == 0
            async with await connect(listener.address, token=TOKEN) as comm:
                await comm.write({"op": "ok"})
            assert recorder.ended is not None
            await recorder.ended
        assert recorder.connections == 1
        assert recorder.messages == [({"op": "ok"}, [])]

    run(main())


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(junk=st.binary(min_size=1, max_size=300))
def test_fuzz_authenticated_garbage_only_drops_that_connection(junk: bytes) -> None:
    async def main() -> None:
        outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        async def handler(comm: Comm) -> None:
            if outcome.done():
                await echo(comm)
                return
            try:
                while True:
                    await comm.read()  # a well-formed message may come out: fine
            except (ProtocolError, CommClosedError) as err:
                outcome.set_result(err)

        async with await tcp_listener(handler) as listener:
            reader, writer = await raw_authenticated(listener.address)
            writer.write(junk)
            writer.write_eof()
            await wait_eof(reader)
            await close_raw(writer)
            assert isinstance(await outcome, ProtocolError | CommClosedError)
            await assert_serves(listener)

    run(main())
