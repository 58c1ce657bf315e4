"""Task options: declared once (name, type, default, check) and validated here only.

``TaskOptions`` is immutable; ``merge`` returns a new validated instance, so
``f.options(...)`` can never leave a half-valid object behind.

>>> opts = DEFAULT_OPTIONS.merge(num_cpus=0.5, resources={"disk": 1})
>>> opts.num_cpus, opts.resources
(0.5, (('disk', 1.0),))
>>> opts.demand()
{'CPU': 0.5, 'disk': 1.0}
>>> DEFAULT_OPTIONS.merge(num_cpu=1)
Traceback (most recent call last):
...
ValueError: unknown option 'num_cpu' (did you mean 'num_cpus'?); valid options: ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["DEFAULT_OPTIONS", "OPTION_NAMES", "TaskOptions"]


def _non_negative_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"option {name!r} must be a number, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"option {name!r} must be >= 0, got {value}")
    return float(value)


def _int_at_least(minimum: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"option {name!r} must be an int, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"option {name!r} must be >= {minimum}, got {value}")
        return value

    return check


def _retries(name: str, value: Any) -> int:
    # Ray uses -1 for "retry forever"
    return _int_at_least(-1)(name, value)


def _resources(name: str, value: Any) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TypeError(f"option {name!r} must be a dict of name -> amount")
    out = []
    for key, amount in value.items():
        if not isinstance(key, str):
            raise TypeError(f"resource names must be strings, got {key!r}")
        if key in ("CPU", "GPU"):
            raise ValueError(f"use num_cpus= / num_gpus= instead of resources={{{key!r}: ...}}")
        out.append((key, _non_negative_number(f"resources[{key!r}]", amount)))
    return tuple(sorted(out))


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"option {name!r} must be True or False, got {value!r}")
    return value


def _retry_exceptions(name: str, value: Any) -> bool | tuple[type[BaseException], ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, type) and issubclass(v, BaseException) for v in value
    ):
        return tuple(value)
    raise TypeError(f"option {name!r} must be a bool or a list of exception classes")


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"option {name!r} must be a string, got {type(value).__name__}")
    return value


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "num_cpus": _non_negative_number,
    "num_gpus": _non_negative_number,
    "memory": _non_negative_number,
    "resources": _resources,
    "num_returns": _int_at_least(1),
    "max_retries": _retries,
    "retry_exceptions": _retry_exceptions,
    "pure": _bool,
    "name": _optional_str,
}


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Validated, immutable per-task options (Ray's names and defaults)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: float = 0.0
    resources: tuple[tuple[str, float], ...] = ()
    num_returns: int = 1
    max_retries: int = 3
    retry_exceptions: bool | tuple[type[BaseException], ...] = False
    pure: bool = False
    name: str | None = None

    def merge(self, **changes: Any) -> TaskOptions:
        """Return a copy with ``changes`` validated and applied."""
        checked = {}
        for key, value in changes.items():
            check = _CHECKS.get(key)
            if check is None:
                raise ValueError(_unknown(key))
            checked[key] = check(key, value)
        return replace(self, **checked)

    def demand(self) -> dict[str, float]:
        """The resources a task with these options needs, Ray-style names."""
        out = {"CPU": self.num_cpus}
        if self.num_gpus:
            out["GPU"] = self.num_gpus
        if self.memory:
            out["memory"] = self.memory
        for key, amount in self.resources:
            out[key] = amount
        return out


OPTION_NAMES = tuple(f.name for f in fields(TaskOptions))
DEFAULT_OPTIONS = TaskOptions()


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, OPTION_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown option {key!r}{hint}; valid options: {', '.join(OPTION_NAMES)}"
