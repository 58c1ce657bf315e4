"""The client: submits lazy graphs, tracks refs, waits for and fetches results.

Threads: the client's connection lives on an asyncio event loop -- its own daemon
thread in the driver (``Client.start_in_thread``), or the worker's loop in a worker
process (nested tasks). Public methods are called from user threads; they hand ops to
the loop with ``call_soon_threadsafe`` and wait on threading primitives. All shared
state (refcounts, results, waiters) is guarded by one lock.

Submission (``submit``): walk the lazy nodes behind the given refs, optimize the graph
(cull, inline, fuse, order), encode each node once and send one ``update-graph``. The
keys this process still references are sent as *wants*; everything else in the graph is
an intermediate that the scheduler may free as soon as its dependents are done.

Results: small values arrive inline with ``key-in-memory`` and are kept until the last
ref to the key is dropped; large ones are fetched from the worker holding them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from graphexec import errors
from graphexec._context import notify_blocked
from graphexec.client.refs import LazyRef, ObjectRef
from graphexec.client.waiters import _Waiter
from graphexec.comm import connect, framing
from graphexec.comm.batched import BatchedSend, ConnectionPool, split_frames
from graphexec.comm.core import Comm
from graphexec.comm.heartbeat import heartbeat_interval, heartbeat_timeout
from graphexec.comm.rpc import RemoteError
from graphexec.errors import CommClosedError, GetTimeoutError, SchedulerLostError
from graphexec.graph.keys import key_name
from graphexec.graph.optimize import optimize
from graphexec.graph.task import Fused, Task, collect_refs
from graphexec.protocol import serialize as ser
from graphexec.protocol.tasks import FunctionRegistry, dumps_task

if TYPE_CHECKING:
    from graphexec.store.client import StoreClient

__all__ = ["Client"]

INLINE_PUT_BYTES = 100 * 1024
FETCH_ATTEMPTS = 5


class _KeyResult:
    __slots__ = ("status", "inline", "who_has", "exception", "origin", "nbytes", "store_nodes")

    def __init__(self) -> None:
        self.status = "pending"
        self.inline: list[bytes] | None = None
        self.who_has: list[str] = []
        self.store_nodes: list[list[str]] = []
        self.exception: dict[str, Any] | None = None
        self.origin = ""
        self.nbytes = 0


class Client:
    def __init__(self, scheduler_address: str, *, token: str, eager: bool = False) -> None:
        self.scheduler_address = scheduler_address
        self.token = token
        self.eager = eager
        self.id = f"client-{uuid.uuid4().hex[:12]}"
        self.functions = FunctionRegistry()
        self._demands: dict[Any, dict[str, float]] = {}
        self._sent_functions: set[str] = set()
        self._lock = threading.RLock()
        self._counts: dict[str, int] = {}
        self._submitted: set[str] = set()
        self._results: dict[str, _KeyResult] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._release_queue: list[str] = []
        self._rids = itertools.count()
        self._responses: dict[int, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._comm: Comm | None = None
        self._batched: BatchedSend | None = None
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        #: when the scheduler was last heard from (monotonic)
        self._last_heard = time.monotonic()
        self._pool = ConnectionPool(token)
        #: this machine's node store, when the client runs on a node of the cluster;
        #: attached on first use (large put/get), so init() does not pay for it
        self._store: StoreClient | None = None
        self._store_candidates: list[tuple[str, str]] = []
        #: inside a worker: the worker's own store connection, made on first use
        self.store_factory: Callable[[], StoreClient | None] | None = None
        self._lost: BaseException | None = None
        self._closed = False
        #: a task blocking in get (nested tasks) lends its CPU; no-op outside workers
        self.on_block: Callable[[bool], None] | None = notify_blocked
        #: keys whose value another part of this process produces (actor results) ->
        #: the object that answers for them (``publish``, ``escaped``, ``released``)
        self.owned: dict[str, Any] = {}
        #: handlers for scheduler ops other than results (``actor-info``), lock held
        self.op_handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        #: per-client state of higher layers (the actor caller), made on first use
        self.extensions: dict[str, Any] = {}
        #: owners of keys, closed with the client
        self.owners: list[Any] = []
        self.namespace = "default"

    # ------------------------------------------------------------------ lifecycle

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Run the client's loop on its own daemon thread and connect (driver)."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name="graphexec-client-io", daemon=True
        )
        self._thread.start()
        self._loop = loop
        try:
            asyncio.run_coroutine_threadsafe(self.start_async(), loop).result(timeout)
        except BaseException:
            self._stop_thread()
            raise

    async def start_async(self) -> None:
        """Connect on the running loop (used directly inside workers)."""
        self._loop = asyncio.get_running_loop()
        self._comm = await connect(self.scheduler_address, token=self.token)
        self._batched = BatchedSend(self._comm)
        self._batched.send({"op": "register-client", "client": self.id})
        self._last_heard = time.monotonic()
        self._reader = asyncio.ensure_future(self._read())
        self._heartbeat_task = asyncio.ensure_future(self._heartbeat())

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        if self._loop is not None and self._loop.is_running() and self._thread is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.close_async(), self._loop).result(timeout)
        self._closed = True
        self._stop_thread()

    async def close_async(self) -> None:
        self._closed = True
        for owner in self.owners:
            owner.close()
        if self._batched is not None:
            self._flush_releases()
            await self._batched.close(timeout=1.0)
        if self._comm is not None:
            await self._comm.close()
        for task in (self._reader, self._heartbeat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self._pool.close()
        if self._store is not None:
            await self._store.close()
        self._fail_all(SchedulerLostError("the client was closed"))

    def _stop_thread(self) -> None:
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._thread = None

    # ------------------------------------------------------------------ refcounts

    def _incref(self, key: str) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def _decref(self, key: str) -> None:
        with self._lock:
            n = self._counts.get(key, 0) - 1
            if n > 0:
                self._counts[key] = n
                return
            self._counts.pop(key, None)
            self._results.pop(key, None)
            if self.owned:
                owner = self.owned.pop(key, None)
                if owner is not None:
                    owner.released(key)
            if key in self._submitted:
                self._submitted.discard(key)
                self._release_queue.append(key)
                if len(self._release_queue) == 1 and self._loop is not None:
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(self._flush_releases)

    def _flush_releases(self) -> None:
        with self._lock:
            keys, self._release_queue = self._release_queue, []
        if keys and self._batched is not None and not self._lost:
            with contextlib.suppress(CommClosedError):
                self._batched.send({"op": "release-keys", "keys": keys})

    # ------------------------------------------------------------------ submission

    def submit(self, refs: Iterable[ObjectRef[Any]]) -> None:
        """Send the not-yet-submitted graph behind ``refs`` to the scheduler."""
        self._check_alive()
        graph: dict[str, Any] = {}
        lazy: list[LazyRef] = []
        external: list[str] = []
        roots: list[str] = []
        stack: list[Any] = []
        refs_list = list(refs)
        publish: list[str] = []
        with self._lock:
            for ref in refs_list:
                roots.append(ref.key)
                stack.append(ref)
            n_roots = len(stack)
            while stack:
                is_root = len(stack) <= n_roots
                ref = stack.pop()
                if is_root:
                    n_roots -= 1
                key = ref.key
                if key in graph or key in self._submitted:
                    if isinstance(ref, LazyRef):
                        lazy.append(ref)
                    continue
                node = ref._node
                if node is None:
                    if key in self.owned:
                        if not is_root:  # an actor's result as a task's input
                            publish.append(key)
                    elif key not in self._results:
                        external.append(key)
                    continue
                graph[key] = node
                if isinstance(ref, LazyRef):
                    lazy.append(ref)
                for dep in _lazy_refs_of(node):
                    stack.append(dep)
        if external:
            self._want(external)
        if not graph:
            return
        # keys this process still references once the graph's own lazy refs are gone
        consumed = collections.Counter(ref.key for ref in lazy)
        with self._lock:
            wants = [k for k in graph if self._counts.get(k, 0) - consumed[k] > 0]
            created = [k for k in wants if k not in self._results]
            self._submitted.update(wants)
            for key in wants:
                self._results.setdefault(key, _KeyResult())
        optimized, priorities = optimize(graph, wants)
        tasks = [self._encode(node, priorities.get(key, 0)) for key, node in optimized.items()]
        functions = {
            fid: blob
            for fid, blob in self.functions.blobs.items()
            if fid not in self._sent_functions
        }
        problem = _graph_size_problem(tasks, functions)
        if problem:  # as if never submitted: the refs stay lazy, to submit in parts
            with self._lock:
                self._submitted.difference_update(wants)
                for key in created:
                    self._results.pop(key, None)
            raise ValueError(problem)
        self._sent_functions.update(functions)
        for key in publish:  # before the graph, on the same connection: in order
            owner = self.owned.get(key)
            if owner is not None:
                owner.publish([key])
        self._send({"op": "update-graph", "tasks": tasks, "wants": wants, "functions": functions})
        # only now: releases these cause must reach the scheduler after the graph does
        for lazy_ref in lazy:
            lazy_ref.consume()
        for ref in refs_list:
            ref._node = None  # submitted: the scheduler holds the graph now

    def _encode(self, node: Any, priority: int) -> dict[str, Any]:
        last = node.nodes[-1] if isinstance(node, Fused) else node
        inner = node.nodes if isinstance(node, Fused) else (node,)
        fids = []
        for n in inner:
            if isinstance(n, Task):
                fid = self.functions.lookup(n.func)
                if fid is not None and fid not in fids:
                    fids.append(fid)
        options = last.options
        demand = self._demands.get(options)
        if demand is None:
            demand = self._demands[options] = options.demand()
        return {
            "key": node.key,
            "payload": dumps_task(node, self.functions),
            "deps": list(node.dependencies),
            "fids": fids,
            "prefix": key_name(node.key),
            "priority": priority,
            "demand": demand,
            "retries": options.max_retries,
        }

    def _want(self, keys: list[str]) -> None:
        with self._lock:
            keys = [k for k in keys if k not in self._submitted]
            self._submitted.update(keys)
            for key in keys:
                self._results.setdefault(key, _KeyResult())
        if keys:
            self._send({"op": "want-keys", "keys": keys})

    def escaped(self, key: str) -> None:
        """A ref to ``key`` is being pickled (it leaves this process)."""
        owner = self.owned.get(key)
        if owner is not None:
            owner.escaped(key)

    @staticmethod
    def _new_result() -> _KeyResult:
        return _KeyResult()

    def _on_done(self, keys: list[str], callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the thread that completes the last key) once all are done."""
        with self._lock:
            pending = [
                k
                for k in dict.fromkeys(keys)
                if (r := self._results.get(k)) is not None and r.status == "pending"
            ]
            if pending:
                waiter = _Waiter(len(pending), callback)
                for key in pending:
                    self._waiters.setdefault(key, []).append(waiter)
                owners = {id(o): o for k in pending if (o := self.owned.get(k)) is not None}
        if pending:
            for owner in owners.values():
                owner.urge(pending)  # results nobody reads on their own thread
            return
        callback()

    def offer_stores(self, candidates: list[tuple[str, str]]) -> None:
        """``(address, node_id)`` of stores that may be on this machine; used lazily."""
        self._store_candidates = list(candidates)

    @property
    def store(self) -> StoreClient | None:
        if self._store is None and self.store_factory is not None:
            return self.store_factory()
        if self._store is None and self._store_candidates and not self._in_loop_thread():
            candidates, self._store_candidates = self._store_candidates, []
            for address, node_id in candidates:
                if self._run(self.attach_store(address, node_id)):
                    break
        return self._store

    @store.setter
    def store(self, value: StoreClient | None) -> None:
        self._store = value

    async def attach_store(self, address: str, node_id: str) -> bool:
        """Use the store at ``address`` if its arena is on this machine (same node)."""
        from graphexec.store.client import StoreClient

        store = StoreClient(address, token=self.token, node_id=node_id)
        try:
            await store.connect()
        except FileNotFoundError:  # that node's arena is on another machine
            await store.close()
            return False
        self._store = store
        return True

    def put(self, value: Any) -> ObjectRef[Any]:
        self._check_alive()
        frames = ser.serialize(value)
        key = f"put-{uuid.uuid4().hex}"
        nbytes = ser.frames_nbytes(frames)
        store = self.store
        if store is not None and nbytes > INLINE_PUT_BYTES:
            store.put_frames(key, frames)  # straight into shared memory, no copy over TCP
            ref: ObjectRef[Any] = ObjectRef(key, None, self)
            with self._lock:
                self._submitted.add(key)
                result = self._results[key] = _KeyResult()
                result.status = "memory"
                result.nbytes = nbytes
                result.store_nodes = [[store.node_id, store.address]]
            self._send({"op": "put", "key": key, "node": store.node_id, "nbytes": nbytes})
            return ref
        # over the connection: every frame must fit in a message
        if len(frames) >= framing.MAX_FRAMES:  # too many buffers: pickle them in-band
            frames = [ser.serialize_small(value)]
        largest = max(memoryview(f).nbytes for f in frames)
        if largest > framing.MAX_FRAME_BYTES:
            raise ValueError(
                f"cannot put this {type(value).__name__}: it holds a buffer of {largest} "
                f"bytes, and one message frame holds at most {framing.MAX_FRAME_BYTES} "
                "(graphexec.comm.framing.MAX_FRAME_BYTES). Put it in smaller pieces (for "
                "example one put per numpy.array_split chunk), or run this driver on a "
                "node of the cluster, where put writes to the node's object store"
            )
        ref = ObjectRef(key, None, self)
        with self._lock:
            self._submitted.add(key)
            result = self._results[key] = _KeyResult()
            if nbytes <= INLINE_PUT_BYTES:
                result.status = "memory"
                result.inline = [bytes(f) for f in frames]
                result.nbytes = nbytes
        op = {"op": "put", "key": key, "inline_limit": INLINE_PUT_BYTES}
        batched = self._batched
        if nbytes > INLINE_PUT_BYTES and batched is not None and not self._in_loop_thread():
            # wait while the connection's queue is full (GRAPHEXEC_MAX_PENDING_BYTES)
            if not self._lost:
                with contextlib.suppress(CommClosedError):
                    self._run(batched.send_when_room(op, frames))
        else:
            self._send(op, frames)
        return ref

    # ------------------------------------------------------------------ results

    def gather(self, refs: Sequence[ObjectRef[Any]], timeout: float | None = None) -> list[Any]:
        """Submit, wait for every ref, return the values (raising the first error)."""
        self.submit(refs)
        keys = [r.key for r in refs]
        self._wait_for(keys, len(set(keys)), timeout)
        return [self._value(key) for key in keys]

    def wait(
        self, refs: Sequence[ObjectRef[Any]], num_returns: int, timeout: float | None
    ) -> tuple[list[str], list[str]]:
        """Keys done (in completion order) once ``num_returns`` are, or at the timeout."""
        self.submit(refs)
        keys = list(dict.fromkeys(r.key for r in refs))
        with self._lock:
            already = [
                k for k in keys if k in self._results and self._results[k].status != "pending"
            ]
        waiter = self._wait_for(keys, num_returns, timeout, raise_timeout=False)
        done = already + (waiter.order if waiter is not None else [])
        done = done[:num_returns]
        done_set = set(done)
        return done, [k for k in keys if k not in done_set]

    def _wait_for(
        self, keys: list[str], target: int, timeout: float | None, *, raise_timeout: bool = True
    ) -> _Waiter | None:
        with self._lock:
            pending = []
            for key in dict.fromkeys(keys):
                result = self._results.get(key)
                if result is None or result.status == "pending":
                    pending.append(key)
            done_count = len(set(keys)) - len(pending)
            if done_count >= target:
                return None
            waiter = _Waiter(target - done_count)
            for key in pending:
                self._waiters.setdefault(key, []).append(waiter)
        self._check_alive()
        blocked = self.on_block is not None
        if blocked:
            self.on_block(True)  # type: ignore[misc]
        owner = self.owned.get(pending[0]) if self.owned else None
        try:
            if owner is not None:  # actor results: the actor caller may read them here
                finished = owner.wait(pending, waiter, timeout)
            else:
                finished = waiter.event.wait(timeout)
        finally:
            if blocked:
                self.on_block(False)  # type: ignore[misc]
        if self._lost is not None:
            raise SchedulerLostError(str(self._lost)) from self._lost
        if not finished:
            with self._lock:
                for key in pending:
                    lst = self._waiters.get(key)
                    if lst and waiter in lst:
                        lst.remove(waiter)
            if raise_timeout:
                raise GetTimeoutError(self._timeout_message(pending, timeout))
        return waiter

    def _timeout_message(self, pending: list[str], timeout: float | None) -> str:
        head = f"get() timed out after {timeout} s with {len(pending)} object(s) not ready"
        keys = pending[:5]
        with self._lock:
            local = {k: self.owned[k].explain(k) for k in keys if k in self.owned}
        try:
            asked = [k for k in keys if k not in local]
            reasons = self.request({"op": "explain-pending", "keys": asked}, timeout=2)
        except Exception:  # the explanation is a courtesy; the timeout is the error
            reasons = {}
        reasons = {**local, **reasons}
        if not reasons:
            return head
        lines = [f"  {key}: {why}" for key, why in reasons.items()]
        return head + ":\n" + "\n".join(lines)

    def _value(self, key: str) -> Any:
        with self._lock:
            result = self._results.get(key)
        if result is None:
            raise errors.ObjectLostError(f"object {key} was released")
        if result.status == "erred":
            raise _make_error(result.exception or {}, result.origin or key)
        if result.inline is not None:
            return ser.deserialize(result.inline)
        if result.store_nodes:
            store = self.store
            if store is not None and any(n == store.node_id for n, _ in result.store_nodes):
                return ser.deserialize(store.get_frames(key))  # zero-copy, read-only
            frames = self._run(self._fetch_from_store(key, [a for _, a in result.store_nodes]))
            return ser.deserialize(frames)
        frames = self._run(self._fetch(key, result.who_has))
        return ser.deserialize(frames)

    async def _fetch_from_store(self, key: str, addresses: list[str]) -> list[Any]:
        from graphexec.store.client import read_remote

        last: BaseException | None = None
        for address in addresses:
            try:
                return await read_remote(key, address, self.token)
            except (CommClosedError, OSError, RemoteError) as err:
                last = err
        raise errors.ObjectLostError(f"object {key} could not be read from {addresses}: {last}")

    async def _fetch(self, key: str, who_has: list[str]) -> list[Any]:
        last: BaseException | None = None
        for attempt in range(FETCH_ATTEMPTS):
            for address in who_has:
                try:
                    ops, frames = await self._pool.request(
                        address, {"op": "get-data", "keys": [key]}
                    )
                except (CommClosedError, OSError) as err:
                    last = err
                    continue
                for op, op_frames in split_frames(ops, frames):
                    if op.get("key") == key and op.get("status") == "ok":
                        return op_frames
            # a put may still be on its way to the worker that will hold it
            await asyncio.sleep(0.01 * (attempt + 1))
        raise errors.ObjectLostError(
            f"object {key} could not be fetched from {who_has}: {last or 'not found'}"
        )

    # ------------------------------------------------------------------ scheduler link

    async def _read(self) -> None:
        assert self._comm is not None
        try:
            while True:
                ops, _frames = await self._comm.read()
                self._last_heard = time.monotonic()
                self._handle_batch(ops)
        except CommClosedError as err:
            if not self._closed and self._lost is None:
                self._fail_all(
                    SchedulerLostError(
                        f"lost the connection to the scheduler at {self.scheduler_address}: {err}"
                    )
                )

    async def _heartbeat(self) -> None:
        """Keep the scheduler talking; silence past the timeout means it is lost."""
        interval, timeout = heartbeat_interval(), heartbeat_timeout()
        checked = time.monotonic()
        while not self._closed and self._lost is None:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - checked > max(3 * interval, timeout / 2):
                self._last_heard = now  # this loop itself stalled: the silence was ours
            checked = now
            silent = now - self._last_heard
            if silent > timeout:
                self._fail_all(
                    SchedulerLostError(
                        f"the scheduler at {self.scheduler_address} has not answered for "
                        f"{silent:.0f} s (GRAPHEXEC_HEARTBEAT_TIMEOUT={timeout:g}): it is "
                        "frozen, unreachable or gone"
                    )
                )
                if self._comm is not None:
                    self._comm.abort()
                return
            if silent >= interval and self._batched is not None:
                with contextlib.suppress(CommClosedError):
                    self._batched.send({"op": "sync", "rid": -1})  # answered, then ignored

    def _handle_batch(self, ops: list[dict[str, Any]]) -> None:
        with self._lock:
            for op in ops:
                name = op.get("op")
                if name == "key-in-memory" or name == "key-erred":
                    self._on_key(op)
                elif name == "response":
                    fut = self._responses.pop(op["rid"], None)
                    if fut is not None and not fut.done():
                        if "error" in op:
                            fut.set_exception(RuntimeError(op["error"]))
                        else:
                            fut.set_result(op.get("result"))
                else:
                    handler = self.op_handlers.get(name) if isinstance(name, str) else None
                    if handler is not None:
                        handler(op)

    def _on_key(self, op: dict[str, Any]) -> None:
        key = op["key"]
        result = self._results.get(key)
        if result is None:
            return  # released meanwhile
        if op["op"] == "key-in-memory":
            result.status = "memory"
            result.inline = op.get("inline")
            result.who_has = op.get("who_has", [])
            result.store_nodes = op.get("store_nodes", [])
            result.nbytes = op.get("nbytes", 0)
        else:
            result.status = "erred"
            result.exception = op.get("exception")
            result.origin = op.get("origin", key)
        for waiter in self._waiters.pop(key, ()):
            waiter.order.append(key)
            waiter.remaining -= 1
            if waiter.remaining <= 0:
                waiter.event.set()
                if waiter.callback is not None:
                    waiter.callback()

    def _fail_all(self, err: BaseException) -> None:
        self._lost = err
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
            self._waiters.clear()
        for waiter in waiters:
            waiter.event.set()
        for fut in list(self._responses.values()):
            if not fut.done():
                fut.set_exception(SchedulerLostError(str(err)))
        self._responses.clear()

    def _check_alive(self) -> None:
        if self._lost is not None:
            raise SchedulerLostError(str(self._lost)) from self._lost
        if self._closed:
            raise RuntimeError("this graphexec client was shut down; call graphexec.init()")

    def _send(self, op: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        assert self._loop is not None
        batched = self._batched

        def send() -> None:
            if batched is not None and not self._lost:
                with contextlib.suppress(CommClosedError):
                    batched.send(op, frames)

        if self._in_loop_thread():
            send()
        else:
            self._loop.call_soon_threadsafe(send)

    def _in_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        assert self._loop is not None
        if self._in_loop_thread():
            coro.close()
            raise RuntimeError("blocking graphexec calls cannot run on the event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def run_on_loop(self, coro: Any, timeout: float | None = 30.0) -> Any:
        """Run a coroutine on the client's loop from a user thread and return its result."""
        return self._run(coro, timeout)

    def request(self, op: dict[str, Any], timeout: float | None = 10.0) -> Any:
        """Send an op with a request id and wait for the scheduler's response."""
        self._check_alive()
        assert self._loop is not None
        rid = next(self._rids)
        op["rid"] = rid

        async def ask() -> Any:
            fut = asyncio.get_running_loop().create_future()
            self._responses[rid] = fut
            self._send(op)
            return await fut

        start = time.monotonic()
        try:
            return self._run(asyncio.wait_for(ask(), timeout))
        except (asyncio.TimeoutError, TimeoutError) as err:
            waited = time.monotonic() - start
            raise GetTimeoutError(f"no answer to {op['op']!r} in {waited:.1f} s") from err


def _graph_size_problem(tasks: list[dict[str, Any]], functions: dict[str, bytes]) -> str:
    """Why one ``update-graph`` of ``tasks`` would be too large ('' if it is not); sized
    as the scheduler sizes it (payloads, keys, dependency keys, functions)."""
    split = (
        "Submit the work in parts: get (or wait for) the refs of one part, then build "
        "the next; or give each task more to do (a task per chunk of data, not per item)"
    )
    limit = framing.max_graph_tasks()
    if len(tasks) > limit:
        return (
            f"cannot submit a graph of {len(tasks)} tasks at once: at most {limit} tasks "
            f"go in one submission (GRAPHEXEC_MAX_GRAPH_TASKS). {split}."
        )
    nbytes = sum(len(k) + len(v) for k, v in functions.items())
    for task in tasks:
        nbytes += len(task["key"]) + len(task["payload"]) + sum(map(len, task["deps"]))
    limit = framing.max_graph_bytes()
    if nbytes > limit:
        return (
            f"cannot submit a graph of {nbytes} bytes (task arguments, keys and functions) "
            f"at once: at most {limit} go in one submission (GRAPHEXEC_MAX_GRAPH_BYTES). "
            f"Pass large arguments as refs from ge.put, not inline. {split}."
        )
    return ""


def _lazy_refs_of(node: Any) -> list[Any]:
    """The counted refs (user ObjectRefs, LazyRefs) in a node's arguments."""
    out: list[Any] = []
    for n in node.nodes if isinstance(node, Fused) else (node,):
        if isinstance(n, Task):
            refs = collect_refs(n.args)
            if n.kwargs:
                collect_refs(n.kwargs, refs)
            out += [r for r in refs if isinstance(r, (LazyRef, ObjectRef))]
    return out


_ERRORS: dict[str, type[Exception]] = {
    "TaskCancelledError": errors.TaskCancelledError,
    "WorkerCrashedError": errors.WorkerCrashedError,
    "ObjectLostError": errors.ObjectLostError,
    "KeyError": errors.ObjectLostError,
    "ActorDiedError": errors.ActorDiedError,
    "ActorUnavailableError": errors.ActorUnavailableError,
}


def _make_error(exc: dict[str, Any], origin: str) -> BaseException:
    if exc.get("constructor"):
        inner = _make_error({k: v for k, v in exc.items() if k != "constructor"}, origin)
        died = errors.ActorDiedError(
            f"the actor died because its constructor raised {type(inner).__name__}:\n{inner}"
        )
        died.__cause__ = inner
        died.cause = inner  # type: ignore[attr-defined]
        return died
    pickled = exc.get("pickled")
    if pickled:
        try:
            cause, tb = ser.loads_exception(pickled)
        except Exception:  # the class may not import here: keep the text
            cause, tb = (
                RuntimeError(f"{exc.get('type')}: {exc.get('message')}"),
                exc.get("traceback", ""),
            )
        return errors.TaskError(
            exc.get("function", ""), tb, cause, key=origin
        ).as_instanceof_cause()
    cls = _ERRORS.get(exc.get("type", ""), errors.GraphexecError)
    return cls(exc.get("message", "task failed"))
