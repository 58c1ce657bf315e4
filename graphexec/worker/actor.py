"""The actor inside its worker process: the instance, and the threads or loop that run calls.

A worker started with ``--actor`` hosts exactly one actor. The scheduler sends it
``actor-init`` (the class, by function id, and the constructor's arguments); the
constructor runs on its own thread (on the actor's event loop for async actors), its
top-level ref arguments resolved with ``get`` first; then the worker reports
``actor-ready``, or ``actor-failed`` with the constructor's error.

Method calls arrive straight from callers on the actor's own listening socket (blocking
connections, ``comm/blocking.py``: no event loop between the socket and the method). Each
caller connection has a thread that reads calls, gets their inputs (inline in the call,
in this node's store, or fetched from another node through the worker's loop), and:

* **threaded actors** (no ``async def`` method) with ``max_concurrency=1`` (the
  default): runs the call itself, under the actor's lock, so calls run one at a time and
  each caller's calls in order. Replies to a burst of calls go out together.
* **threaded actors** with ``max_concurrency=N``: an :class:`~graphexec.worker.executor.
  Executor` with N slots. A call blocking in ``get`` does *not* let another call start
  (as in Ray): the executor's CPU lending is off for actors.
* **async actors** (any ``async def`` method): one event loop on its own thread; calls
  start in arrival order and up to ``max_concurrency`` (default 1000) are in flight.
  Plain methods of an async actor run on that loop too, blocking it while they run.

Each finished call becomes one report per return value (``key-in-memory`` with the value
inline, or in the node's store when large; ``key-erred`` with the pickled error), handed
written back on the caller's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from graphexec.comm.batched import split_frames
from graphexec.comm.blocking import (
    BlockingComm,
    blocking_listener,
    check_header,
    local_listener,
    serve_handshake,
)
from graphexec.comm.rpc import RemoteError
from graphexec.errors import CommClosedError, ObjectLostError, ProtocolError
from graphexec.graph.keys import return_keys
from graphexec.graph.task import Task, TaskRef
from graphexec.protocol import serialize as ser
from graphexec.worker.execute import INLINE_BYTES, _run, error_report
from graphexec.worker.executor import ExecItem, Executor

if TYPE_CHECKING:
    from graphexec.worker.worker import Worker

__all__ = ["ActorRuntime", "call_reports"]

logger = logging.getLogger("graphexec.actor")

#: default in-flight calls for async actors (Ray's default)
ASYNC_DEFAULT_CONCURRENCY = 1000

Report = dict[str, Any]


def _error_reports(keys: list[str], exc: BaseException, name: str) -> list[Report]:
    error = error_report(exc, name)
    return [{"op": "key-erred", "key": k, "exception": error, "origin": keys[0]} for k in keys]


def call_reports(
    key: str,
    result: Any,
    nreturns: int,
    name: str,
    store_large: Callable[[str, list[Any]], dict[str, Any]] | None,
) -> list[Report]:
    """Serialize a call's result(s) into the reports the caller receives."""
    keys = return_keys(key, nreturns)
    if nreturns == 1:
        values = [result]
    else:
        if not isinstance(result, (tuple, list)) or len(result) != nreturns:
            got = (
                f"{type(result).__name__} of length {len(result)}"
                if isinstance(result, (tuple, list))
                else type(result).__name__
            )
            err = ValueError(
                f"{name} was called with num_returns={nreturns} but returned {got}; return "
                f"a tuple or list of {nreturns} values"
            )
            return _error_reports(keys, err, name)
        values = list(result)
    reports: list[Report] = []
    for k, value in zip(keys, values, strict=True):
        try:
            frames = ser.serialize(value)
        except Exception as exc:  # an unpicklable result fails the call, not the actor
            return _error_reports(keys, exc, name)
        nbytes = ser.frames_nbytes(frames)
        report: Report = {"op": "key-in-memory", "key": k, "nbytes": nbytes, "who_has": []}
        if store_large is not None and nbytes > INLINE_BYTES:
            report["inline"] = None
            report.update(store_large(k, frames))
        else:
            report["inline"] = [bytes(f) for f in frames]
            report["store_nodes"] = []
        reports.append(report)
    return reports


