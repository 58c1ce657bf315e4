"""In-process transport: the same Comm semantics as TCP, without sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from graphexec.comm import Comm, Handler, Listener, connect, listen, parse_address
from graphexec.errors import CommClosedError, ProtocolError

TOKEN = b"inproc-token"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serving(handler: Handler, **kwargs: Any) -> AsyncIterator[tuple[Listener, Comm]]:
    """A listener on a fresh inproc name and one client connected to it."""
    async with (
        await listen("inproc://", handler, token=TOKEN, **kwargs) as listener,
        await connect(listener.address, token=TOKEN) as comm,
    ):
        yield listener, comm


async def echo(comm: Comm) -> None:
    while True:
        try:
            header, frames = await comm.read()
        except CommClosedError:
            return
        await comm.write(header, frames)


def test_round_trip_passes_frames_by_reference() -> None:
    async def main() -> None:
        async with await listen("inproc://", echo, token=TOKEN) as listener:
            scheme, _, name = parse_address(listener.address)
            assert scheme == "inproc" and name
            async with await connect(listener.address, token=TOKEN) as comm:
                assert comm.peer == listener.address
                arr = np.arange(1000.0)
                blob = b"payload"
                await comm.write({"op": "x", "t": (1, 2)}, [blob, arr])
                header, frames = await comm.read()
                assert header == {"op": "x", "t": [1, 2]}  # through msgpack, as on TCP
                assert frames[0] is blob
                assert isinstance(frames[1], memoryview)
                assert np.frombuffer(frames[1]).ctypes.data == arr.ctypes.data  # no copy
                for i in range(1000):
                    comm.write_nowait({"i": i})
                for i in range(1000):
                    assert (await comm.read())[0] == {"i": i}

    run(main())


def test_named_listener_and_address_in_use() -> None:
    async def main() -> None:
        async with await listen("inproc://scheduler-test", echo, token=TOKEN) as listener:
            assert listener.address == "inproc://scheduler-test"
            with pytest.raises(OSError, match="already in use"):
                await listen("inproc://scheduler-test", echo, token=TOKEN)
        # released on close
        async with await listen("inproc://scheduler-test", echo, token=TOKEN):
            pass

    run(main())


def test_wrong_token_raises_on_connect(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def main() -> None:
        async def counting(comm: Comm) -> None:
            nonlocal calls
            calls += 1
            await echo(comm)

        async with await listen("inproc://", counting, token=TOKEN) as listener:
            with pytest.raises(CommClosedError, match="authentication"):
                await connect(listener.address, token="wrong")
            async with await connect(listener.address, token=TOKEN) as comm:
                await comm.write("ok")
                assert (await comm.read())[0] == "ok"

    run(main())
    assert calls == 1
    assert any(
        r.levelno == logging.WARNING and "wrong token" in r.getMessage() for r in caplog.records
    )


def test_unencodable_header_fails_like_tcp() -> None:
    async def main() -> None:
        async with serving(echo) as (_, comm):
            with pytest.raises(ProtocolError, match="msgpack"):
                await comm.write({"op": {1, 2}})
            await comm.write({"op": "fine"})
            assert (await comm.read())[0] == {"op": "fine"}

    run(main())


def test_frame_limits_enforced_on_read(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        async def handler(comm: Comm) -> None:
            try:
                while True:
                    await comm.read()
            except (ProtocolError, CommClosedError) as err:
                ended.set_result(err)

        async with serving(handler, max_frame_bytes=10) as (_, comm):
            await comm.write("small", [b"0123456789"])
            await comm.write("big", [b"0123456789!"])
            assert isinstance(await ended, ProtocolError)
            with pytest.raises(CommClosedError):
                await comm.read()

    run(main())
    assert any("exceeds max_frame_bytes=10" in r.getMessage() for r in caplog.records)


def test_close_semantics() -> None:
    async def main() -> None:
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def handler(comm: Comm) -> None:
            while True:
                try:
                    await got.put(await comm.read())
                except CommClosedError as err:
                    await got.put(err)
                    return

        async with await listen("inproc://", handler, token=TOKEN) as listener:
            comm = await connect(listener.address, token=TOKEN)
            await comm.write("before close")
            await comm.close()
            assert comm.closed()
            assert (await got.get())[0] == "before close"  # delivered despite the close
            assert isinstance(await got.get(), CommClosedError)
            with pytest.raises(CommClosedError):
                await comm.write("after")
            with pytest.raises(CommClosedError):
                await comm.read()
            comm.abort()

    run(main())


def test_peer_close_wakes_pending_read_and_handler_return_closes() -> None:
    async def main() -> None:
        async def one_shot(comm: Comm) -> None:
            await comm.write("hello")

        async with serving(one_shot) as (_, comm):
            assert (await comm.read())[0] == "hello"
            with pytest.raises(CommClosedError, match="closed by the peer"):
                await comm.read()
            assert comm.closed()
            with pytest.raises(CommClosedError):
                comm.write_nowait("to nobody")

    run(main())


def test_cancelled_read_loses_nothing() -> None:
    async def main() -> None:
        async with serving(echo) as (_, comm):
            task = asyncio.ensure_future(comm.read())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await comm.write("next")
            assert (await comm.read())[0] == "next"

    run(main())


def test_connect_waits_for_the_listener_to_appear() -> None:
    async def main() -> None:
        pending = asyncio.ensure_future(connect("inproc://late", token=TOKEN, timeout=10))
        await asyncio.sleep(0)
        assert not pending.done()
        async with await listen("inproc://late", echo, token=TOKEN), await pending as comm:
            await comm.write("hi")
            assert (await comm.read())[0] == "hi"

    run(main())


def test_connect_gives_up_after_timeout() -> None:
    async def main() -> None:
        with pytest.raises(CommClosedError, match="inproc://nobody"):
            await connect("inproc://nobody", token=TOKEN, timeout=0.05)

    run(main())


def test_listener_close_cancels_handlers() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def waits(comm: Comm) -> None:
            started.set()
            await asyncio.Event().wait()

        listener = await listen("inproc://", waits, token=TOKEN)
        comm = await connect(listener.address, token=TOKEN)
        await started.wait()
        await listener.close()
        with pytest.raises(CommClosedError):
            await comm.read()
        with pytest.raises(CommClosedError):
            await connect(listener.address, token=TOKEN, timeout=0.01)

    run(main())


def test_handler_exception_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def broken(comm: Comm) -> None:
            await comm.read()
            raise KeyError("oops")

        async with await listen("inproc://", broken, token=TOKEN) as listener:
            async with await connect(listener.address, token=TOKEN) as comm:
                await comm.write("go")
                with pytest.raises(CommClosedError):
                    await comm.read()
            async with await connect(listener.address, token=TOKEN) as comm:
                assert not comm.closed()

    run(main())
    assert any(r.exc_info and isinstance(r.exc_info[1], KeyError) for r in caplog.records)


def test_listener_on_another_loop_is_refused() -> None:
    async def main() -> None:
        async with await listen("inproc://", echo, token=TOKEN) as listener:
            errors: list[BaseException] = []

            def other_loop() -> None:
                try:
                    asyncio.run(connect(listener.address, token=TOKEN, timeout=1))
                except BaseException as err:  # reported to the test below
                    errors.append(err)

            thread = threading.Thread(target=other_loop)
            thread.start()
            thread.join(timeout=10)  # the refusal needs nothing from this loop
            assert len(errors) == 1 and isinstance(errors[0], CommClosedError)
            assert "another event loop" in str(errors[0])

    run(main())


def test_ssl_and_sock_are_tcp_only() -> None:
    async def main() -> None:
        with socket.socket() as sock, pytest.raises(ValueError, match="tcp"):
            await listen("inproc://", echo, token=TOKEN, sock=sock)

    run(main())
