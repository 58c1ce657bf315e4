"""Running one task on an executor thread and turning the outcome into a report.

This is the boundary with user code: the only place a broad ``except`` catches what a
user function raises. The error is never dropped: it is pickled (with a stand-in when the
exception itself cannot be pickled) together with the formatted remote traceback and sent
to the scheduler, which hands it to every client that waits on the key.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from graphexec.errors import CommClosedError, ObjectLostError
from graphexec.graph.task import Fused, Task, TaskRef
from graphexec.protocol import serialize as ser
from graphexec.protocol.tasks import loads_task
from graphexec.worker.storage import ObjectStorage

__all__ = ["INLINE_BYTES", "error_report", "run_task"]

#: results at most this big travel inline to the scheduler (and on to clients)
INLINE_BYTES = 100 * 1024


def error_report(exc: BaseException, function_name: str) -> dict[str, Any]:
    """The wire form of an exception raised by user code."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "type": type(exc).__name__,
        "message": _safe_str(exc),
        "traceback": tb,
        "pickled": ser.dumps_exception(exc, tb),
        "function": function_name,
    }


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a user __str__ may raise anything
        return f"<{type(exc).__name__}: unprintable>"


def _function_name(node: Any) -> str:
    last = node.nodes[-1] if isinstance(node, Fused) else node
    func = getattr(last, "func", None)
    return getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))


def _retry_on(node: Any, exc: BaseException) -> bool:
    spec = node.options.retry_exceptions
    if isinstance(spec, tuple):
        return isinstance(exc, spec)
    return bool(spec)


def _store_failure(exc: BaseException) -> bool:
    """The node's store became unreachable (its node manager died): not the task's fault."""
    return isinstance(exc, (CommClosedError, ObjectLostError))


def run_task(
    msg: dict[str, Any],
    storage: ObjectStorage,
    load_function: Callable[[str], Any],
    make_ref: Callable[[str], Any],
    store_large: Callable[[str, list[Any]], None] | None = None,
) -> tuple[dict[str, Any], Any, list[Any] | None]:
    """Run the task described by a ``compute`` op.

    Returns ``(report, value, frames)``: the op to send to the scheduler, and for a
    success the value and its serialized frames to keep in storage. With
    ``store_large``, results bigger than the inline limit are written to the node's
    shared store here, on the executor thread, and not kept in this process.
    """
    key = msg["key"]
    start = time.perf_counter()
    node: Any = None
    in_graphexec = False  # reading inputs or storing the result, not running user code
    try:
        node = loads_task(msg["payload"], load_function)
        in_graphexec = True
        values = {dep: storage.get_value(dep) for dep in node.dependencies}
        in_graphexec = False
        wrap = make_ref if isinstance(node, Task) and node.resolve == "top" else None
        result = _run(node, values, wrap)
        frames = ser.serialize(result)
        nbytes = ser.frames_nbytes(frames)
        in_store = store_large is not None and nbytes > INLINE_BYTES
        if in_store:
            assert store_large is not None
            in_graphexec = True
            store_large(key, frames)
    except BaseException as exc:  # user code: report everything, including SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        name = _function_name(node) if node is not None else key
        report = {
            "op": "task-erred",
            "key": key,
            "run_id": msg.get("run_id", 0),
            "exception": error_report(exc, name),
            "retryable": (in_graphexec and _store_failure(exc))
            or (node is not None and _retry_on(node, exc)),
            "duration": time.perf_counter() - start,
        }
        del exc
        return report, None, None
    inline = [bytes(f) for f in frames] if nbytes <= INLINE_BYTES else None
    report = {
        "op": "task-finished",
        "key": key,
        "run_id": msg.get("run_id", 0),
        "nbytes": nbytes,
        "inline": inline,
        "duration": time.perf_counter() - start,
    }
    if in_store:
        report["in_store"] = True
        return report, None, None  # the store holds it; keep no second copy here
    return report, result, frames


def _run(node: Any, values: dict[str, Any], wrap: Callable[[str], Any] | None) -> Any:
    if wrap is not None and isinstance(node, Task) and _has_nested_refs(node):
        # Ray semantics: nested refs reach the function as ObjectRefs it may get()
        node = node.with_args(_wrap_nested(node.args, wrap), _wrap_nested(node.kwargs, wrap))
    return node.run(values)


def _has_nested_refs(node: Task) -> bool:
    deps = node.dependencies
    if not deps:
        return False
    top = {a.key for a in node.args if isinstance(a, TaskRef)}
    top.update(v.key for v in node.kwargs.values() if isinstance(v, TaskRef))
    return not deps <= top


def _wrap_nested(obj: Any, wrap: Callable[[str], Any]) -> Any:
    """Replace internal refs nested *inside* top-level arguments by user ObjectRefs."""

    def inner(x: Any) -> Any:
        if type(x) is TaskRef:
            return wrap(x.key)
        typ = type(x)
        if typ is list:
            return [inner(v) for v in x]
        if typ is tuple:
            return tuple(inner(v) for v in x)
        if typ is dict:
            return {k: inner(v) for k, v in x.items()}
        return x

    if isinstance(obj, dict):
        return {k: v if isinstance(v, TaskRef) else inner(v) for k, v in obj.items()}
    return tuple(v if isinstance(v, TaskRef) else inner(v) for v in obj)
