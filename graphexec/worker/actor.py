"""The actor inside its worker process: the instance, and the threads or loop that run calls.

A worker started with ``--actor`` hosts exactly one actor. The scheduler sends it
``actor-init`` (the class, by function id, and the constructor's arguments); the
constructor runs on its own thread (on the actor's event loop for async actors), its
top-level ref arguments resolved with ``get`` first; then the worker reports
``actor-ready``, or ``actor-failed`` with the constructor's error.

Method calls arrive on peer connections straight from callers (``actor-call``; see
``worker/worker.py``), go through the worker's task state machine to fetch their inputs,
and land here:

* **threaded actors** (no ``async def`` method): an :class:`~graphexec.worker.executor.
  Executor` with ``max_concurrency`` slots (default 1: one call at a time, in arrival
  order). A call blocking in ``get`` does *not* let the next call start (as in Ray): the
  executor's CPU lending is off for actors.
* **async actors** (any ``async def`` method): one event loop on its own thread; calls
  start in arrival order and up to ``max_concurrency`` (default 1000) are in flight.
  Plain methods of an async actor run on that loop too, blocking it while they run.

Each finished call becomes one report per return value (``key-in-memory`` with the value
inline, or in the node's store when large; ``key-erred`` with the pickled error), handed
back to the worker's loop in batches, which sends it to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from graphexec.graph.task import Task, TaskRef
from graphexec.protocol import serialize as ser
from graphexec.worker.execute import INLINE_BYTES, _run, error_report
from graphexec.worker.executor import ExecItem, Executor

if TYPE_CHECKING:
    from graphexec.worker.state import WorkerTask
    from graphexec.worker.worker import Worker

__all__ = ["ActorRuntime", "call_reports"]

logger = logging.getLogger("graphexec.actor")

#: default in-flight calls for async actors (Ray's default)
ASYNC_DEFAULT_CONCURRENCY = 1000

Report = dict[str, Any]


def _error_reports(keys: list[str], exc: BaseException, name: str) -> list[Report]:
    error = error_report(exc, name)
    return [{"op": "key-erred", "key": k, "exception": error, "origin": keys[0]} for k in keys]


def return_keys(key: str, nreturns: int) -> list[str]:
    """The keys of a call's results: ``key`` itself, or ``key-0 .. key-(n-1)``."""
    return [key] if nreturns == 1 else [f"{key}-{i}" for i in range(nreturns)]


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


