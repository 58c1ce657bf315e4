"""Actor classes, handles and methods: ``@graphexec.remote`` on a class.

``Cls.remote(*args)`` is **eager**: the actor is placed and its constructor started at
once; the call returns an :class:`ActorHandle` without waiting for it. ``handle.method.
remote(*args)`` sends the call at once and returns an ``ObjectRef`` usable anywhere a ref
is: ``get``, ``wait``, arguments of lazy tasks and of other actor calls.

Handles are values: hashable, comparable, picklable. A handle passed to a task or to
another actor works there (that process watches the actor and calls it directly).

Options (``Cls.options(...)`` or ``@remote(...)`` on the class), as in Ray:
``name``, ``namespace``, ``lifetime="detached"``, ``get_if_exists``, ``num_cpus``,
``num_gpus``, ``resources``, ``memory``, ``max_restarts`` (-1: forever),
``max_task_retries`` (-1: forever), ``max_concurrency``.

Resources: an actor needs 1 CPU to be placed and holds none while alive, unless
``num_cpus`` is given: then it needs and holds that many (GPUs and custom resources are
always held).
"""

from __future__ import annotations

import inspect
from typing import Any, Generic, TypeVar

from graphexec._context import current_client
from graphexec.actors.caller import caller_of
from graphexec.client.refs import ObjectRef
from graphexec.graph.task import TaskRef, collect_refs
from graphexec.protocol import serialize as ser

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "method"]

T = TypeVar("T")

_OPTION_NAMES = (
    "name",
    "namespace",
    "lifetime",
    "get_if_exists",
    "num_cpus",
    "num_gpus",
    "resources",
    "memory",
    "max_restarts",
    "max_task_retries",
    "max_concurrency",
    "runtime_env",
    "scheduling_strategy",
)

_NUM_RETURNS_ATTR = "__graphexec_num_returns__"


def method(*, num_returns: int = 1) -> Any:
    """Decorate an actor method with default options (``@graphexec.method(num_returns=2)``)."""
    _check_num_returns(num_returns)

    def decorate(fn: Any) -> Any:
        setattr(fn, _NUM_RETURNS_ATTR, num_returns)
        return fn

    return decorate


def _check_num_returns(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_returns must be a positive integer, got {n!r}")
    return n


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"unknown actor option(s) {unknown}; valid options are {', '.join(_OPTION_NAMES)}"
        )
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    for key in ("max_restarts", "max_task_retries"):
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < -1
        ):
            raise ValueError(f"{key} must be an integer >= -1 (-1: without limit), got {value!r}")
    conc = options.get("max_concurrency")
    if conc is not None and (isinstance(conc, bool) or not isinstance(conc, int) or conc < 1):
        raise ValueError(f"max_concurrency must be a positive integer, got {conc!r}")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or None, got {lifetime!r}")
    name = options.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"an actor name must be a non-empty string, got {name!r}")
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
            for k, v in resources.items()
        ):
            raise ValueError(f"resources must map names to non-negative numbers, got {resources!r}")
        if {"CPU", "GPU"} & set(resources):
            raise ValueError("use num_cpus / num_gpus, not resources={'CPU': ...}")
    return options


def _methods_of(cls: type) -> tuple[dict[str, dict[str, Any]], bool]:
    """Public methods of ``cls`` (inherited ones included) and whether it is async."""
    methods: dict[str, dict[str, Any]] = {}
    is_async = False
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name != "__call__":
            continue
        if not (inspect.isfunction(member) or inspect.ismethod(member)):
            continue
        coroutine = inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
        is_async = is_async or coroutine
        methods[name] = {"num_returns": getattr(member, _NUM_RETURNS_ATTR, 1)}
    return methods, is_async


