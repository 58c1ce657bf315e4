"""Keys: unique task keys, deterministic tokens, and the name part of a key.

A key is ``"{name}-{token}"``. :func:`new_key` makes a unique one (the default: every
call is a new task); :func:`tokenize` makes a deterministic one from a call's function and
arguments (``pure=True`` tasks, so identical calls share one result).

Tokenize policy: equal values give equal tokens within and across processes wherever the
value has a stable description. Values are described structurally (type tag + content):
scalars, strings and bytes by value; tuples, lists, dicts, sets and frozensets element by
element (dicts and sets independently of iteration order); :class:`TaskRef` by key;
functions by module and qualified name (falling back to their cloudpickle bytes when the
name is not importable, e.g. lambdas and locals); numpy arrays by dtype, shape and a hash of
their bytes; anything else by its pickle bytes. An object that cannot be pickled gets a
random token, so it never collides with anything (a pure task with such an argument simply
never deduplicates). Hashing a token is not serialization: the pickles made here are hashed
and dropped, never sent.

This module is pure (no I/O) but for one piece of state: :func:`new_key`'s per-process
prefix and counter (made anew in a forked child), cheaper than a random UUID per key.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import pickle
import sys
import types
import uuid
from typing import Any

from graphexec.graph.task import TaskRef

__all__ = ["key_name", "new_key", "tokenize"]

_HEX = frozenset("0123456789abcdef")


class _KeySource:
    """A random 16-hex-digit prefix per process, then a counter: unique, and cheap."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.counter = itertools.count()


_keys = _KeySource()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_keys.reset)


def new_key(name: str) -> str:
    """A new unique key ``"{name}-{32 hex digits}"``.

    >>> key = new_key("inc")
    >>> key.startswith("inc-") and len(key) == 36
    True
    >>> new_key("inc") == new_key("inc")
    False
    """
    return f"{name}-{_keys.prefix}{next(_keys.counter):016x}"


def return_keys(key: str, nreturns: int) -> list[str]:
    """The keys of a call's results: ``key`` itself, or ``key-0 .. key-(n-1)``.

    >>> return_keys("f-1", 1), return_keys("f-1", 2)
    (['f-1'], ['f-1-0', 'f-1-1'])
    """
    return [key] if nreturns == 1 else [f"{key}-{i}" for i in range(nreturns)]


def tokenize(*args: Any, **kwargs: Any) -> str:
    """A deterministic hex token (32 digits) describing ``args`` and ``kwargs``.

    >>> tokenize(1, "a", [1.5, None]) == tokenize(1, "a", [1.5, None])
    True
    >>> tokenize({"a": 1, "b": 2}) == tokenize({"b": 2, "a": 1})
    True
    >>> tokenize(1) == tokenize(1.0) or tokenize(1) == tokenize(True)
    False
    >>> len(tokenize(TaskRef("x-1")))
    32
    """
    h = hashlib.md5(usedforsecurity=False)
    _feed(h, args)
    if kwargs:
        _feed(h, kwargs)
    return h.hexdigest()


def key_name(key: str) -> str:
    """The name part of a key: what comes before its last ``-token``.

    A token is a run of decimal digits or of at least six lowercase hex digits.

    Tuple-style keys (``"('x-abc', 0)"``, as made from Dask keys) give the name of their
    first element. Used to group task durations by function.

    >>> key_name("inc-abc123")
    'inc'
    >>> key_name("my-func-" + "0" * 32)
    'my-func'
    >>> key_name("('sum-aggregate-f00d12', 3)")
    'sum-aggregate'
    >>> key_name("x-1"), key_name("plain"), key_name("hello-world")
    ('x', 'plain', 'hello-world')
    """
    if key.startswith("(") and len(key) > 1:
        first = key[1:].split(",", 1)[0].strip()
        key = first.strip("'\"")
    head, sep, tail = key.rpartition("-")
    if sep and head and (tail.isdigit() or (len(tail) >= 6 and set(tail) <= _HEX)):
        return head
    return key


def _feed(h: Any, obj: Any) -> None:
    """Update hasher ``h`` with a type-tagged, length-prefixed description of ``obj``."""
    typ = type(obj)
    if typ is str:
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(data))
        h.update(data)
    elif typ is int or typ is bool or typ is float or typ is complex:
        h.update(b"%s:%s;" % (typ.__name__.encode(), repr(obj).encode()))
    elif obj is None:
        h.update(b"N;")
    elif typ is bytes or typ is bytearray:
        h.update(b"b%d:" % len(obj))
        h.update(obj)
    elif typ is tuple or typ is list:
        h.update(b"%s%d[" % (typ.__name__.encode(), len(obj)))
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    elif typ is dict:
        # order-independent: sort the per-item digests
        items = sorted(_digest((k, v)) for k, v in obj.items())
        h.update(b"dict%d{" % len(items))
        h.update(b"".join(items))
        h.update(b"}")
    elif typ is set or typ is frozenset:
        items = sorted(_digest(x) for x in obj)
        h.update(b"%s%d{" % (typ.__name__.encode(), len(items)))
        h.update(b"".join(items))
        h.update(b"}")
    elif isinstance(obj, TaskRef):
        h.update(b"ref:")
        _feed(h, obj.key)
    else:
        _feed_other(h, obj)


def _digest(obj: Any) -> bytes:
    h = hashlib.md5(usedforsecurity=False)
    _feed(h, obj)
    return h.digest()


def _feed_other(h: Any, obj: Any) -> None:
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        _feed_array(h, obj, numpy)
    elif isinstance(obj, functools.partial):
        h.update(b"partial(")
        _feed(h, (obj.func, obj.args, obj.keywords or {}))
        h.update(b")")
    elif isinstance(obj, types.MethodType):
        h.update(b"method(")
        _feed(h, (obj.__func__, obj.__self__))
        h.update(b")")
    elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
        _feed_callable(h, obj)
    else:
        _feed_pickle(h, obj)


def _feed_array(h: Any, arr: Any, numpy: Any) -> None:
    if arr.dtype.hasobject:
        _feed_pickle(h, arr)
        return
    h.update(b"ndarray:%s:%s:" % (arr.dtype.str.encode(), repr(arr.shape).encode()))
    data = numpy.ascontiguousarray(arr)
    h.update(hashlib.md5(data.view(numpy.uint8).data, usedforsecurity=False).digest())


def _feed_callable(h: Any, func: Any) -> None:
    owner = getattr(func, "__self__", None)
    if owner is not None and not isinstance(owner, (types.ModuleType, type)):
        # a builtin bound to an instance, e.g. ``[].append``: the instance matters
        h.update(b"bound(")
        _feed(h, owner)
        h.update(b")")
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        h.update(b"func:%s:%s;" % (module.encode(), qualname.encode()))
        return
    try:
        import cloudpickle

        data = cloudpickle.dumps(func, protocol=5)
    except Exception:  # anything unpicklable: a token that matches nothing else
        _feed_random(h)
        return
    h.update(b"cloudpickle%d:" % len(data))
    h.update(data)


def _feed_pickle(h: Any, obj: Any) -> None:
    try:
        data = pickle.dumps(obj, protocol=5)
    except Exception:  # user objects may raise anything from __reduce__
        try:
            import cloudpickle  # classes defined in functions or __main__

            data = cloudpickle.dumps(obj, protocol=5)
        except Exception:
            _feed_random(h)
            return
    h.update(b"pickle%d:" % len(data))
    h.update(data)


def _feed_random(h: Any) -> None:
    h.update(b"unique:" + uuid.uuid4().bytes)
