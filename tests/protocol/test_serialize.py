"""Objects to frames: out-of-band buffers without copies, cloudpickle fallback, errors."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest

from graphexec.errors import TaskError
from graphexec.protocol.serialize import (
    OOB_MIN_BYTES,
    deserialize,
    deserialize_small,
    dumps_exception,
    dumps_function,
    frames_nbytes,
    loads_exception,
    loads_function,
    serialize,
    serialize_small,
)


def _address(buf: Any) -> int:
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


# ------------------------------------------------------------------ out-of-band buffers


def test_numpy_buffer_goes_out_of_band_without_copy() -> None:
    x = np.arange(1_000_000, dtype=np.float64)
    frames = serialize(x)
    assert len(frames) == 2
    buf = frames[1]
    assert isinstance(buf, memoryview)
    assert buf.nbytes == x.nbytes
    assert _address(buf) == x.ctypes.data  # the frame *is* the array's memory
    assert len(frames[0]) < 1000  # and none of it went into the pickle
    assert frames_nbytes(frames) == len(frames[0]) + x.nbytes


def test_deserialize_is_zero_copy_over_the_frames() -> None:
    x = np.arange(100_000, dtype=np.int32).reshape(1000, 100)
    frames = serialize(x)
    received = [frames[0], bytearray(frames[1])]  # as a transport delivers them
    y = deserialize(received)
    np.testing.assert_array_equal(x, y)
    assert y.ctypes.data == _address(received[1])
    assert y.flags.writeable  # writable frames give writable arrays
    z = deserialize([frames[0], bytes(frames[1])])
    assert not z.flags.writeable  # read-only frames give read-only arrays


def test_fortran_order_array_round_trips_out_of_band() -> None:
    x = np.asfortranarray(np.arange(20_000.0).reshape(100, 200))
    frames = serialize(x)
    assert len(frames) == 2
    y = deserialize(frames)
    np.testing.assert_array_equal(x, y)
    assert y.flags.f_contiguous


def test_non_contiguous_and_small_arrays_stay_in_band() -> None:
    strided = np.arange(100_000.0)[::3]
    assert len(serialize(strided)) == 1
    np.testing.assert_array_equal(deserialize(serialize(strided)), strided)
    small = np.arange(OOB_MIN_BYTES // 8 - 1, dtype=np.float64)
    assert len(serialize(small)) == 1
    np.testing.assert_array_equal(deserialize(serialize(small)), small)


def test_pandas_dataframe_round_trip_with_out_of_band_columns() -> None:
    df = pd.DataFrame(
        {
            "a": np.arange(10_000, dtype=np.int64),
            "b": np.linspace(0, 1, 10_000),
            "c": ["x", "y"] * 5_000,
        }
    )
    frames = serialize(df)
    assert len(frames) >= 2
    pd.testing.assert_frame_equal(deserialize(frames), df)


def test_plain_values_are_one_frame() -> None:
    value = {"a": [1, 2.5, "three"], "b": (None, True), "c": b"bytes"}
    frames = serialize(value)
    assert len(frames) == 1 and isinstance(frames[0], bytes)
    assert deserialize(frames) == value


def test_deserialize_needs_a_frame() -> None:
    with pytest.raises(ValueError):
        deserialize([])


# ------------------------------------------------------------------ cloudpickle fallback


def test_lambda_closure_and_local_class() -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

    square = deserialize(serialize(lambda x: x * x))
    assert square(7) == 49
    assert deserialize(serialize(closure))(1) == 11
    obj = deserialize(serialize(Local(3)))
    assert obj.v == 3 and type(obj).__name__ == "Local"
    arr_with_fn = deserialize(serialize({"f": closure, "x": np.ones(10_000)}))
    assert arr_with_fn["f"](0) == 10 and arr_with_fn["x"].sum() == 10_000


def test_definitions_in_main_are_pickled_by_value() -> None:
    # A function defined in a script's __main__ pickles fine *by reference* with plain
    # pickle, and that reference does not resolve in any other process. The serializer
    # must notice and pickle it by value.
    script = (
        "from graphexec.protocol.serialize import serialize\n"
        "import sys\n"
        "def triple(x):\n"
        "    return 3 * x\n"
        "class Point:\n"
        "    def __init__(self, x): self.x = x\n"
        "frames = serialize([triple, Point(5)])\n"
        "sys.stdout.write(bytes(frames[0]).hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    fn, point = deserialize([bytes.fromhex(out.stdout)])
    assert fn(2) == 6
    assert point.x == 5


def test_unpicklable_object_raises_clear_type_error() -> None:
    with socket.socket() as sock, pytest.raises(TypeError) as info:
        serialize(sock)
    message = str(info.value)
    assert "cannot serialize object of type socket.socket" in message
    assert "pass a picklable value or create it inside the task" in message
    assert info.value.__cause__ is not None


def test_unpicklable_nested_object_names_the_outer_type_and_the_cause() -> None:
    with pytest.raises(TypeError, match=r"object of type dict: .*lock"):
        serialize({"lock": threading.Lock()})
    with pytest.raises(TypeError, match="cannot serialize"):
        serialize_small([threading.Lock()])


def test_reduce_that_raises_becomes_type_error() -> None:
    class Broken:
        def __reduce__(self) -> Any:
            raise RuntimeError("no way")

    with pytest.raises(TypeError, match="no way") as info:
        serialize(Broken())
    assert isinstance(info.value.__cause__, RuntimeError)


def test_serialize_small_round_trip() -> None:
    value = (1, "a", [2.5], np.arange(5000))
    data = serialize_small(value)
    assert isinstance(data, bytes)
    out = deserialize_small(data)
    assert out[:3] == value[:3]
    np.testing.assert_array_equal(out[3], value[3])
    assert deserialize_small(serialize_small(lambda: 42))() == 42


# ------------------------------------------------------------------ functions


def test_dumps_function_round_trips() -> None:
    k = 5
    assert loads_function(dumps_function(lambda x: x + k))(1) == 6
    assert loads_function(dumps_function(len))("abc") == 3
    assert loads_function(dumps_function(np.add))(1, 2) == 3


def test_dumps_function_of_a_function_closing_over_a_socket() -> None:
    with socket.socket() as sock:

        def uses_socket() -> object:
            return sock

        with pytest.raises(TypeError, match="cannot serialize object of type"):
            dumps_function(uses_socket)


def test_loads_function_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="expected a pickled function"):
        loads_function(pickle.dumps(42))


# ------------------------------------------------------------------ exceptions


class NeedsArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"a={a} b={b}")  # args no longer match __init__: rebuild fails


class HoldsLock(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("broken __str__")


def test_exception_round_trip() -> None:
    exc, tb = loads_exception(dumps_exception(ValueError("bad value", 3), "Traceback: here"))
    assert type(exc) is ValueError
    assert exc.args == ("bad value", 3)
    assert tb == "Traceback: here"


def test_exception_of_a_local_class_round_trips_via_cloudpickle() -> None:
    class LocalError(KeyError):
        pass

    exc, _ = loads_exception(dumps_exception(LocalError("k"), ""))
    assert isinstance(exc, KeyError) and type(exc).__name__ == "LocalError"


def test_exception_that_cannot_be_rebuilt_gets_a_stand_in() -> None:
    exc, tb = loads_exception(dumps_exception(NeedsArgs(1, 2), "tb"))
    assert type(exc) is RuntimeError
    assert "NeedsArgs" in str(exc) and "a=1 b=2" in str(exc)
    assert tb == "tb"


def test_exception_that_cannot_be_pickled_gets_a_stand_in() -> None:
    exc, _ = loads_exception(dumps_exception(HoldsLock("locked out"), "tb"))
    assert type(exc) is RuntimeError
    assert "HoldsLock" in str(exc) and "locked out" in str(exc)


def test_exception_with_broken_str() -> None:
    data = dumps_exception(BadStr("x"), "tb")
    exc, _ = loads_exception(data)
    assert isinstance(exc, BadStr)


def test_task_error_keeps_user_class_across_the_wire() -> None:
    err = TaskError("f", "remote tb", ValueError("boom"), key="f-1").as_instanceof_cause()
    exc, _ = loads_exception(dumps_exception(err, "remote tb"))
    assert isinstance(exc, TaskError) and isinstance(exc, ValueError)
    assert exc.key == "f-1"
