"""The Ray-style module-level API: ``init``, ``get``, ``put``, ``wait``, ``remote``, ...

Every function here is a thin layer over the current :class:`~graphexec.client.client.Client`
(``graphexec/_context.py``). Argument checking happens here, with messages that say what
to do instead.
"""

from __future__ import annotations

import atexit
import inspect
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from graphexec._context import current_client, set_current_client
from graphexec.client import cluster_dir
from graphexec.client.client import Client
from graphexec.client.refs import ObjectRef
from graphexec.client.remote import RemoteFunction
from graphexec.client.session import LocalCluster
from graphexec.graph.options import DEFAULT_OPTIONS

__all__ = [
    "RuntimeContext",
    "available_resources",
    "cancel",
    "cluster_resources",
    "compute",
    "get",
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "object_store_stats",
    "persist",
    "put",
    "remote",
    "shutdown",
    "submit",
    "wait",
]

T = TypeVar("T")

_INIT_KEYWORDS = (
    "address",
    "num_cpus",
    "num_gpus",
    "resources",
    "object_store_memory",
    "memory",
    "include_dashboard",
    "dashboard_port",
    "dashboard_host",
    "namespace",
    "log_to_driver",
    "ignore_reinit_error",
    "eager",
    "logging_level",
    "runtime_env",
    "_validate",
)

_session_lock = threading.Lock()
_session: dict[str, Any] = {}


@dataclass
class RuntimeContext:
    """What ``init()`` returns and ``get_runtime_context()`` reports."""

    address: str
    dashboard_url: str | None = None
    node_id: str | None = None
    namespace: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:  # Ray returns a dict-like context
        return getattr(self, name)

    def get_node_id(self) -> str | None:
        return self.node_id

    @property
    def gcs_address(self) -> str:
        return self.address


def init(address: str | None = None, **kwargs: Any) -> RuntimeContext:
    """Start a local cluster (no address) or connect to one, and make it current.

    Parameters
    ----------
    address : str, optional
        ``"host:port"`` / ``"tcp://host:port"`` of a running scheduler, or ``"auto"``
        for the cluster started on this machine. ``None`` starts a local cluster.
    num_cpus, num_gpus, resources, object_store_memory
        Resources of the local cluster's node (defaults: this machine's CPUs).
    eager : bool
        Submit every ``.remote()`` call at once (Ray semantics) instead of lazily.
    ignore_reinit_error : bool
        Make a second ``init()`` a no-op instead of an error.

    Examples
    --------
    >>> import graphexec
    >>> ctx = graphexec.init(num_cpus=2)  # doctest: +SKIP
    >>> graphexec.shutdown()  # doctest: +SKIP
    """
    unknown = sorted(set(kwargs) - set(_INIT_KEYWORDS))
    if unknown:
        raise TypeError(
            f"init() got unknown keyword(s) {unknown}; valid keywords are "
            f"{', '.join(k for k in _INIT_KEYWORDS if not k.startswith('_'))}"
        )
    with _session_lock:
        if _session:
            if kwargs.get("ignore_reinit_error"):
                return _session["context"]  # type: ignore[no-any-return]
            raise RuntimeError(
                "graphexec.init() was already called in this process; call "
                "graphexec.shutdown() first, or pass ignore_reinit_error=True"
            )
        cluster = None
        token = os.environ.get("GRAPHEXEC_TOKEN", "")
        if address is None and os.environ.get("GRAPHEXEC_ADDRESS"):
            address = "auto"  # as Ray does with RAY_ADDRESS: jobs join their cluster
        if address is None:
            resources = dict(kwargs.get("resources") or {})
            cluster = LocalCluster.start(
                num_cpus=kwargs.get("num_cpus"),
                num_gpus=kwargs.get("num_gpus"),
                resources=resources,
                memory=kwargs.get("memory"),
                object_store_memory=_store_size(kwargs.get("object_store_memory")),
                validate=bool(kwargs.get("_validate")),
            )
            address, token = cluster.address, cluster.token
        else:
            address = _resolve_address(address)
            token = token or cluster_dir.token_for(address)
            if not token:
                raise ValueError(
                    f"connecting to the cluster at {address} needs its token: set "
                    "GRAPHEXEC_TOKEN (the head's `graphexec start` printed where the "
                    "token file is)"
                )
        client = Client(address, token=token, eager=bool(kwargs.get("eager", False)))
        namespace = kwargs.get("namespace")
        if namespace is not None:
            if not isinstance(namespace, str) or not namespace:
                raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
            client.namespace = namespace
        try:
            client.start_in_thread()
            if cluster is not None:
                _wait_for_node(client)
            _attach_local_store(client)
        except BaseException as err:
            client.close()
            if cluster is not None:
                died = cluster.exited()
                cluster.stop()
                if died:
                    raise RuntimeError(
                        f"the local cluster failed to start: {died}; run with "
                        "GRAPHEXEC_LOG_LEVEL=INFO for details"
                    ) from err
            raise
        context = RuntimeContext(
            address=address.removeprefix("tcp://"), namespace=kwargs.get("namespace")
        )
        _session.update(client=client, cluster=cluster, context=context)
        set_current_client(client)
        atexit.register(shutdown)
        return context


