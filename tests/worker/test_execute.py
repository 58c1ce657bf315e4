"""``run_task``: which failures are the task's (reported as is) and which are the store's
(retryable whatever the task's options: its node manager died under it)."""

from __future__ import annotations

from typing import Any

from graphexec.errors import CommClosedError, ObjectStoreFullError
from graphexec.graph.options import DEFAULT_OPTIONS
from graphexec.graph.task import Task
from graphexec.protocol.tasks import FunctionRegistry, dumps_task
from graphexec.worker.execute import INLINE_BYTES, run_task
from graphexec.worker.storage import MemoryStorage


def big(n: int) -> bytes:
    return b"x" * n


def fail(_: int) -> None:
    raise CommClosedError("raised by the user's own code")


def run(func: Any, store_large: Any, **options: Any) -> dict[str, Any]:
    node = Task("t", func, (INLINE_BYTES + 1,), options=DEFAULT_OPTIONS.merge(**options))
    msg = {"key": "t", "payload": dumps_task(node, FunctionRegistry()), "run_id": 1}
    report, _, _ = run_task(msg, MemoryStorage(), lambda fid: None, lambda key: key, store_large)
    return report


def test_a_store_lost_while_writing_the_result_is_retryable() -> None:
    def broken(key: str, frames: list[Any]) -> None:
        raise CommClosedError("connection to the store closed")

    report = run(big, broken, retry_exceptions=False)
    assert report["op"] == "task-erred" and report["retryable"] is True


def test_a_full_store_and_user_errors_follow_the_task_options() -> None:
    def full(key: str, frames: list[Any]) -> None:
        raise ObjectStoreFullError("no room")

    assert run(big, full, retry_exceptions=False)["retryable"] is False
    report = run(fail, None, retry_exceptions=False)
    assert report["exception"]["type"] == "CommClosedError" and report["retryable"] is False
    written: list[str] = []
    report = run(big, lambda key, frames: written.append(key))
    assert report["op"] == "task-finished" and report["in_store"] and written == ["t"]
