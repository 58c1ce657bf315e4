"""The caller's side of actors: one link per actor, method calls sent straight to its worker.

Each process that holds handles has one :class:`ActorCaller` (on its client). Per actor it
keeps an :class:`_ActorLink`: what the scheduler last said about the actor
(``actor-info``: status, address, incarnation, cause), a direct connection to the actor's
own socket once it is alive, the calls not sent yet (in order) and the calls sent and not
answered. The scheduler is not on the path of a call.

Threads (no event loop on the path of a call): the user's thread writes a call straight
to the actor's socket when nothing is queued ahead of it (``comm/blocking.py``), and a
user thread blocked in ``get``/``wait`` on calls of one actor reads that actor's socket
itself (it *leads*), so a call, get, call, get loop never hands off between threads. One
reader thread per link reads when no user thread does: at once when someone waits
another way (``urge``: ``wait`` on several actors, a callback, a published key), else once
calls have gone unread for ``READER_GRACE`` seconds (fire-and-forget calls), so the actor
never blocks on a full socket. One sender thread per caller connects links and sends
queued calls once their inputs are ready. Lock order: a link's ``send_lock``, then the
client's lock, then the link's ``cond`` (never held while taking another lock).

Order: calls from this process to one actor are sent in the order they were made, on one
connection, and a threaded actor with ``max_concurrency=1`` runs them in that order. A
call whose ref arguments are not ready yet holds back the calls behind it.

Arguments: refs are dependencies. The caller waits (on its loop, not the user's thread)
until they are done, then sends their locations with the call (inline bytes, this node's
store, another store or worker), as the scheduler does for tasks. Lazy refs are submitted
first. A failed input fails the call with the input's error.

Results belong to the caller: they come back inline (or, when large, as a location in the
actor's node store). The scheduler only learns of a result when it must track it
(*publishing*): when the result lives in a store (so the cluster frees it when released),
when a lazy task depends on it, or when its ref is pickled to another process. A result
published before it is ready is ``external`` at the scheduler until the caller forwards
it (``put``) or its error (``key-failed``).

Failure: when the actor's process dies, calls in flight are resent after the restart if
``max_task_retries`` allows, else fail with ``ActorUnavailableError`` (the actor lives on,
this call was lost); calls not sent yet wait for the restart. A dead actor fails every
pending and later call with ``ActorDiedError`` carrying its cause.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from graphexec.actors.spin import read_soon
from graphexec.client.refs import ObjectRef
from graphexec.comm.blocking import BlockingComm, blocking_connect
from graphexec.errors import CommClosedError, ProtocolError
from graphexec.graph.keys import new_key, return_keys
from graphexec.graph.task import TaskRef, collect_refs
from graphexec.protocol import serialize as ser

if TYPE_CHECKING:
    from graphexec.client.client import Client

__all__ = ["ActorCaller", "caller_of"]

logger = logging.getLogger("graphexec.actors")

RECONNECT_DELAY = 0.05
#: calls in flight that no thread reads are read by the link's reader after this long
READER_GRACE = 0.005
#: a reader that waits for a leading user thread looks again after this long (safety net)
LEADER_CHECK = 0.5
#: a leading thread checks for a lost scheduler (and its timeout) this often
LEAD_SLICE = 0.1


_escapes = threading.local()


def caller_of(client: Client) -> ActorCaller:
    """The client's actor caller, made on first use."""
    caller = client.extensions.get("actors")
    if caller is None:
        with client._lock:
            caller = client.extensions.get("actors")
            if caller is None:
                caller = client.extensions["actors"] = ActorCaller(client)
    return caller  # type: ignore[no-any-return]


