"""Python objects to frames and back: pickle protocol 5 with out-of-band buffers.

This module and :mod:`graphexec.protocol.wire` are the only places graphexec calls
pickle, cloudpickle or msgpack.

Policy:

* :func:`serialize` turns an object into ``[pickle_bytes, *buffers]``. Contiguous
  buffers of 1 KiB and more (NumPy arrays, pandas blocks, Arrow buffers) are handed
  out-of-band as ``memoryview`` objects over the object's own memory: nothing is copied,
  so the caller must not mutate the object until the frames are sent. Smaller buffers
  stay in the pickle, where they cost less than a frame of their own.
* Plain pickle is tried first (fast, by reference). cloudpickle is used when pickle fails
  (lambdas, closures, locally defined classes) and when the pickle refers to ``__main__``
  or to a module registered with ``cloudpickle.register_pickle_by_value``: such references
  would not resolve in a worker process, so those objects are pickled by value.
* An object neither can pickle raises a ``TypeError`` naming its type and what to do.
* :func:`deserialize` never copies the buffers either: arrays come back as views over the
  frames (writable if the frames are).
* Exceptions travel inside an envelope that also holds their type name and message, so a
  peer that cannot rebuild the exception (missing module, ``__init__`` with required
  arguments) still gets a ``RuntimeError`` that says what happened.

Unpickling runs code: only ever deserialize frames from an authenticated peer (the
``comm`` layer guarantees this for everything it delivers).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "OOB_MIN_BYTES",
    "deserialize",
    "deserialize_small",
    "dumps_exception",
    "dumps_function",
    "frames_nbytes",
    "loads_exception",
    "loads_function",
    "serialize",
    "serialize_small",
]

Frame = bytes | bytearray | memoryview

#: Buffers smaller than this are pickled in-band (a frame costs more than the copy).
OOB_MIN_BYTES = 1024

_PROTOCOL = 5
_EXC_ENVELOPE_VERSION = 1


def serialize(obj: Any) -> list[bytes | memoryview]:
    """Pickle ``obj`` into frames: ``[pickle_bytes, *out_of_band_buffers]``.

    Raises
    ------
    TypeError
        If neither pickle nor cloudpickle can serialize ``obj``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(1000.0)
    >>> frames = serialize(x)
    >>> len(frames), frames_nbytes(frames[1:])
    (2, 8000)
    >>> bool((deserialize(frames) == x).all())
    True
    """
    head, buffers = _dumps(obj, out_of_band=True)
    return [head, *buffers]


def deserialize(frames: Sequence[Frame]) -> Any:
    """Rebuild the object that :func:`serialize` turned into ``frames``.

    Errors raised while unpickling (say, a module missing on this side) propagate as is.
    """
    if not frames:
        raise ValueError("deserialize needs at least the pickle frame")
    return pickle.loads(frames[0], buffers=frames[1:])


def serialize_small(obj: Any) -> bytes:
    """Pickle ``obj`` into one ``bytes`` object (every buffer in-band).

    The fast path for small payloads such as task arguments; same fallbacks and errors
    as :func:`serialize`.

    Examples
    --------
    >>> deserialize_small(serialize_small((1, "a", [2.5])))
    (1, 'a', [2.5])
    """
    head, _ = _dumps(obj, out_of_band=False)
    return head


def deserialize_small(data: Frame) -> Any:
    """Rebuild an object from :func:`serialize_small` output."""
    return pickle.loads(data)


def frames_nbytes(frames: Sequence[Frame]) -> int:
    """Total size in bytes of ``frames``.

    Examples
    --------
    >>> frames_nbytes([b"abc", memoryview(bytearray(5))])
    8
    """
    return sum(len(f) if isinstance(f, bytes) else memoryview(f).nbytes for f in frames)


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a function with cloudpickle.

    Functions importable on the other side are pickled by reference; those defined in
    ``__main__``, interactively, or in a module registered with
    ``cloudpickle.register_pickle_by_value`` are pickled by value.

    Examples
    --------
    >>> loads_function(dumps_function(lambda x: x + 1))(1)
    2
    """
    try:
        data: bytes = cloudpickle.dumps(fn, protocol=_PROTOCOL)
    except Exception as err:  # user code: __reduce__ of anything the function closes over
        raise TypeError(_cannot_serialize(fn, err)) from err
    return data


