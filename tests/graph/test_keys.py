"""Keys: unique keys, deterministic tokens, key names."""

from __future__ import annotations

import functools
import math
import operator
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from graphexec.graph.keys import key_name, new_key, tokenize
from graphexec.graph.task import TaskRef

ROOT = Path(__file__).resolve().parents[2]


def inc(x):
    return x + 1


def dec(x):
    return x - 1


class Point:
    def __init__(self, x):
        self.x = x

    def norm(self):
        return abs(self.x)


def test_new_key_format_and_uniqueness():
    keys = {new_key("inc") for _ in range(1000)}
    assert len(keys) == 1000
    assert all(re.fullmatch(r"inc-[0-9a-f]{32}", k) for k in keys)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_new_keys_stay_unique_in_a_forked_child():
    before = new_key("inc")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its keys go back through the pipe
        try:
            os.write(write, " ".join(new_key("inc") for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    parent = {new_key("inc") for _ in range(100)} | {before}
    assert len(child) == 100 and not child & parent


def test_tokenize_is_hex_and_deterministic():
    values = (1, -2.5, "s", b"b", None, True, 3j, (1, [2, {"a": {3}}]), frozenset({1, 2}))
    token = tokenize(*values, k=[1, 2])
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    assert token == tokenize(*values, k=[1, 2])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, 1.0),
        (1, True),
        (0.0, -0.0),
        ("1", 1),
        ("a", b"a"),
        ((1, 2), [1, 2]),
        ({1, 2}, frozenset({1, 2})),
        ([1, 2], [2, 1]),
        (("ab",), ("a", "b")),
        ({"a": 1}, {"a": 2}),
        ({"a": 1}, {"b": 1}),
        (None, "None"),
        (TaskRef("x"), "x"),
        (TaskRef("x"), TaskRef("y")),
        (inc, dec),
    ],
)
def test_different_values_give_different_tokens(a, b):
    assert tokenize(a) != tokenize(b)


def test_args_and_kwargs_are_distinguished():
    assert tokenize(1, 2) != tokenize((1, 2))
    assert tokenize(1) != tokenize(x=1)
    assert tokenize(x=1, y=2) == tokenize(y=2, x=1)


def test_dicts_and_sets_are_order_independent():
    d1 = {str(i): i for i in range(100)}
    d2 = dict(reversed(list(d1.items())))
    assert tokenize(d1) == tokenize(d2)
    assert tokenize(set(range(100))) == tokenize(set(range(99, -1, -1)))


def test_nan_is_stable():
    assert tokenize(math.nan) == tokenize(float("nan"))


def test_taskref_by_key():
    class Ref(TaskRef):
        __slots__ = ()

    assert tokenize(TaskRef("x-1")) == tokenize(Ref("x-1"))


def test_functions_by_name_and_lambdas_by_code():
    assert tokenize(inc) == tokenize(inc)
    assert tokenize(operator.add) == tokenize(operator.add)
    assert tokenize(len) != tokenize(abs)
    f = lambda x: x + 1  # noqa: E731
    g = lambda x: x + 2  # noqa: E731
    assert tokenize(f) == tokenize(f)
    assert tokenize(f) != tokenize(g)


def test_partials_methods_and_classes():
    assert tokenize(functools.partial(inc, 1)) == tokenize(functools.partial(inc, 1))
    assert tokenize(functools.partial(inc, 1)) != tokenize(functools.partial(inc, 2))
    assert tokenize(Point(1).norm) == tokenize(Point(1).norm)
    assert tokenize(Point(1).norm) != tokenize(Point(2).norm)
    assert tokenize([1].append) != tokenize([2].append)
    assert tokenize(Point) == tokenize(Point)
    assert tokenize(Point) != tokenize(TaskRef)


def test_local_functions_and_classes():
    def local(x):
        return x

    class Local:
        def __init__(self, v):
            self.v = v

    assert tokenize(local) == tokenize(local)
    assert tokenize(Local(1)) == tokenize(Local(1))
    assert tokenize(Local(1)) != tokenize(Local(2))


def test_objects_by_pickle():
    assert tokenize(Point(1)) == tokenize(Point(1))
    assert tokenize(Point(1)) != tokenize(Point(2))
    assert tokenize(range(3)) == tokenize(range(3))


def test_unpicklable_objects_never_collide():
    lock = threading.Lock()
    assert tokenize(lock) != tokenize(lock)


def test_numpy_arrays():
    a = np.arange(12, dtype="i8").reshape(3, 4)
    assert tokenize(a) == tokenize(a.copy())
    assert tokenize(a) != tokenize(a.astype("i4"))
    assert tokenize(a) != tokenize(a.reshape(4, 3))
    b = a.copy()
    b[0, 0] = 99
    assert tokenize(a) != tokenize(b)
    assert tokenize(a.T) == tokenize(np.ascontiguousarray(a.T))
    assert tokenize(np.array([1, "x"], dtype=object)) == tokenize(np.array([1, "x"], dtype=object))
    assert tokenize(np.array([1, "x"], dtype=object)) != tokenize(np.array([1, "y"], dtype=object))


def test_tokens_are_stable_across_processes():
    code = (
        "from graphexec.graph.keys import tokenize\n"
        "from graphexec.graph.task import TaskRef\n"
        "import operator\n"
        "print(tokenize(1, 'a', {'x': {1, 2}, 'y': (TaskRef('k'), 2.5)}, operator.add))\n"
    )
    tokens = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        tokens.add(out.stdout.strip())
    assert len(tokens) == 1


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("inc-abc123", "inc"),
        ("inc-" + "f" * 32, "inc"),
        ("my-func-0123456789abcdef", "my-func"),
        ("x-1", "x"),
        ("x", "x"),
        ("hello-world", "hello-world"),
        ("-abcdef", "-abcdef"),
        ("('sum-aggregate-" + "a" * 32 + "', 0)", "sum-aggregate"),
        ("('x', 0, 1)", "x"),
        (new_key("load_csv"), "load_csv"),
    ],
)
def test_key_name(key, name):
    assert key_name(key) == name