class _Call:
    __slots__ = ("key", "keys", "method", "frames", "deps", "dep_refs", "retries", "synced")

    def __init__(
        self,
        key: str,
        nreturns: int,
        method: str,
        frames: list[Any],
        dep_refs: list[TaskRef],
        retries: int,
        synced: bool,
    ) -> None:
        self.key = key
        self.keys = return_keys(key, nreturns)
        self.method = method
        self.frames = frames
        self.deps = list(dict.fromkeys(r.key for r in dep_refs))
        #: the refs themselves: they keep their objects alive until the call is answered
        self.dep_refs = dep_refs
        self.retries = retries
        #: False while refs this call carries are being published (scheduler round trip)
        self.synced = synced


class _ActorLink:
    __slots__ = (
        "actor_id", "status", "address", "local_address", "node_id", "incarnation", "cause", "max_task_retries",
        "queue", "inflight", "lost", "comm", "connecting", "handles", "waiting",
        "ctor_refs", "class_name", "send_lock", "reader", "pending_reason",
        "cond", "reading", "urgent", "idle", "active", "reads", "spin_misses",
    )  # fmt: skip

    def __init__(self, actor_id: str) -> None:
        self.actor_id = actor_id
        self.status = "unknown"
        self.address = ""
        #: the actor's socket from its own machine (tried first), or ''
        self.local_address = ""
        self.node_id = ""
        self.incarnation = 0
        self.cause: dict[str, Any] | None = None
        self.max_task_retries = 0
        self.class_name = "Actor"
        #: why the scheduler has not placed the actor yet ('' once placed)
        self.pending_reason = ""
        self.queue: collections.deque[_Call] = collections.deque()
        self.inflight: dict[str, _Call] = {}
        #: calls sent on a connection that broke, waiting for the scheduler's verdict
        self.lost: list[_Call] = []
        self.comm: BlockingComm | None = None
        self.reader: threading.Thread | None = None
        #: held while deciding to send and sending: keeps the order of calls on the wire
        self.send_lock = threading.Lock()
        self.connecting = False
        #: live ActorHandle objects for this actor in this process
        self.handles = 0
        #: the call whose inputs the link waits for (one callback at a time)
        self.waiting: _Call | None = None
        #: constructor ref arguments, kept alive until the actor is constructed
        self.ctor_refs: list[Any] = []
        #: who reads the connection (a leading user thread or the reader): guards the
        #: four fields below; a leaf lock
        self.cond = threading.Condition(threading.Lock())
        #: a thread is reading the connection now
        self.reading = False
        #: someone waits for results without reading: the reader reads at once
        self.urgent = False
        #: the reader sleeps until notified (nothing in flight)
        self.idle = False
        #: when a call was last sent or a leader last stopped reading (monotonic)
        self.active = 0.0
        #: reads by leaders, and spins in a row that ended without an answer
        self.reads = 0
        self.spin_misses = 0

    def busy(self) -> bool:
        return bool(self.queue or self.inflight or self.lost)


