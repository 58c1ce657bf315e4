"""Remote functions: ``@graphexec.remote`` and ``graphexec.delayed``.

``f.remote(*args)`` is lazy: it builds a graph node and returns an ``ObjectRef`` in
microseconds; nothing is sent until ``get`` / ``wait`` / ``compute`` / ``persist`` (or at
once under ``init(eager=True)``). ``num_returns=N`` gives N refs, each a cheap
``getitem`` task on the one result.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from graphexec._context import current_client
from graphexec.client.refs import ObjectRef, capture_refs
from graphexec.graph.keys import new_key, tokenize
from graphexec.graph.options import DEFAULT_OPTIONS, TaskOptions
from graphexec.graph.task import Resolve, Task

__all__ = ["RemoteFunction", "delayed"]

R = TypeVar("R")


class RemoteFunction(Generic[R]):
    """A function that runs as a task on the cluster. Call it with ``.remote(...)``."""

    def __init__(
        self,
        func: Callable[..., R],
        options: TaskOptions = DEFAULT_OPTIONS,
        *,
        resolve: Resolve = "top",
    ) -> None:
        if not callable(func):
            raise TypeError(f"@remote needs a function or a class, got {type(func).__name__}")
        self._func = func
        self._options = options
        self._resolve = resolve
        self._name = getattr(func, "__name__", "task").replace("-", "_") or "task"
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name!r} cannot be called directly; use "
            f"{self._name}.remote(...) to run it as a task (or {self._name}._function(...) "
            "to call the plain function locally)"
        )

    @property
    def _function(self) -> Callable[..., R]:
        return self._func

    def options(self, **options: Any) -> RemoteFunction[R]:
        """A copy with per-call options (``num_cpus``, ``num_returns``, ``pure``, ...)."""
        return RemoteFunction(self._func, self._options.merge(**options), resolve=self._resolve)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Add a call to the graph; returns an ``ObjectRef`` (a list of N with num_returns)."""
        client = current_client()
        client.functions.register(self._func)
        args = capture_refs(args)
        kwargs = capture_refs(kwargs) if kwargs else {}
        opts = self._options
        name = opts.name or self._name
        if opts.pure:
            key = f"{name}-{tokenize(self._func, args, kwargs, opts)}"
        else:
            key = new_key(name)
        node = Task(key, self._func, args, kwargs, resolve=self._resolve, options=opts)
        ref: ObjectRef[Any] = ObjectRef(key, node, client)
        if opts.num_returns == 1:
            refs: list[ObjectRef[Any]] = [ref]
            result: Any = ref
        else:
            refs = [_getitem_ref(client, ref, i, opts) for i in range(opts.num_returns)]
            result = refs
        if client.eager:
            client.submit(refs)
        return result

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """Ray DAG spelling: the same lazy node as ``.remote``."""
        return self.remote(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"


def _getitem_ref(client: Any, ref: ObjectRef[Any], index: int, opts: TaskOptions) -> ObjectRef[Any]:
    client.functions.register(operator.getitem)
    key = f"{ref.key}-{index}"
    light = DEFAULT_OPTIONS.merge(num_cpus=0.0, max_retries=opts.max_retries)
    node = Task(key, operator.getitem, capture_refs((ref, index)), {}, options=light)
    return ObjectRef(key, node, client)


def delayed(func: Callable[..., R] | None = None, *, pure: bool = False, **options: Any) -> Any:
    """Dask-style: ``delayed(f)(*args)`` returns an ObjectRef; refs nested anywhere resolve.

    >>> inc = delayed(lambda x: x + 1)
    >>> callable(inc)
    True
    """
    if func is None:
        return functools.partial(delayed, pure=pure, **options)
    opts = DEFAULT_OPTIONS.merge(pure=pure, **options)
    remote_fn = RemoteFunction(func, opts, resolve="all")

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        return remote_fn.remote(*args, **kwargs)

    call.remote_function = remote_fn  # type: ignore[attr-defined]
    return call