class ActorRuntime:
    """Hosts one actor instance in a worker process."""

    def __init__(self, worker: Worker, actor_id: str) -> None:
        self.worker = worker
        self.actor_id = actor_id
        self.instance: Any = None
        self.class_name = "Actor"
        self.is_async = False
        self._executor: Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._done: list[tuple[WorkerTask, list[Report]]] = []
        self._done_lock = threading.Lock()
        self._wake_pending = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ------------------------------------------------------------------ construction

    def init(self, msg: dict[str, Any], load_function: Callable[[str], Any]) -> None:
        """``actor-init`` from the scheduler (on the worker's loop): construct off-loop."""
        self.class_name = msg.get("class_name", "Actor")
        self.is_async = bool(msg.get("is_async"))
        concurrency = int(msg.get("max_concurrency") or 0)
        incarnation = int(msg.get("incarnation", 0))
        if self.is_async:
            concurrency = concurrency or ASYNC_DEFAULT_CONCURRENCY
            self._start_loop(concurrency)
        else:
            self._executor = Executor(
                float(max(1, concurrency)),
                self._on_items_done,
                name=f"graphexec-actor-{self.actor_id[-8:]}",
                lend=False,
            )

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
                {"op": "actor-ready", "actor": self.actor_id, "incarnation": incarnation}
            )

        if self._loop is not None:
            self._loop.call_soon_threadsafe(construct)
        else:
            threading.Thread(
                target=construct, name=f"graphexec-actor-init-{self.actor_id[-8:]}", daemon=True
            ).start()

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
        self._loop_thread = threading.Thread(
            target=run, name=f"graphexec-actor-loop-{self.actor_id[-8:]}", daemon=True
        )
        self._loop_thread.start()
        ready.wait()

    # ------------------------------------------------------------------ calls

    def submit(self, tasks: list[WorkerTask]) -> None:
        """Start calls whose inputs are local now (called on the worker's loop)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_async, tasks)
            return
        assert self._executor is not None
        items = []
        for task in tasks:
            item = ExecItem(task.key, 1.0, self._sync_runner(task))
            item.task = task
            items.append(item)
        self._executor.submit(items)

    def _prepare(self, task: WorkerTask) -> tuple[Task, dict[str, Any], str]:
        msg = task.msg
        method_name = msg["method"]
        name = f"{self.class_name}.{method_name}"
        if self.instance is None:
            raise RuntimeError(f"the actor {self.class_name} is not constructed")
        method = getattr(self.instance, method_name)
        args, kwargs = ser.deserialize(msg["frames"])
        node = Task(task.key, method, tuple(args), dict(kwargs), resolve="top")
        storage = self.worker.storage
        values = {dep: storage.get_value(dep) for dep in node.dependencies}
        return node, values, name

    def _sync_runner(self, task: WorkerTask) -> Callable[[], list[Report]]:
        def run() -> list[Report]:
            msg = task.msg
            nreturns = int(msg.get("nreturns", 1))
            name = f"{self.class_name}.{msg.get('method')}"
            try:
                node, values, name = self._prepare(task)
                result = _run(node, values, self.worker.make_ref)
                if inspect.isawaitable(result):  # a coroutine from a sync actor's method
                    result = asyncio.run(_await(result))
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                return _error_reports(return_keys(task.key, nreturns), exc, name)
            return call_reports(task.key, result, nreturns, name, self._store_large())

        return run

    def _start_async(self, tasks: list[WorkerTask]) -> None:
        for task in tasks:
            coro = self._run_async(task)
            t = asyncio.ensure_future(coro)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _run_async(self, task: WorkerTask) -> None:
        assert self._semaphore is not None
        msg = task.msg
        nreturns = int(msg.get("nreturns", 1))
        name = f"{self.class_name}.{msg.get('method')}"
        async with self._semaphore:
            try:
                node, values, name = self._prepare(task)
                result = _run(node, values, self.worker.make_ref)
                if inspect.isawaitable(result):
                    result = await result
                reports = call_reports(task.key, result, nreturns, name, self._store_large())
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                    raise
                reports = _error_reports(return_keys(task.key, nreturns), exc, name)
        self._finished(task, reports)

    def _store_large(self) -> Callable[[str, list[Any]], dict[str, Any]] | None:
        write = self.worker._store_large
        if write is None:
            return None
        worker = self.worker

        def store(key: str, frames: list[Any]) -> dict[str, Any]:
            write(key, frames)
            return {"store_nodes": [[worker.node_id, worker.store_address]]}

        return store

    # ------------------------------------------------------------------ results

    def _on_items_done(self, items: list[ExecItem]) -> None:
        for item in items:
            self._finished(item.task, item.result)

    def _finished(self, task: WorkerTask, reports: list[Report]) -> None:
        """Called on a runner thread or the actor loop: hand back to the worker's loop."""
        with self._done_lock:
            self._done.append((task, reports))
            if self._wake_pending:
                return
            self._wake_pending = True
        loop = self.worker._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for task, reports in done:
            self.worker.finish_actor_call(task, reports)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.close(1.0)
        loop = self._loop
        if loop is not None and self._loop_thread is not None:

            def stop() -> None:
                for t in list(self._tasks):
                    t.cancel()
                loop.stop()

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop)
            self._loop_thread.join(2.0)
            if not self._loop_thread.is_alive():
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