class ActorCaller:
    """Actor links of one client (one process)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.links: dict[str, _ActorLink] = {}
        #: result key -> base key of the call that makes it
        self._base: dict[str, str] = {}
        #: result key -> the link of the actor that makes it
        self._link_of: dict[str, _ActorLink] = {}
        #: keys published while pending: forward their result to the scheduler on arrival
        self._published: set[str] = set()
        self._kicks: queue.SimpleQueue[_ActorLink | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._closed = False
        client.op_handlers["actor-info"] = self._on_actor_info
        client.owners.append(self)

    # ------------------------------------------------------------------ user threads

    def link(self, actor_id: str, *, watch: bool = True) -> _ActorLink:
        with self.client._lock:
            link = self.links.get(actor_id)
            if link is None:
                link = self.links[actor_id] = _ActorLink(actor_id)
                if watch:
                    self.client._send({"op": "watch-actor", "actor": actor_id})
            return link

    def handle_added(self, actor_id: str) -> None:
        link = self.link(actor_id)
        with self.client._lock:
            link.handles += 1

    def handle_dropped(self, actor_id: str) -> None:
        with self.client._lock:
            link = self.links.get(actor_id)
            if link is None:
                return
            link.handles -= 1
            if link.handles <= 0:
                self._maybe_unlink(link)

    def call(
        self,
        actor_id: str,
        class_name: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        nreturns: int,
    ) -> list[ObjectRef[Any]]:
        """Send ``method(*args, **kwargs)`` to the actor; returns the result refs at once."""
        client = self.client
        client._check_alive()
        link = self.link(actor_id)
        key = new_key(f"{class_name}.{method}")
        keys = return_keys(key, nreturns)
        dep_refs = collect_refs(args)
        if kwargs:
            collect_refs(kwargs, dep_refs)
        if dep_refs:
            self._prepare_inputs(dep_refs)
        escaped, frames = self.encode_arguments(args, kwargs)
        refs: list[ObjectRef[Any]] = [ObjectRef(k, None, client) for k in keys]
        call = _Call(key, nreturns, method, frames, dep_refs, link.max_task_retries, not escaped)
        with link.send_lock:
            with client._lock:
                for k in keys:
                    client._results[k] = client._new_result()
                    client.owned[k] = self
                    self._base[k] = key
                    self._link_of[k] = link
                if link.status == "dead":
                    self._fail(call, link.cause or _died(f"actor {actor_id} is dead"))
                    return refs
                direct = link.comm is not None and not link.queue and call.synced
                locations: dict[str, Any] | None = {}
                if direct and call.deps:
                    locations, _ = self._locations(call, link)
                    direct = locations is not None
                if direct:
                    link.inflight[key] = call
                else:
                    link.queue.append(call)
            if direct:
                assert link.comm is not None and locations is not None
                self._send_call(link, link.comm, call, locations)
                return refs
        if escaped:
            self._sync_then(call, link)
        else:
            self._kick(link)
        return refs

    def _prepare_inputs(self, dep_refs: list[TaskRef]) -> None:
        """Submit lazy inputs; ask the scheduler about refs this process did not make."""
        client = self.client
        lazy = [r for r in dep_refs if isinstance(r, ObjectRef) and r._node is not None]
        if lazy:
            client.submit(lazy)
        with client._lock:
            foreign = [r.key for r in dep_refs if r.key not in client._results]
        if foreign:
            client._want(foreign)

    def encode_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], list[Any]]:
        """Pickle arguments; top-level refs become plain refs (resolved to values there).

        Returns the owned keys that nested refs carried out of this process (published
        now), and the frames.
        """
        top_args = tuple(TaskRef(a.key) if isinstance(a, TaskRef) else a for a in args)
        top_kwargs = {k: TaskRef(v.key) if isinstance(v, TaskRef) else v for k, v in kwargs.items()}
        _escapes.keys = []
        try:
            frames = ser.serialize((top_args, top_kwargs))
            escaped: list[str] = _escapes.keys
        finally:
            _escapes.keys = None
        return escaped, frames

    # ------------------------------------------------------------------ publishing

    def escaped(self, key: str) -> None:
        """A ref to an owned key is being pickled: the scheduler must know the key."""
        collector = getattr(_escapes, "keys", None)
        if collector is not None:
            collector.append(key)
        self.publish([key])

    def publish(self, keys: list[str]) -> None:
        """Make owned keys known to the scheduler (in order with what this thread sends)."""
        client = self.client
        expect: list[str] = []
        puts: list[tuple[dict[str, Any], list[Any]]] = []
        with client._lock:
            for key in keys:
                if key in client._submitted or key in self._published:
                    continue
                result = client._results.get(key)
                if result is None:
                    continue
                client._submitted.add(key)
                if result.status == "memory":
                    puts.append(self._put_op(key, result))
                else:
                    expect.append(key)
                    if result.status == "erred":
                        puts.append(
                            ({"op": "key-failed", "key": key, "exception": result.exception}, [])
                        )
                    else:
                        self._published.add(key)
        if expect:
            client._send({"op": "expect-keys", "keys": expect})
        for op, frames in puts:
            client._send(op, frames)

    @staticmethod
    def _put_op(key: str, result: Any) -> tuple[dict[str, Any], list[Any]]:
        if result.store_nodes:
            node_id = result.store_nodes[0][0]
            return {"op": "put", "key": key, "node": node_id, "nbytes": result.nbytes}, []
        frames = list(result.inline or [])
        return {"op": "put", "key": key, "inline_limit": 1 << 62}, frames

    def explain(self, key: str) -> str:
        """Why the result ``key`` is not here yet, in words (client lock held)."""
        base = self._base.get(key, key)
        for link in self.links.values():
            if any(c.key == base for c in link.queue):
                where = "queued in this process"
            elif base in link.inflight:
                where = "running on the actor"
            elif any(c.key == base for c in link.lost):
                where = "lost with the actor's connection, waiting for news"
            else:
                continue
            reason = f"; {link.pending_reason}" if link.pending_reason else ""
            return f"a call to actor {link.class_name} ({link.status}{reason}), {where}"
        return "the result of an actor call"

    def released(self, key: str) -> None:
        """The last ref to ``key`` is gone (client lock held)."""
        self._published.discard(key)
        self._base.pop(key, None)
        self._link_of.pop(key, None)

    def _sync_then(self, call: _Call, link: _ActorLink) -> None:
        """Published refs ride in ``call``: send it once the scheduler has them."""

        def synced(_: Any = None) -> None:
            call.synced = True
            self._kick(link)

        client = self.client
        rid = next(client._rids)

        def ask() -> None:
            fut = client._loop.create_future()  # type: ignore[union-attr]
            client._responses[rid] = fut
            fut.add_done_callback(synced)
            client._send({"op": "sync", "rid": rid})

        assert client._loop is not None
        client._loop.call_soon_threadsafe(ask)

    # ------------------------------------------------------------------ sending

    def _kick(self, link: _ActorLink) -> None:
        """Have the sender thread connect ``link`` and send what is queued."""
        if self._sender is None:
            with self.client._lock:
                if self._sender is None and not self._closed:
                    self._sender = threading.Thread(
                        target=self._send_loop, name="graphexec-actor-sender", daemon=True
                    )
                    self._sender.start()
        self._kicks.put(link)

    def _send_loop(self) -> None:
        while True:
            link = self._kicks.get()
            if link is None or self._closed:
                return
            try:
                self._pump(link)
            except Exception:  # a bug of ours must not stop every actor's calls
                logger.exception("actor %s: sending calls failed", link.actor_id)

    def _pump(self, link: _ActorLink) -> None:
        """Send queued calls, in order, while the actor is alive and inputs are ready."""
        client = self.client
        if link.status != "alive":
            return
        if link.comm is None:
            self._connect(link)
            if link.comm is None:
                return
        with link.send_lock:
            comm = link.comm
            while comm is not None and not comm.closed:
                with client._lock:
                    if not link.queue or link.status != "alive":
                        return
                    call = link.queue[0]
                    if not call.synced:
                        return
                    locations, failed = self._locations(call, link)
                    if locations is None:
                        if failed is not None:
                            link.queue.popleft()
                            self._fail(call, failed[1], origin=failed[0])
                            continue
                        self._wait_inputs(call, link)
                        return
                    link.queue.popleft()
                    link.inflight[call.key] = call
                self._send_call(link, comm, call, locations)

    def _send_call(
        self, link: _ActorLink, comm: BlockingComm, call: _Call, locations: dict[str, Any]
    ) -> None:
        op = {
            "op": "actor-call",
            "key": call.key,
            "method": call.method,
            "nreturns": len(call.keys),
            "deps": locations,
            "nframes": len(call.frames),
        }
        # on a broken connection the reader thread moves the call to ``lost``
        with contextlib.suppress(CommClosedError):
            comm.send([op], call.frames)
        with link.cond:
            link.active = time.monotonic()
            if link.idle:
                link.cond.notify()

    def _locations(
        self, call: _Call, link: _ActorLink
    ) -> tuple[dict[str, Any] | None, tuple[str, dict[str, Any]] | None]:
        """Where each input is, or ``(None, None)`` while one is pending (lock held)."""
        results = self.client._results
        out: dict[str, Any] = {}
        for dep in call.deps:
            result = results.get(dep)
            if result is None or result.status == "pending":
                return None, None
            if result.status == "erred":
                return None, (result.origin or dep, result.exception or {})
            if result.inline is not None:
                out[dep] = ["inline", result.inline]
            elif result.store_nodes:
                if any(node == link.node_id for node, _ in result.store_nodes):
                    out[dep] = ["store"]
                else:
                    out[dep] = ["remote-store", [addr for _, addr in result.store_nodes]]
            else:
                out[dep] = ["remote", list(result.who_has)]
        return out, None

    def _wait_inputs(self, call: _Call, link: _ActorLink) -> None:
        if link.waiting is call:
            return
        link.waiting = call

        def ready() -> None:
            if link.waiting is call:
                link.waiting = None
            self._kick(link)

        self.client._on_done(call.deps, ready)

    def _connect(self, link: _ActorLink) -> None:
        """Connect to the actor's socket (sender thread); on failure ask the scheduler."""
        address, incarnation = link.address, link.incarnation
        try:
            comm = None
            if link.local_address:  # refused unless the actor is on this machine
                with contextlib.suppress(OSError):
                    comm = blocking_connect(link.local_address, self.client.token)
            if comm is None:
                comm = blocking_connect(address, self.client.token)
        except (OSError, CommClosedError, ProtocolError) as err:
            logger.info("actor %s: cannot connect to %s: %s", link.actor_id, address, err)
            time.sleep(RECONNECT_DELAY)
            with self.client._lock:
                self._ask_again(link)
            return
        with self.client._lock:
            if link.status != "alive" or link.incarnation != incarnation or self._closed:
                comm.close()
                return
            link.comm = comm
            link.reader = threading.Thread(
                target=self._read,
                args=(link, comm),
                name=f"graphexec-actor-link-{link.actor_id[-8:]}",
                daemon=True,
            )
            link.reader.start()
            if link.lost:  # the same process after a broken connection: resend or fail
                self._fail_lost(link)

    # ------------------------------------------------------------------ reading answers

    def wait(self, keys: list[str], waiter: Any, timeout: float | None) -> bool:
        """Block until ``waiter`` is done (``client._wait_for``); False at the timeout.

        When every key comes from one actor whose connection no other thread reads, this
        thread reads it (leads); otherwise the reader is urged and this thread sleeps.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        link = self._link_of.get(keys[0])
        if link is not None and all(self._link_of.get(k) is link for k in keys):
            with link.cond:
                lead = not link.reading and link.comm is not None
                if lead:
                    link.reading = True
            if lead:
                try:
                    self._lead(link, waiter, deadline)
                finally:
                    with link.cond:
                        link.reading = False
                        link.active = time.monotonic()
                        if link.inflight or link.urgent:
                            link.cond.notify()
                if waiter.event.is_set() or self.client._lost is not None:
                    return True
        self.urge(keys)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return bool(waiter.event.wait(remaining))

    def _lead(self, link: _ActorLink, waiter: Any, deadline: float | None) -> None:
        """Read ``link`` on this thread until the waiter is done, the deadline, or a break."""
        client = self.client
        while not waiter.event.is_set() and client._lost is None:
            comm = link.comm
            if comm is None or comm.closed:
                return
            step = LEAD_SLICE
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
                if step <= 0:
                    return
            try:
                batch = read_soon(link, comm, step)
            except (CommClosedError, ProtocolError, OSError):
                with client._lock:
                    if link.comm is comm:
                        self._link_broken(link)
                return
            if batch:
                self._process(link, batch)

    def urge(self, keys: list[str]) -> None:
        """Someone waits on ``keys`` without reading: their links' readers read at once."""
        links = {id(link): link for k in keys if (link := self._link_of.get(k)) is not None}
        for link in links.values():
            with link.cond:
                link.urgent = True
                link.cond.notify()

    def _read(self, link: _ActorLink, comm: BlockingComm) -> None:
        """The link's reader thread: reads while no user thread does (see the docstring)."""
        client = self.client
        keep = False
        try:
            while True:
                with link.cond:
                    while True:
                        if comm.closed or self._closed:
                            return
                        if not link.inflight:
                            keep = False
                            if not link.busy():
                                link.urgent = False
                            link.idle = True
                            link.cond.wait()
                            link.idle = False
                        elif link.reading:
                            link.cond.wait(LEADER_CHECK)
                        else:
                            quiet = time.monotonic() - link.active
                            if keep or link.urgent or quiet >= READER_GRACE:
                                break
                            link.cond.wait(READER_GRACE - quiet)
                    link.reading = keep = True
                try:
                    self._process(link, comm.read_batch())
                finally:
                    with link.cond:
                        link.reading = False
        except (CommClosedError, ProtocolError, OSError):
            with client._lock:
                if link.comm is comm:
                    self._link_broken(link)

    def _process(self, link: _ActorLink, batch: list[tuple[Any, list[bytes]]]) -> None:
        client = self.client
        with client._lock:
            for header, _ in batch:
                for op in header:
                    self._answered(link, op)
                client._handle_batch(header)

    def _answered(self, link: _ActorLink, op: dict[str, Any]) -> None:
        """A result arrived (client lock held): retire the call, publish if needed."""
        key = op.get("key", "")
        base = self._base.get(key, key)
        call = link.inflight.get(base)
        if call is not None and key == call.keys[-1]:
            del link.inflight[base]  # results of one call arrive together, in order
        client = self.client
        still_wanted = key in client._results
        if op.get("op") == "key-in-memory" and op.get("store_nodes"):
            # in a store: the cluster must know it to free it when the ref goes
            node_id = op["store_nodes"][0][0]
            client._submitted.add(key)
            self._published.discard(key)
            client._send({"op": "put", "key": key, "node": node_id, "nbytes": op["nbytes"]})
            if not still_wanted:
                client._submitted.discard(key)
                client._send({"op": "release-keys", "keys": [key]})
        elif key in self._published:
            self._published.discard(key)
            if op.get("op") == "key-in-memory":
                client._send(
                    {"op": "put", "key": key, "inline_limit": 1 << 62}, list(op.get("inline") or [])
                )
            else:
                client._send({"op": "key-failed", "key": key, "exception": op.get("exception")})
        if call is not None and link.handles <= 0 and not link.busy():
            self._maybe_unlink(link)

    # ------------------------------------------------------------------ failures

    def _link_broken(self, link: _ActorLink, *, ask: bool = True) -> None:
        """The connection to the actor broke (lock held): ask the scheduler what happened."""
        _close_comm(link)
        link.lost.extend(link.inflight.values())
        link.inflight.clear()
        if ask:
            self._ask_again(link)

    def _ask_again(self, link: _ActorLink) -> None:
        if link.status == "alive":
            link.status = "unknown"
        self.client._send({"op": "watch-actor", "actor": link.actor_id})

    def _on_actor_info(self, op: dict[str, Any]) -> None:
        """The scheduler's word on an actor (client lock held, on the client's loop)."""
        link = self.links.get(op["actor"])
        if link is None:
            return
        status = op.get("status", "unknown")
        incarnation = int(op.get("incarnation", 0))
        new_incarnation = incarnation != link.incarnation
        link.status = status
        link.address = op.get("address", "")
        link.local_address = op.get("local_address") or ""
        link.node_id = op.get("node", "")
        link.incarnation = incarnation
        link.cause = op.get("cause")
        link.max_task_retries = int(op.get("max_task_retries", 0))
        link.class_name = op.get("class_name", link.class_name)
        link.pending_reason = op.get("waiting", "")
        if status in ("alive", "dead"):
            link.ctor_refs = []
        if status == "dead":
            cause = link.cause or _died(f"actor {link.actor_id} is dead")
            calls = [*link.lost, *link.inflight.values(), *link.queue]
            link.lost.clear()
            link.inflight.clear()
            link.queue.clear()
            for call in calls:
                self._fail(call, cause)
            _close_comm(link)
            return
        if status == "restarting" or (status == "alive" and new_incarnation):
            if link.comm is not None:
                self._link_broken(link, ask=False)
            self._fail_lost(link)
        if status == "alive":
            self._kick(link)

    def killed(self, actor_id: str) -> None:
        """This process killed the actor for good: later calls fail here, at once."""
        cause = _died("the actor was killed by graphexec.kill()")
        with self.client._lock:
            link = self.links.get(actor_id)
            if link is not None:
                info = {"actor": actor_id, "status": "dead", "cause": cause}
                self._on_actor_info({**link_info(link), **info})

    def _fail_lost(self, link: _ActorLink) -> None:
        """Calls lost with a broken connection: resend (retries left) or fail."""
        retry: list[_Call] = []
        for call in link.lost:
            if call.retries != 0:
                if call.retries > 0:
                    call.retries -= 1
                retry.append(call)
            else:
                self._fail(
                    call,
                    _died(
                        f"the process of actor {link.class_name} ({link.actor_id}) died while "
                        f"running {call.method}; the actor is restarting, the call is not "
                        "retried (set max_task_retries to retry calls)",
                        "ActorUnavailableError",
                    ),
                )
        link.lost.clear()
        link.queue.extendleft(reversed(retry))

    def _fail(self, call: _Call, exception: dict[str, Any], origin: str = "") -> None:
        client = self.client
        with client._lock:
            for key in call.keys:
                op = {
                    "op": "key-erred",
                    "key": key,
                    "exception": exception,
                    "origin": origin or key,
                }
                if key in self._published:
                    self._published.discard(key)
                    client._send({"op": "key-failed", "key": key, "exception": exception})
                client._on_key(op)

    def _maybe_unlink(self, link: _ActorLink) -> None:
        """No handle and no call left (lock held): stop watching the actor (it may end)."""
        if link.handles > 0 or link.busy() or self.links.get(link.actor_id) is not link:
            return
        del self.links[link.actor_id]
        _close_comm(link)
        self.client._send({"op": "unwatch-actor", "actor": link.actor_id})

    def close(self) -> None:
        self._closed = True
        readers = []
        with self.client._lock:
            for link in list(self.links.values()):
                _close_comm(link)
                if link.reader is not None:
                    readers.append(link.reader)
        self._kicks.put(None)
        for thread in [*readers, self._sender]:
            if thread is not None and thread is not threading.current_thread():
                thread.join(2.0)


def _close_comm(link: _ActorLink) -> None:
    """Close the link's connection and wake its reader so it ends."""
    if link.comm is not None:
        link.comm.close()
    link.comm = None
    with link.cond:
        link.cond.notify_all()


def link_info(link: _ActorLink) -> dict[str, Any]:
    """The link's view as an ``actor-info`` op."""
    return {
        "op": "actor-info",
        "actor": link.actor_id,
        "status": link.status,
        "address": link.address,
        "node": link.node_id,
        "incarnation": link.incarnation,
        "local_address": link.local_address,
        "cause": link.cause,
        "max_task_retries": link.max_task_retries,
        "class_name": link.class_name,
    }


def _died(message: str, error_type: str = "ActorDiedError") -> dict[str, Any]:
    return {"type": error_type, "message": message, "traceback": "", "pickled": None}