def loads_function(data: Frame) -> Callable[..., Any]:
    """Rebuild a function pickled by :func:`dumps_function`."""
    fn = pickle.loads(data)
    if not callable(fn):
        raise TypeError(f"expected a pickled function, got {type(fn).__name__}")
    return fn  # type: ignore[no-any-return]


def dumps_exception(exc: BaseException, tb_str: str) -> bytes:
    """Pickle an exception with its formatted remote traceback, whatever the exception.

    The envelope always holds the exception's type name and message. The exception
    itself is included when it survives a pickle round trip here; otherwise
    :func:`loads_exception` substitutes a ``RuntimeError`` built from the name and message.

    Examples
    --------
    >>> exc, tb = loads_exception(dumps_exception(ValueError("bad"), "Traceback ..."))
    >>> type(exc).__name__, str(exc), tb
    ('ValueError', 'bad', 'Traceback ...')
    """
    type_name = _type_name(type(exc))
    message = _safe_str(exc)
    payload: bytes | None
    try:
        payload = serialize_small(exc)
        pickle.loads(payload)  # an exception class may pickle but fail to rebuild
    except Exception:  # user code: the exception's own __reduce__ / __init__
        payload = None
    return pickle.dumps(
        (_EXC_ENVELOPE_VERSION, type_name, message, tb_str, payload), protocol=_PROTOCOL
    )


def loads_exception(data: Frame) -> tuple[BaseException, str]:
    """Rebuild ``(exception, traceback_str)`` from :func:`dumps_exception` output.

    If the original exception cannot be rebuilt here, the exception returned is a
    ``RuntimeError`` whose message names the original type and repeats its message.
    """
    version, type_name, message, tb_str, payload = pickle.loads(data)
    if version != _EXC_ENVELOPE_VERSION:
        raise ValueError(f"unknown exception envelope version {version!r}")
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception:  # user code: the exception class's constructor, imports
            pass
        else:
            if isinstance(exc, BaseException):
                return exc, tb_str
    return RuntimeError(
        f"{type_name}: {message} (the original exception could not be "
        "transferred; it is not picklable)"
    ), tb_str


def _dumps(obj: Any, *, out_of_band: bool) -> tuple[bytes, list[memoryview]]:
    buffers: list[memoryview] = []
    callback = _collector(buffers) if out_of_band else None
    by_reference: tuple[bytes, list[memoryview]] | None = None
    try:
        head = pickle.dumps(obj, protocol=_PROTOCOL, buffer_callback=callback)
    except Exception:  # user code: any object's __reduce__ may raise anything
        pass
    else:
        if not needs_by_value(head):
            return head, buffers
        by_reference = head, buffers
    buffers = []
    callback = _collector(buffers) if out_of_band else None
    try:
        head = cloudpickle.dumps(obj, protocol=_PROTOCOL, buffer_callback=callback)
    except Exception as err:  # user code, as above
        if by_reference is not None:
            return by_reference  # still loads in this process, and in any that can import it
        raise TypeError(_cannot_serialize(obj, err)) from err
    return head, buffers


def _collector(buffers: list[memoryview]) -> Callable[[pickle.PickleBuffer], bool]:
    def collect(buf: pickle.PickleBuffer) -> bool:
        try:
            view = buf.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if view.nbytes < OOB_MIN_BYTES:
            view.release()
            return True
        buffers.append(view)
        return False

    return collect


def needs_by_value(head: bytes) -> bool:
    # A pickle naming __main__ (or a module registered for by-value pickling) refers to
    # definitions that only exist in this process. A false positive (the string occurs in
    # the data) only costs a slower cloudpickle pass.
    if b"__main__" in head:
        return True
    registry = cloudpickle.list_registry_pickle_by_value()
    return any(name.encode() in head for name in registry)


def _cannot_serialize(obj: Any, err: BaseException) -> str:
    return (
        f"cannot serialize object of type {_type_name(type(obj))}: "
        f"{type(err).__name__}: {err}; pass a picklable value or create it inside the task"
    )


def _type_name(cls: type) -> str:
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    if module in (None, "builtins", "__main__"):
        return str(qualname)
    return f"{module}.{qualname}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # user code: a broken __str__
        return f"<unprintable {type(exc).__name__} object>"
