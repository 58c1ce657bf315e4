"""The one exception hierarchy of graphexec (``GraphexecError`` at the root).

Names follow Ray's ``ray.exceptions`` so that ``except ray.exceptions.X`` ports over.
User errors raised inside a task reach the caller as a :class:`TaskError` that is *also*
an instance of the user's own exception class (see :func:`TaskError.as_instanceof_cause`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorDiedError",
    "ActorUnavailableError",
    "CommClosedError",
    "GetTimeoutError",
    "GraphexecError",
    "InvalidTransition",
    "ObjectLostError",
    "ObjectStoreFullError",
    "ProtocolError",
    "RayTaskError",
    "SchedulerLostError",
    "TaskCancelledError",
    "TaskError",
    "WorkerCrashedError",
]


class GraphexecError(Exception):
    """Root of every error graphexec raises on its own account."""


class CommClosedError(GraphexecError, ConnectionError):
    """A connection closed (or was closed) while it was in use."""


class ProtocolError(GraphexecError):
    """A peer sent something that breaks the wire protocol (the connection is dropped)."""


class InvalidTransition(GraphexecError):
    """A state machine was asked for a transition its table does not allow."""


class GetTimeoutError(GraphexecError, TimeoutError):
    """``get`` or ``wait`` ran out of time."""


class SchedulerLostError(GraphexecError, ConnectionError):
    """The connection to the scheduler is gone; nothing more will arrive."""


class WorkerCrashedError(GraphexecError):
    """The worker running a task died and the task's retries are used up."""


class ObjectLostError(GraphexecError):
    """An object's only copy was lost and it cannot be recomputed."""


class ObjectStoreFullError(GraphexecError, MemoryError):
    """The object store cannot hold an object even after spilling."""


class TaskCancelledError(GraphexecError):
    """The task was cancelled with ``graphexec.cancel``."""


class ActorDiedError(GraphexecError):
    """The actor is dead; the message says why."""


class ActorUnavailableError(GraphexecError):
    """The actor is restarting and cannot take the call now."""


class TaskError(GraphexecError):
    """A task raised. Carries the remote traceback and the original exception.

    At ``get`` the error raised is ``err.as_instanceof_cause()``: an instance of a class
    derived from both ``TaskError`` and the user's exception class, so ``except
    ValueError`` catches a remote ``ValueError``.
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None,
        *,
        key: str = "",
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.key = key
        super().__init__(self._message())

    def _message(self) -> str:
        origin = f" (task {self.key})" if self.key else ""
        return (
            f"{type(self.cause).__name__ if self.cause else 'error'} in "
            f"{self.function_name}{origin}\n\nRemote traceback:\n{self.traceback_str}"
        )

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, self.key))

    def as_instanceof_cause(self) -> TaskError:
        """Return an error that is both a ``TaskError`` and an instance of the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if (
            cause_cls is None
            or issubclass(cause_cls, TaskError)
            or not issubclass(cause_cls, Exception)
        ):
            return self
        try:
            derived: Any = _derived_class(cause_cls)
            err = derived.__new__(derived)
            # initialise both bases' state without calling the user's __init__
            err.args = self.cause.args if self.cause is not None else ()
            err.function_name = self.function_name
            err.traceback_str = self.traceback_str
            err.cause = self.cause
            err.key = self.key
            if self.cause is not None and hasattr(self.cause, "__dict__"):
                for name, value in vars(self.cause).items():
                    if name not in ("function_name", "traceback_str", "cause", "key"):
                        err.__dict__.setdefault(name, value)
            return err
        except TypeError:
            # e.g. a cause class with an incompatible layout (__slots__, C base)
            return self


RayTaskError = TaskError

_DERIVED: dict[type, type] = {}


def _derived_class(cause_cls: type) -> type:
    derived = _DERIVED.get(cause_cls)
    if derived is None:
        derived = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {
                "__str__": TaskError.__str__,
                "__reduce__": TaskError.__reduce__,
                "__module__": cause_cls.__module__,
            },
        )
        _DERIVED[cause_cls] = derived
    return derived


def _rebuild_task_error(
    function_name: str, traceback_str: str, cause: BaseException | None, key: str
) -> TaskError:
    return TaskError(function_name, traceback_str, cause, key=key).as_instanceof_cause()
