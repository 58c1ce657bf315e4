"""The worker server: turns scheduler and peer messages into state-machine events.

One worker process per CPU slot. It keeps one connection to the scheduler (ops in:
``compute``, ``free-keys``, ``cancel-task``, ``store-data``, ``close``; ops out:
``register-worker``, ``task-finished``, ``task-erred``, ``task-blocked``) and listens for
peers and clients asking for data (``get-data``).

Threads: the event loop owns all state. User functions run on executor threads; their
results come back in batches through ``_on_done``, which wakes the loop once per batch.
A task that calls ``get`` from inside (nested tasks) reports ``task-blocked`` so the
scheduler lends its CPU to other work (see ``executor.py``).

Shutdown order (``close``): stop listening, stop the executor, flush and close the
scheduler connection, close the peer pool; owned coroutines are awaited or cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from graphexec.comm import connect, listen
from graphexec.comm.batched import BatchedSend, ConnectionPool, split_frames
from graphexec.comm.core import Comm, Listener
from graphexec.comm.heartbeat import send_heartbeats
from graphexec.comm.rpc import RemoteError
from graphexec.errors import CommClosedError, ProtocolError
from graphexec.protocol import serialize as ser
from graphexec.worker.execute import run_task
from graphexec.worker.executor import ExecItem, Executor
from graphexec.worker.state import WorkerTask, WorkerTaskState
from graphexec.worker.storage import MemoryStorage, ObjectStorage, StoreBackedStorage

if TYPE_CHECKING:
    from graphexec.store.client import StoreClient
    from graphexec.worker.actor import ActorRuntime

__all__ = ["Worker"]

STORE_CONNECT_TIMEOUT = 30.0

logger = logging.getLogger("graphexec.worker")

MakeRef = Callable[[str], Any]


class Worker:
    """A worker server. ``await start()``, then it runs until ``close()`` or scheduler loss."""

    def __init__(
        self,
        scheduler_address: str,
        *,
        token: str,
        node_id: str,
        cpus: float = 1.0,
        listen_address: str = "tcp://127.0.0.1:0",
        storage: ObjectStorage | None = None,
        worker_id: str | None = None,
        validate: bool = False,
        store_address: str = "",
        actor_id: str = "",
    ) -> None:
        self.scheduler_address = scheduler_address
        self.token = token
        self.node_id = node_id
        self.cpus = cpus
        self.id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self.storage: ObjectStorage = storage if storage is not None else MemoryStorage()
        self.state = WorkerTaskState(self.storage.__contains__)
        self.validate = validate
        self.store_address = store_address
        self.store: StoreClient | None = None
        self._store_lock = asyncio.Lock()
        if store_address:
            self.storage = StoreBackedStorage(self.ensure_store)
            self.state = WorkerTaskState(self.storage.__contains__)
        self._listen_address = listen_address
        self.address = ""
        self._functions: dict[str, Any] = {}
        self._function_blobs: dict[str, bytes] = {}
        self._listener: Listener | None = None
        self._comm: Comm | None = None
        self._batched: BatchedSend | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._pool = ConnectionPool(token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = Executor(
            cpus, self._on_done, name=f"graphexec-{self.id}", on_block=self._on_block
        )
        self._done: list[ExecItem] = []
        self._done_lock = threading.Lock()
        self._wake_pending = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        self._closing = False
        #: set by the process entry point: makes ObjectRefs for nested refs in arguments
        self.make_ref: MakeRef = lambda key: key
        #: set when a client lives in this process (nested tasks)
        self.client: Any = None
        #: the actor this process hosts ('' for a task worker)
        self.actor_id = actor_id
        self.actor: ActorRuntime | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._listener = await listen(self._listen_address, self._handle_peer, token=self.token)
        self.address = self._listener.address
        if self.actor_id:
            from graphexec.worker.actor import ActorRuntime

            self.actor = ActorRuntime(self, self.actor_id)
        self._comm = await connect(self.scheduler_address, token=self.token)
        self._batched = BatchedSend(self._comm)
        self._batched.send(
            {
                "op": "register-worker",
                "worker": self.id,
                "address": self.address,
                "node": self.node_id,
                "cpus": self.cpus,
                "pid": os.getpid(),
                "actor": self.actor_id,
            }
        )
        self._reader = asyncio.ensure_future(self._read_scheduler(self._comm))
        self._heartbeat = asyncio.ensure_future(send_heartbeats(self._batched))

    # ------------------------------------------------------------------ the node's store

    async def connect_store(self) -> StoreClient | None:
        """Connect to the node's store on first need (not at start: it is off the path
        to the first result, and most tasks never make a large object)."""
        if self.store is not None or not self.store_address:
            return self.store
        async with self._store_lock:
            if self.store is None:
                from graphexec.store.client import StoreClient

                store = StoreClient(self.store_address, token=self.token, node_id=self.node_id)
                await store.connect()
                self.store = store
        return self.store

    def ensure_store(self) -> StoreClient | None:
        """:meth:`connect_store` from a thread other than the loop's (executor threads)."""
        if self.store is not None or not self.store_address or self._loop is None:
            return self.store
        result: StoreClient | None = asyncio.run_coroutine_threadsafe(
            self.connect_store(), self._loop
        ).result(STORE_CONNECT_TIMEOUT)
        return result

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._listener is not None:
            self._listener.stop()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.close, 1.0)
        if self.actor is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.actor.close)
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close_async()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._batched is not None:
            await self._batched.close()
        if self._comm is not None:
            await self._comm.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._pool.close()
        if self.store is not None:
            await self.store.close()
        self.finished.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ scheduler link

    async def _read_scheduler(self, comm: Comm) -> None:
        handlers = {
            "compute": self.handle_compute,
            "free-keys": self.handle_free_keys,
            "cancel-task": self.handle_cancel_task,
            "store-data": self.handle_store_data,
            "close": self.handle_close,
            "actor-init": self.handle_actor_init,
        }
        try:
            while True:
                ops, frames = await comm.read()
                for op, op_frames in split_frames(ops, frames):
                    handler = handlers.get(str(op.get("op")))
                    if handler is None:
                        logger.warning(
                            "worker %s: unknown op %r from scheduler", self.id, op.get("op")
                        )
                        continue
                    handler(op, op_frames)
                if self.validate:
                    self.state.validate_state()
        except CommClosedError:
            if not self._closing:
                logger.info("worker %s: scheduler connection closed; shutting down", self.id)
        finally:
            if not self._closing:
                self._spawn(self.close())

    def _send(self, op: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        if self._batched is not None and not self._closing:
            with contextlib.suppress(CommClosedError):
                self._batched.send(op, frames)

    def handle_compute(self, msg: dict[str, Any], frames: list[Any]) -> None:
        functions = msg.pop("functions", None)
        if functions:
            self._function_blobs.update(functions)
        self._execute_instructions(self.state.handle_compute(msg))

    def handle_free_keys(self, msg: dict[str, Any], frames: list[Any]) -> None:
        for key in msg["keys"]:
            self.storage.delete(key)

    def handle_cancel_task(self, msg: dict[str, Any], frames: list[Any]) -> None:
        self._execute_instructions(self.state.handle_cancel(msg["key"]))

    def handle_store_data(self, msg: dict[str, Any], frames: list[Any]) -> None:
        self.storage.put_frames(msg["key"], frames)

    def handle_close(self, msg: dict[str, Any], frames: list[Any]) -> None:
        self._spawn(self.close())

    def handle_actor_init(self, msg: dict[str, Any], frames: list[Any]) -> None:
        functions = msg.pop("functions", None)
        if functions:
            self._function_blobs.update(functions)
        if self.actor is None:
            logger.warning("worker %s: actor-init for a task worker; ignored", self.id)
            return
        self.actor.init(msg, self._load_function)

    def _execute_instructions(self, instructions: list[tuple[Any, ...]]) -> None:
        items: list[ExecItem] = []
        for ins in instructions:
            kind = ins[0]
            if kind == "execute":
                items.append(self._exec_item(ins[1]))
            elif kind == "store-inline":
                if ins[1] not in self.storage:
                    self.storage.put_frames(ins[1], ins[2])
            elif kind == "fetch":
                self._spawn(self._fetch(ins[1], ins[2]))
            elif kind == "fetch-store":
                self._spawn(self._fetch_store(ins[1], ins[2]))
            elif kind == "in-store":
                if isinstance(self.storage, StoreBackedStorage):
                    self.storage.note_in_store(ins[1])
            elif kind == "send":
                self._send(ins[1])
            elif kind == "unqueue":
                self._executor.cancel(ins[1])
            elif kind == "discard":
                self.storage.delete(ins[1])
        if items:
            self._executor.submit(items)

    # ------------------------------------------------------------------ execution

    def _load_function(self, fid: str) -> Any:
        func = self._functions.get(fid)
        if func is None:
            func = self._functions[fid] = ser.loads_function(self._function_blobs[fid])
        return func

    def _exec_item(self, task: WorkerTask) -> ExecItem:
        msg = task.msg
        storage = self.storage

        def run() -> tuple[dict[str, Any], Any, Any]:
            try:
                return run_task(msg, storage, self._load_function, self.make_ref, self._store_large)
            except Exception as err:  # a bug of ours: fail the task, keep the worker
                logger.exception("worker %s: internal error running %s", self.id, msg["key"])
                return (
                    {
                        "op": "task-erred",
                        "key": msg["key"],
                        "run_id": msg.get("run_id", 0),
                        "retryable": False,
                        "exception": {
                            "type": "GraphexecError",
                            "pickled": None,
                            "traceback": "",
                            "message": f"internal error in the worker: {err!r}",
                            "function": "",
                        },
                    },
                    None,
                    None,
                )

        item = ExecItem(task.key, task.cpus, run)
        item.task = task
        return item

    def _on_done(self, items: list[ExecItem]) -> None:
        """Called on a runner thread with a batch of finished items."""
        with self._done_lock:
            self._done.extend(items)
            if self._wake_pending:
                return
            self._wake_pending = True
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._drain_done)

    def _drain_done(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for item in done:
            report, value, frames = item.result
            task = self.state.tasks.get(item.key)
            if task is None or task is not item.task or task.status == "cancelled":
                continue  # cancelled, or superseded by a newer run of the same key
            if task.status == "ready":
                self.state.handle_started(item.key)
            if report.get("in_store") and isinstance(self.storage, StoreBackedStorage):
                self.storage.note_in_store(item.key)
            elif report["op"] == "task-finished":
                self.storage.put(item.key, value, frames, report["nbytes"])
            self._execute_instructions(self.state.handle_done(task, report))

    # ------------------------------------------------------------------ nested tasks

    def _on_block(self, item: ExecItem, blocked: bool) -> None:
        """A task on a runner thread waits in ``get``: the scheduler may lend its CPU."""
        if self._loop is None:
            return
        op = {"op": "task-blocked", "key": item.key, "blocked": blocked}
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._send, op)

    # ------------------------------------------------------------------ data transfer

    @property
    def _store_large(self) -> Callable[[str, list[Any]], None] | None:
        if not self.store_address:
            return None

        def write(key: str, frames: list[Any]) -> None:  # runs on an executor thread
            store = self.ensure_store()
            assert store is not None
            store.put_frames(key, frames)

        return write

    async def _fetch_store(self, key: str, addresses: list[str]) -> None:
        """Copy ``key`` from another node's store into ours, in chunks."""
        reason = "no node holds it"
        if await self.connect_store() is not None:
            assert self.store is not None
            for address in addresses:
                try:
                    await self.store.copy_from(key, address)
                except (CommClosedError, OSError, RemoteError) as err:
                    reason = f"{address}: {err}"
                    continue
                if isinstance(self.storage, StoreBackedStorage):
                    self.storage.note_in_store(key)
                self._send({"op": "stored-copy", "key": key})
                self._execute_instructions(self.state.handle_fetched(key))
                return
        self._execute_instructions(self.state.handle_fetch_failed(key, reason))

    async def _fetch(self, key: str, addresses: list[str]) -> None:
        reason = "no worker holds it"
        for attempt in range(3):
            for address in addresses:
                if address == self.address:
                    continue
                try:
                    ops, frames = await self._pool.request(
                        address, {"op": "get-data", "keys": [key]}
                    )
                except (CommClosedError, OSError) as err:
                    reason = f"{address}: {err}"
                    continue
                for op, op_frames in split_frames(ops, frames):
                    if op.get("status") == "ok" and op.get("key") == key:
                        self.storage.put_frames(key, op_frames)  # type: ignore[arg-type]
                        self._execute_instructions(self.state.handle_fetched(key))
                        return
                reason = f"{address} does not hold it"
            await asyncio.sleep(0.05 * (attempt + 1))
        self._execute_instructions(self.state.handle_fetch_failed(key, reason))

    async def _handle_peer(self, comm: Comm) -> None:
        try:
            ops, frames = await comm.read()
            while True:
                reply: list[dict[str, Any]] = []
                out_frames: list[Any] = []
                for op, _ in split_frames(ops, frames):
                    if op.get("op") != "get-data":
                        reply.append({"op": "error", "message": f"unknown op {op.get('op')!r}"})
                        continue
                    keys = op.get("keys", [])
                    if not isinstance(keys, list):
                        reply.append({"op": "error", "message": "get-data needs a list of keys"})
                        continue
                    for key in keys:
                        if isinstance(key, str) and key in self.storage:
                            data = list(self.storage.get_frames(key))
                            reply.append(
                                {"op": "data", "key": key, "status": "ok", "nframes": len(data)}
                            )
                            out_frames.extend(data)
                        else:
                            reply.append({"op": "data", "key": key, "status": "missing"})
                await comm.write(reply, out_frames)
                ops, frames = await comm.read()
        except CommClosedError:
            pass
        except ProtocolError as err:  # a broken message: drop this peer, nobody else
            logger.warning("worker %s: dropping %s: %s", self.id, comm.peer, err)
