"""Checks of incoming scheduler messages, made before they may change any state.

A malformed ``update-graph`` (wrong types, missing fields) must be refused whole: the
state machine in ``state.py`` trusts what it is given, so a half-applied message would
leave tasks behind that nothing can finish (the wire fuzzer found exactly that).
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

__all__ = ["update_graph_nbytes"]


def update_graph_nbytes(tasks: list[Any], functions: Any) -> int:
    """Check every task spec and the functions of an ``update-graph``; return its size:
    the bytes of the payloads, keys, dependency keys and functions.

    Raises ``ValueError`` naming the first problem found.

    >>> update_graph_nbytes([{"key": "a", "payload": b"xy", "deps": ["b"]}], {"f": b"z"})
    6
    >>> update_graph_nbytes([{"key": "a", "payload": b"", "deps": "b"}], None)
    Traceback (most recent call last):
    ...
    ValueError: malformed update-graph: task 0 ('a'): 'deps' must be a list of keys
    """
    nbytes = 0
    if functions is not None:
        if not isinstance(functions, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in functions.items()
        ):
            raise ValueError("malformed update-graph: 'functions' must map ids to bytes")
        nbytes += sum(len(k) + len(v) for k, v in functions.items())
    for i, spec in enumerate(tasks):
        if not isinstance(spec, dict):
            raise ValueError(
                f"malformed update-graph: task {i} is a {type(spec).__name__}, not a dict"
            )
        key: Any = spec.get("key")
        payload: Any = spec.get("payload")
        deps: Any = spec.get("deps", ())
        retries = spec.get("retries", 3)
        problem = ""
        if not isinstance(key, str):
            problem = "'key' must be a string"
        elif not isinstance(payload, bytes):
            problem = "'payload' must be bytes"
        elif not _strings(deps):
            problem = "'deps' must be a list of keys"
        elif not _strings(spec.get("fids", ())):
            problem = "'fids' must be a list of strings"
        elif not isinstance(spec.get("prefix", ""), str):
            problem = "'prefix' must be a string"
        elif not _integer(spec.get("priority", 0)):
            problem = "'priority' must be an integer"
        elif not (_integer(retries) and retries >= -1):
            problem = "'retries' must be an integer >= -1"
        elif not _demand(spec.get("demand", _EMPTY_DEMAND)):
            problem = "'demand' must map resource names to finite numbers >= 0"
        if problem:
            raise ValueError(f"malformed update-graph: task {i} ({reprlib.repr(key)}): {problem}")
        nbytes += len(key) + len(payload) + sum(map(len, deps))
    return nbytes


_EMPTY_DEMAND: dict[str, float] = {}


def _strings(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _demand(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and v >= 0
        for k, v in value.items()
    )