class ActorClass(Generic[T]):
    """A class made remote: ``Cls.remote(...)`` starts an actor and returns its handle."""

    def __init__(self, cls: type[T], options: dict[str, Any] | None = None) -> None:
        if not inspect.isclass(cls):
            raise TypeError(f"ActorClass needs a class, got {type(cls).__name__}")
        self._cls = cls
        self._options = _check_options(dict(options or {}))
        self._methods, self._is_async = _methods_of(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor class {self._cls.__name__!r} cannot be instantiated directly; use "
            f"{self._cls.__name__}.remote(...) to start an actor"
        )

    def options(self, **options: Any) -> ActorClass[T]:
        """A copy with other options (``name=``, ``num_cpus=``, ``max_restarts=``, ...)."""
        return ActorClass(self._cls, {**self._options, **_check_options(options)})

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[T]:
        """Place and start the actor now; returns its handle without waiting."""
        client = current_client()
        caller = caller_of(client)
        opts = self._options
        fid = client.functions.register(self._cls)
        refs = collect_refs(args)
        if kwargs:
            collect_refs(kwargs, refs)
        if refs:
            caller._prepare_inputs(refs)
            owned = [r.key for r in refs if r.key in client.owned]
            if owned:
                caller.publish(owned)  # the constructor gets them through the scheduler
        top_args = tuple(TaskRef(a.key) if isinstance(a, TaskRef) else a for a in args)
        top_kwargs = {k: TaskRef(v.key) if isinstance(v, TaskRef) else v for k, v in kwargs.items()}
        payload = ser.serialize_small((top_args, top_kwargs))
        from graphexec.graph.keys import new_key

        actor_id = new_key("actor")
        demand: dict[str, float] = {"CPU": float(opts.get("num_cpus", 1.0) or 0.0)}
        if opts.get("num_cpus") is None:
            demand["CPU"] = 1.0
        hold: dict[str, float] = {}
        if opts.get("num_cpus") is not None:
            hold["CPU"] = float(opts["num_cpus"])
        if opts.get("num_gpus"):
            demand["GPU"] = hold["GPU"] = float(opts["num_gpus"])
        if opts.get("memory"):
            demand["memory"] = hold["memory"] = float(opts["memory"])
        for name, amount in (opts.get("resources") or {}).items():
            demand[name] = hold[name] = float(amount)
        conc = opts.get("max_concurrency")
        op: dict[str, Any] = {
            "op": "create-actor",
            "actor": actor_id,
            "class_name": self._cls.__name__,
            "fid": fid,
            "payload": payload,
            "demand": demand,
            "hold": hold,
            "max_restarts": opts.get("max_restarts") or 0,
            "max_task_retries": opts.get("max_task_retries") or 0,
            "max_concurrency": conc if conc is not None else (0 if self._is_async else 1),
            "is_async": self._is_async,
            "methods": self._methods,
            "name": opts.get("name") or "",
            "namespace": opts.get("namespace") or client.namespace,
            "detached": opts.get("lifetime") == "detached",
            "get_if_exists": bool(opts.get("get_if_exists")),
        }
        blob = client.functions.blobs.get(fid)
        if blob is not None and fid not in client._sent_functions:
            op["functions"] = {fid: blob}
            client._sent_functions.add(fid)
        if op["name"]:
            answer = client.request(op)
            if "error" in answer:
                raise ValueError(answer["message"])
            actor_id = answer["actor"]
        else:
            client._send(op)
        link = caller.link(actor_id, watch=bool(op["name"]) and actor_id != op["actor"])
        link.class_name = self._cls.__name__
        link.max_task_retries = op["max_task_retries"]
        link.ctor_refs = list(refs)
        return ActorHandle(actor_id, self._cls.__name__, self._methods, client=client)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("actor DAGs (.bind on an actor class) are not supported")

    def __repr__(self) -> str:
        return f"<ActorClass {self._cls.__name__}>"


class ActorHandle(Generic[T]):
    """A reference to a running actor; ``handle.method.remote(...)`` calls it."""

    def __init__(
        self,
        actor_id: str,
        class_name: str,
        methods: dict[str, dict[str, Any]],
        *,
        client: Any = None,
    ) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._client = client
        if client is not None:
            caller_of(client).handle_added(actor_id)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__") or name in ("_actor_id", "_class_name", "_methods", "_client"):
            raise AttributeError(name)
        meta = self._methods.get(name)
        if meta is None:
            known = ", ".join(sorted(self._methods)) or "none"
            raise AttributeError(
                f"actor {self._class_name} has no method {name!r} (its methods: {known})"
            )
        return ActorMethod(self, name, int(meta.get("num_returns", 1)))

    def _caller(self) -> Any:
        client = self._client
        if client is None or client._closed:
            client = current_client()
            self._client = client
            caller_of(client).handle_added(self._actor_id)
        return caller_of(client)

    @property
    def actor_id(self) -> str:
        return self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_handle, (self._actor_id, self._class_name, self._methods))

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            self._client = None
            try:  # noqa: SIM105 -- interpreter shutdown may have torn modules down
                caller_of(client).handle_dropped(self._actor_id)
            except Exception:
                pass


def _rebuild_handle(
    actor_id: str, class_name: str, methods: dict[str, dict[str, Any]]
) -> ActorHandle[Any]:
    return ActorHandle(actor_id, class_name, methods, client=current_client(required=False))


class ActorMethod:
    """``handle.method``: call it with ``.remote(...)``."""

    __slots__ = ("_handle", "_name", "_num_returns")

    def __init__(self, handle: ActorHandle[Any], name: str, num_returns: int) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor method {self._name!r} cannot be called directly; use "
            f"handle.{self._name}.remote(...)"
        )

    def options(self, *, num_returns: int | None = None, **unused: Any) -> ActorMethod:
        if unused:
            raise TypeError(f"unknown actor method option(s) {sorted(unused)}; use num_returns")
        n = self._num_returns if num_returns is None else _check_num_returns(num_returns)
        return ActorMethod(self._handle, self._name, n)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Send the call now; returns an ``ObjectRef`` (a list of them with num_returns > 1)."""
        handle = self._handle
        refs: list[ObjectRef[Any]] = handle._caller().call(
            handle._actor_id, handle._class_name, self._name, args, kwargs, self._num_returns
        )
        return refs[0] if self._num_returns == 1 else refs

    def __repr__(self) -> str:
        return f"<ActorMethod {self._handle._class_name}.{self._name}>"