def _resolve_address(address: str) -> str:
    if not isinstance(address, str) or not address:
        raise ValueError(f"address must be 'host:port' or 'auto', got {address!r}")
    if address == "auto":
        address = os.environ.get("GRAPHEXEC_ADDRESS", "")
        if not address:
            head = cluster_dir.local_head()
            address = head["address"] if head is not None else ""
            if head is not None:
                cluster_dir.use_head_tls(head)
        if not address:
            raise ConnectionError(
                "init(address='auto') found no running cluster: start one with "
                "`graphexec start --head`, set GRAPHEXEC_ADDRESS, or call init() to "
                "start a local one"
            )
    return address if "://" in address else f"tcp://{address}"


def _store_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"object_store_memory must be a positive number of bytes, got {value!r}")
    return int(value)


def _attach_local_store(client: Client) -> None:
    """Read and write large objects through the shared store of this machine's node."""
    info = client.request({"op": "cluster-info"})
    client.offer_stores(
        [(n["store_address"], n["node_id"]) for n in info["nodes"] if n.get("store_address")]
    )


def _wait_for_node(client: Client, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        info = client.request({"op": "cluster-info"}, timeout=timeout)
        if info["nodes"]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the local cluster's node manager did not register in time")
        time.sleep(0.005)


def shutdown() -> None:
    """Disconnect and stop the local cluster (if this process started one)."""
    with _session_lock:
        if not _session:
            return
        client: Client = _session.pop("client")
        cluster: LocalCluster | None = _session.pop("cluster")
        _session.clear()
        set_current_client(None)
        try:
            client.close()
        finally:
            if cluster is not None:
                cluster.stop()
        atexit.unregister(shutdown)


def is_initialized() -> bool:
    return bool(_session) or current_client(required=False) is not None


def remote(*args: Any, **options: Any) -> Any:
    """``@remote`` or ``@remote(num_cpus=..., num_returns=..., ...)`` on a function."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @graphexec.remote or @graphexec.remote(option=value, ...)")
    return lambda fn: _make_remote(fn, options)


def _make_remote(obj: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(obj):
        from graphexec.actors.actor import ActorClass

        return ActorClass(obj, options)
    return RemoteFunction(obj, DEFAULT_OPTIONS.merge(**options))


def method(*, num_returns: int = 1) -> Any:
    """Default options of an actor method: ``@graphexec.method(num_returns=2)``."""
    from graphexec.actors.actor import method as actor_method

    return actor_method(num_returns=num_returns)


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the live actor called ``name``; ``ValueError`` if there is none."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs an actor name, got {name!r}")
    from graphexec.actors.actor import ActorHandle
    from graphexec.actors.caller import caller_of

    client = current_client()
    namespace = namespace or client.namespace
    info = client.request({"op": "get-actor", "name": name, "namespace": namespace})
    if info is None:
        raise ValueError(
            f"no live actor named {name!r} in namespace {namespace!r}; create it with "
            f"Cls.options(name={name!r}).remote(...)"
        )
    caller = caller_of(client)
    caller.link(info["actor"], watch=False)  # the lookup made this client a watcher
    with client._lock:
        caller._on_actor_info(info)
    return ActorHandle(info["actor"], info["class_name"], info["methods"], client=client)


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """End an actor now: its pending and later calls raise ``ActorDiedError``.

    With ``no_restart=False`` its process is killed and restarted (``max_restarts``).
    """
    from graphexec.actors.actor import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise TypeError(
            f"kill() takes an actor handle, got {type(actor).__name__}; to stop a task use "
            "graphexec.cancel(ref, force=True)"
        )
    from graphexec.actors.caller import caller_of

    client = current_client()
    client._send({"op": "kill-actor", "actor": actor._actor_id, "no_restart": bool(no_restart)})
    if no_restart:
        caller_of(client).killed(actor._actor_id)


def _check_refs(value: Any, what: str) -> list[ObjectRef[Any]]:
    items = value if isinstance(value, (list, tuple)) else None
    if items is None:
        raise TypeError(
            f"{what} expects an ObjectRef or a list of ObjectRefs, got {type(value).__name__}"
        )
    for item in items:
        if not isinstance(item, ObjectRef):
            raise TypeError(
                f"{what} expects ObjectRefs, got an element of type "
                f"{type(item).__name__}; pass the refs returned by .remote() "
                "or put()"
            )
    return list(items)


@overload
def get(refs: ObjectRef[T], *, timeout: float | None = None) -> T: ...
@overload
def get(refs: Sequence[ObjectRef[Any]], *, timeout: float | None = None) -> list[Any]: ...


def get(refs: Any, *, timeout: float | None = None) -> Any:
    """Submit what is needed, wait, and return the value(s); raises the task's error.

    Raises ``GetTimeoutError`` (which says why the objects are not ready) after
    ``timeout`` seconds.
    """
    if isinstance(refs, ObjectRef):
        return _client_of(refs).gather([refs], timeout)[0]
    items = _check_refs(refs, "get()")
    if not items:
        return []
    return _client_of(items[0]).gather(items, timeout)


def _client_of(ref: ObjectRef[Any]) -> Client:
    client = current_client()
    if ref._client is not None and ref._client is not client and ref._client._closed:
        raise RuntimeError(f"{ref} belongs to a graphexec session that was shut down")
    return client  # type: ignore[no-any-return]


def wait(
    refs: Sequence[ObjectRef[Any]],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef[Any]], list[ObjectRef[Any]]]:
    """Return ``(ready, not_ready)`` once ``num_returns`` refs are done or at ``timeout``.

    ``ready`` is in completion order (Ray returns input order; documented difference).
    """
    items = _check_refs(refs, "wait()")
    if not 0 <= num_returns <= len(items):
        raise ValueError(
            f"num_returns must be between 0 and {len(items)} (the number of "
            f"refs), got {num_returns}"
        )
    if num_returns == 0 or not items:
        return [], list(items)
    by_key: dict[str, ObjectRef[Any]] = {}
    for ref in items:
        by_key.setdefault(ref.key, ref)
    done, pending = current_client().wait(items, num_returns, timeout)
    return [by_key[k] for k in done], [by_key[k] for k in pending]


def put(value: Any) -> ObjectRef[Any]:
    """Store ``value`` in the cluster now and return its ref."""
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself to tasks")
    return current_client().put(value)  # type: ignore[no-any-return]


def compute(*refs: Any, timeout: float | None = None) -> tuple[Any, ...]:
    """Dask-style: compute several refs together, return a tuple of values."""
    items = _check_refs(list(refs), "compute()")
    return tuple(current_client().gather(items, timeout)) if items else ()


def persist(*refs: ObjectRef[Any]) -> tuple[ObjectRef[Any], ...] | ObjectRef[Any]:
    """Start computing in the background; returns the same refs at once."""
    items = _check_refs(list(refs), "persist()")
    current_client().submit(items)
    return items[0] if len(items) == 1 else tuple(items)


submit = persist


def cancel(ref: ObjectRef[Any], *, force: bool = False, recursive: bool = True) -> None:
    """Cancel a pending or running task; ``get`` on it raises ``TaskCancelledError``."""
    _check_refs([ref], "cancel()")
    client = current_client()
    client.submit([ref])
    client._send({"op": "cancel", "keys": [ref.key], "force": force})


def cluster_resources() -> dict[str, float]:
    return current_client().request({"op": "cluster-info"})["cluster_resources"]  # type: ignore[no-any-return]


def available_resources() -> dict[str, float]:
    return current_client().request({"op": "cluster-info"})["available_resources"]  # type: ignore[no-any-return]


def nodes() -> list[dict[str, Any]]:
    """One dict per node: ``NodeID``, ``Alive``, ``Resources`` and more (Ray's keys)."""
    info = current_client().request({"op": "cluster-info"})
    out = []
    for node in info["nodes"]:
        out.append(
            {
                "NodeID": node["node_id"],
                "Alive": node["alive"],
                "NodeManagerAddress": node["host"],
                "Resources": node["resources"],
                "Workers": node["workers"],
                "Pid": node["pid"],
            }
        )
    return out


def object_store_stats() -> dict[str, Any]:
    """Object store usage: cluster totals plus ``"nodes"`` (one dict per node).

    Keys: ``used_bytes``, ``capacity_bytes``, ``spilled_bytes``, ``num_objects`` (and,
    per node, more detail from the store).
    """
    client = current_client()
    info = client.request({"op": "cluster-info"})
    per_node = client.run_on_loop(_gather_store_stats(client, info["nodes"]))
    totals = {"used_bytes": 0, "capacity_bytes": 0, "spilled_bytes": 0, "num_objects": 0}
    for stats in per_node:
        for name in totals:
            totals[name] += int(stats.get(name, 0))
    return {**totals, "nodes": per_node}


async def _gather_store_stats(client: Client, nodes: list[dict[str, Any]]) -> list[Any]:
    from graphexec.comm import connect
    from graphexec.comm.rpc import RPCConnection

    out = []
    for node in nodes:
        address = node.get("store_address")
        if not address:
            continue
        rpc = RPCConnection(await connect(address, token=client.token))
        try:
            answer, _ = await rpc.call({"op": "store-stats"})
            out.append(answer["stats"])
        finally:
            await rpc.close()
    return out


def cluster_info() -> dict[str, Any]:
    """Everything the scheduler reports about the cluster (processes, tasks by state)."""
    return current_client().request({"op": "cluster-info"})  # type: ignore[no-any-return]


def get_runtime_context() -> RuntimeContext:
    ctx = _session.get("context")
    if ctx is not None:
        return ctx  # type: ignore[no-any-return]
    client = current_client()
    return RuntimeContext(address=client.scheduler_address.removeprefix("tcp://"))


async def _await_ref(ref: ObjectRef[Any]) -> Any:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, get, ref)
