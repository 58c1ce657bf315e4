"""Object references: ``ObjectRef`` (user-visible) and ``LazyRef`` (inside graph nodes).

Both are :class:`~graphexec.graph.task.TaskRef` subclasses, so graph code treats them as
plain dependencies. Both hold the node that produces their key until it is submitted,
which is how ``get(ref)`` finds the whole lazy graph behind a ref.

Reference counting (as in Ray): a key stays alive on the cluster while this process holds
an ``ObjectRef`` to it *or* a not-yet-submitted task holds a ``LazyRef`` to it. Each ref
adds one to its client's count when made and removes one when garbage collected; when a
submitted key's count reaches zero the client tells the scheduler to release it. When a
graph is submitted, the LazyRefs inside it are *consumed* (the scheduler's dependency
tracking keeps their keys alive from then on).

A lazy ref that is dropped before anything submits it never runs.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from graphexec.graph.task import TaskRef, collect_refs

__all__ = ["LazyRef", "ObjectRef", "capture_refs"]

T = TypeVar("T")


class _CountedRef(TaskRef):
    __slots__ = ("_node", "_client", "__weakref__")

    def __init__(self, key: str, node: Any = None, client: Any = None) -> None:
        self.key = key
        self._node = node
        self._client = client
        if client is not None:
            client._incref(key)

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            self._client = None
            try:  # noqa: SIM105 -- contextlib may be gone at interpreter shutdown
                client._decref(self.key)
            except Exception:  # interpreter shutdown: nothing left to release
                pass


class ObjectRef(_CountedRef, Generic[T]):
    """A future for the value of a remote call or ``put``.

    Hashable and comparable by key, picklable (a ref sent to a task or another process
    refers to the same object there).
    """

    __slots__ = ()

    def compute(self, *, timeout: float | None = None) -> T:
        """Submit what this ref needs, wait for it, return the value (``get(self)``)."""
        from graphexec.client.api import get

        result: T = get(self, timeout=timeout)
        return result

    def hex(self) -> str:
        return self.key

    def __repr__(self) -> str:
        return f"ObjectRef({self.key})"

    def __reduce__(self) -> tuple[Any, ...]:
        client = self._client
        if client is not None and client.owned:
            client.escaped(self.key)  # an actor result leaving: the scheduler must know it
        return (_rebuild_object_ref, (self.key,))

    def __await__(self) -> Any:
        from graphexec.client.api import _await_ref

        return _await_ref(self).__await__()


class LazyRef(_CountedRef):
    """The form a ref takes inside a task's arguments (not visible to users)."""

    __slots__ = ("_consumed",)

    def __init__(self, key: str, node: Any = None, client: Any = None) -> None:
        super().__init__(key, node, client)
        self._consumed = False

    def consume(self) -> None:
        """The graph holding this ref was submitted: stop counting it."""
        if not self._consumed:
            self._consumed = True
            self._node = None
            client = self._client
            self._client = None
            if client is not None:
                client._decref(self.key)

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskRef, (self.key,))


def _rebuild_object_ref(key: str) -> ObjectRef[Any]:
    from graphexec._context import current_client

    return ObjectRef(key, None, current_client(required=False))


def capture_refs(obj: Any) -> Any:
    """Replace every ObjectRef inside ``obj`` by a LazyRef holding the same node.

    >>> capture_refs([1, (2, "x")])
    [1, (2, 'x')]
    """
    typ = type(obj)
    if typ is ObjectRef or isinstance(obj, ObjectRef):
        return LazyRef(obj.key, obj._node, obj._client)
    if typ is list:
        return [capture_refs(x) for x in obj] if _has_ref(obj) else obj
    if typ is tuple:
        return tuple(capture_refs(x) for x in obj) if _has_ref(obj) else obj
    if typ is dict:
        if not _has_ref(obj):
            return obj
        return {k: capture_refs(v) for k, v in obj.items()}
    return obj


def _has_ref(obj: Any) -> bool:
    return any(isinstance(ref, ObjectRef) for ref in collect_refs(obj))