class _Call:
    """One call read from a caller's connection."""

    __slots__ = ("key", "method", "nreturns", "frames", "deps", "conn")

    def __init__(self, op: dict[str, Any], frames: list[Any], conn: BlockingComm) -> None:
        self.key: str = op["key"]
        self.method: str = op["method"]
        self.nreturns = int(op.get("nreturns", 1))
        self.frames = frames
        self.deps: dict[str, Any] = op.get("deps") or {}
        self.conn = conn


#: how long a burst of replies may wait to go out together
REPLY_FLUSH_SECONDS = 0.002


class ActorRuntime:
    """Hosts one actor instance in a worker process."""

    def __init__(self, worker: Worker, actor_id: str) -> None:
        self.worker = worker
        self.actor_id = actor_id
        self.instance: Any = None
        self.class_name = "Actor"
        self.is_async = False
        self.concurrency = 1
        self._lock = threading.Lock()
        self._executor: Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[socket.socket] = []
        #: the actor's socket over TCP, and on this machine (a Unix socket, or '')
        self.address = ""
        self.local_address = ""
        self._threads: list[threading.Thread] = []
        self._conns: set[BlockingComm] = set()
        self._closed = False

    # ------------------------------------------------------------------ construction

    def init(self, msg: dict[str, Any], load_function: Callable[[str], Any]) -> None:
        """``actor-init`` from the scheduler (on the worker's loop): construct off-loop."""
        self.class_name = msg.get("class_name", "Actor")
        self.is_async = bool(msg.get("is_async"))
        concurrency = int(msg.get("max_concurrency") or 0)
        incarnation = int(msg.get("incarnation", 0))
        if self.is_async:
            self.concurrency = concurrency or ASYNC_DEFAULT_CONCURRENCY
            self._start_loop(self.concurrency)
        else:
            self.concurrency = max(1, concurrency)
            if self.concurrency > 1:
                self._executor = Executor(
                    float(self.concurrency),
                    self._on_items_done,
                    name=f"graphexec-actor-{self.actor_id[-8:]}",
                    lend=False,
                )
        host = self.worker.address.removeprefix("tcp://").rpartition(":")[0] or "127.0.0.1"
        listener, self.address = blocking_listener(host)
        self._listeners.append(listener)
        self._thread(self._accept, "accept", listener)
        local = local_listener(f"graphexec-actor-{self.actor_id}-{incarnation}-{os.getpid()}")
        if local is not None:  # callers on this machine skip TCP
            self._listeners.append(local[0])
            self.local_address = local[1]
            self._thread(self._accept, "accept-local", local[0])

        def construct() -> None:
            try:
                cls = load_function(msg["fid"])
                args, kwargs = ser.deserialize([msg["payload"]])
                args, kwargs = _resolve_refs(args, kwargs)
                self.instance = cls(*args, **kwargs)
            except BaseException as exc:  # the user's __init__: report it, keep the process
                if isinstance(exc, KeyboardInterrupt):
                    raise
                report = error_report(exc, f"{self.class_name}.__init__")
                self._to_scheduler(
                    {"op": "actor-failed", "actor": self.actor_id, "exception": report}
                )
                return
            self._to_scheduler(
                {
                    "op": "actor-ready",
                    "actor": self.actor_id,
                    "incarnation": incarnation,
                    "address": self.address,
                    "local_address": self.local_address,
                }
            )

        if self._loop is not None:
            self._loop.call_soon_threadsafe(construct)
        else:
            self._thread(construct, "init")

    def _thread(self, target: Callable[..., None], what: str, *args: Any) -> None:
        thread = threading.Thread(
            target=target,
            args=args,
            name=f"graphexec-actor-{what}-{self.actor_id[-8:]}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _to_scheduler(self, op: dict[str, Any]) -> None:
        loop = self.worker._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.worker._send, op)

    def _start_loop(self, concurrency: int) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._semaphore = asyncio.Semaphore(concurrency)
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread(run, "loop")
        ready.wait()

    # ------------------------------------------------------------------ connections

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                sock, peer = listener.accept()
            except OSError:
                return  # closed
            if sock.family == socket.AF_UNIX:
                peer_name = "local"
            else:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer_name = f"{peer[0]}:{peer[1]}"
            self._thread(self._serve, "conn", sock, peer_name)

    def _serve(self, sock: socket.socket, peer: str) -> None:
        """One caller's connection: read calls, run (or dispatch) them, answer."""
        try:
            sock = serve_handshake(sock, self.worker.token)
        except (ProtocolError, CommClosedError, OSError) as err:
            logger.warning("actor %s: dropping %s: %s", self.actor_id, peer, err)
            sock.close()
            return
        conn = BlockingComm(sock, peer=peer)
        self._conns.add(conn)
        try:
            while not self._closed:
                batch = conn.read_batch()
                replies: list[dict[str, Any]] = []
                frames_out: list[Any] = []
                flushed = time.monotonic()
                for header, frames in batch:
                    for op, op_frames in split_frames(check_header(header), frames):
                        if op.get("op") != "actor-call":
                            continue  # actor-hello and future ops
                        call = _Call(op, op_frames, conn)
                        done = self._dispatch(call)
                        if done is None:
                            continue
                        for report in done:
                            replies.append(report)
                        if time.monotonic() - flushed > REPLY_FLUSH_SECONDS:
                            conn.send(replies, frames_out)
                            replies, flushed = [], time.monotonic()
                if replies:
                    conn.send(replies, frames_out)
        except (CommClosedError, OSError):
            pass
        except ProtocolError as err:
            logger.warning("actor %s: closing %s: %s", self.actor_id, peer, err)
        except Exception:
            logger.exception("actor %s: error serving %s", self.actor_id, peer)
        finally:
            self._conns.discard(conn)
            conn.close()

    def _dispatch(self, call: _Call) -> list[Report] | None:
        """Run the call here (one-at-a-time actors) or hand it on; reports if run here."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_async, call)
            return None
        if self._executor is not None:
            item = ExecItem(call.key, 1.0, lambda: self._run_sync(call))
            item.task = call
            self._executor.submit([item])
            return None
        with self._lock:
            return self._run_sync(call)

    # ------------------------------------------------------------------ running calls

    def _inputs(self, call: _Call) -> dict[str, Any]:
        """The values of a call's ref arguments, from wherever the caller said they are."""
        values: dict[str, Any] = {}
        worker = self.worker
        for key, (kind, *info) in call.deps.items():
            if kind == "inline":
                values[key] = ser.deserialize(info[0])
            elif kind == "store":
                store = worker.ensure_store()
                if store is None:
                    raise ObjectLostError(f"input {key} is in a store this node does not have")
                values[key] = ser.deserialize(store.get_frames(key))
            else:
                values[key] = ser.deserialize(self._fetch(key, kind, info[0] if info else []))
        return values

    def _fetch(self, key: str, kind: str, addresses: list[str]) -> list[Any]:
        """Fetch an input held on another node, through the worker's loop."""
        worker = self.worker
        loop = worker._loop
        assert loop is not None
        last: BaseException | None = None
        for address in addresses:
            try:
                if kind == "remote-store":
                    from graphexec.store.client import read_remote

                    coro = read_remote(key, address, worker.token)
                    return list(asyncio.run_coroutine_threadsafe(coro, loop).result(60))
                request = worker._pool.request(address, {"op": "get-data", "keys": [key]})
                ops, frames = asyncio.run_coroutine_threadsafe(request, loop).result(60)
                for op, op_frames in split_frames(ops, frames):
                    if op.get("key") == key and op.get("status") == "ok":
                        return list(op_frames)
            except (CommClosedError, OSError, RemoteError) as err:
                last = err
        raise ObjectLostError(f"input {key} could not be fetched from {addresses}: {last}")

    def _method(self, name: str) -> Callable[..., Any]:
        if self.instance is None:
            raise RuntimeError(f"the actor {self.class_name} is not constructed")
        return getattr(self.instance, name)  # type: ignore[no-any-return]

    def _prepare(self, call: _Call) -> tuple[Task, dict[str, Any], str]:
        name = f"{self.class_name}.{call.method}"
        method = self._method(call.method)
        args, kwargs = ser.deserialize(call.frames)
        node = Task(call.key, method, tuple(args), dict(kwargs), resolve="top")
        return node, self._inputs(call), name

    def _run_sync(self, call: _Call) -> list[Report]:
        name = f"{self.class_name}.{call.method}"
        try:
            if call.deps:
                node, values, name = self._prepare(call)
                result = _run(node, values, self.worker.make_ref)
            else:  # no ref anywhere in the arguments: call the method as it is
                args, kwargs = ser.deserialize(call.frames)
                result = self._method(call.method)(*args, **kwargs)
            if inspect.iscoroutine(result):  # a coroutine from a sync actor's method
                result = asyncio.run(_await(result))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            return _error_reports(return_keys(call.key, call.nreturns), exc, name)
        return call_reports(call.key, result, call.nreturns, name, self._store_large())

    def _start_async(self, call: _Call) -> None:
        task = asyncio.ensure_future(self._run_async(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_async(self, call: _Call) -> None:
        assert self._semaphore is not None
        name = f"{self.class_name}.{call.method}"
        async with self._semaphore:
            try:
                node, values, name = self._prepare(call)
                result = _run(node, values, self.worker.make_ref)
                if inspect.iscoroutine(result):
                    result = await result
                reports = call_reports(call.key, result, call.nreturns, name, self._store_large())
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                    raise
                reports = _error_reports(return_keys(call.key, call.nreturns), exc, name)
        self._reply(call, reports)

    def _store_large(self) -> Callable[[str, list[Any]], dict[str, Any]] | None:
        write = self.worker._store_large
        if write is None:
            return None
        worker = self.worker

        def store(key: str, frames: list[Any]) -> dict[str, Any]:
            write(key, frames)
            return {"store_nodes": [[worker.node_id, worker.store_address]]}

        return store

    def _on_items_done(self, items: list[ExecItem]) -> None:
        for item in items:
            self._reply(item.task, item.result)

    @staticmethod
    def _reply(call: _Call, reports: list[Report]) -> None:
        with contextlib.suppress(CommClosedError):
            call.conn.send(reports)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in list(self._conns):
            conn.close()
        if self._executor is not None:
            self._executor.close(1.0)
        loop = self._loop
        if loop is not None:

            def stop() -> None:
                for t in list(self._tasks):
                    t.cancel()
                loop.stop()

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(1.0)
        if loop is not None and not loop.is_running():
            loop.close()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _resolve_refs(args: Any, kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Constructor arguments: top-level refs become their values (fetched with ``get``)."""
    top = [a for a in args if isinstance(a, TaskRef)]
    top += [v for v in kwargs.values() if isinstance(v, TaskRef)]
    if not top:
        return tuple(args), dict(kwargs)
    from graphexec._context import current_client
    from graphexec.client.refs import ObjectRef

    client = current_client()
    refs: list[ObjectRef[Any]] = [ObjectRef(r.key, None, client) for r in top]
    values = dict(zip([r.key for r in top], client.gather(refs), strict=True))

    def value(x: Any) -> Any:
        return values[x.key] if isinstance(x, TaskRef) else x

    return tuple(value(a) for a in args), {k: value(v) for k, v in kwargs.items()}
