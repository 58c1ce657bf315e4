"""Message headers: msgpack round trips, bounded decoding, errors as ProtocolError."""

from __future__ import annotations

import contextlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphexec.errors import ProtocolError
from graphexec.protocol.wire import dumps_header, loads_header


@pytest.mark.parametrize(
    "header",
    [
        {"op": "task-finished", "key": "inc-1", "nbytes": 123, "ok": True, "x": None},
        [1, -2, 2**63 - 1, -(2**63), 1.5, "é", b"\x00\xff"],
        {"nested": {"list": [{"a": [1, 2, {"b": b"raw"}]}]}},
        {1: "int key", b"k": "bytes key", "s": "str key"},
        "",
        b"",
        None,
    ],
)
def test_round_trip(header: object) -> None:
    assert loads_header(dumps_header(header)) == header


def test_tuples_come_back_as_lists() -> None:
    assert loads_header(dumps_header({"t": (1, (2, 3))})) == {"t": [1, [2, 3]]}


def test_accepts_memoryview_and_bytearray() -> None:
    data = dumps_header({"op": "ping"})
    assert loads_header(memoryview(data)) == {"op": "ping"}
    assert loads_header(bytearray(data)) == {"op": "ping"}
    assert loads_header(memoryview(b"xx" + data)[2:]) == {"op": "ping"}


def test_unserializable_header_raises_protocol_error_and_packer_recovers() -> None:
    with pytest.raises(ProtocolError, match="not msgpack-serializable") as info:
        dumps_header({"op": "x", "value": object()})
    assert isinstance(info.value.__cause__, TypeError)
    assert loads_header(dumps_header({"after": 1})) == {"after": 1}


def test_too_deep_header_raises_protocol_error() -> None:
    deep: list[object] = []
    node = deep
    for _ in range(5000):
        child: list[object] = []
        node.append(child)
        node = child
    with pytest.raises(ProtocolError):
        dumps_header(deep)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xc1", "reserved type byte"),
        (b"", "empty"),
        (b"\x01\x02", "extra data"),
        (b"\xa1\xff", "invalid utf-8"),
        (b"\x81\x90\x01", "unhashable map key"),
        (b"\xdd\xff\xff\xff\xff", "array32 claiming 4G elements"),
        (b"\xdf\xff\xff\xff\xff", "map32 claiming 4G pairs"),
        (b"\xdb\xff\xff\xff\xff", "str32 claiming 4 GiB"),
        (b"\xc6\xff\xff\xff\xff", "bin32 claiming 4 GiB"),
        (b"\xc9\xff\xff\xff\xff\x01", "ext32 claiming 4 GiB"),
        (b"\x91" * 100_000 + b"\xc0", "nesting deeper than the decoder's stack"),
        (b"\x92\x01", "truncated array"),
    ],
)
def test_malformed_or_hostile_header_raises_protocol_error(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match="malformed message header") as info:
        loads_header(data)
    assert info.value.__cause__ is not None, why


def test_limits_follow_the_frame_size() -> None:
    # a legitimately large header decodes: the bounds scale with the frame
    big = {"blob": b"x" * 1_000_000, "items": list(range(100_000))}
    assert loads_header(dumps_header(big)) == big


def test_packer_is_per_thread() -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(2000):
                header = {"thread": n, "i": i, "pad": "x" * (i % 50)}
                assert loads_header(dumps_header(header)) == header
        except BaseException as err:  # reported to the test thread below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


headers = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=5) | st.integers(-1000, 1000), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, database=None)
@given(headers)
def test_round_trip_property(header: object) -> None:
    assert loads_header(dumps_header(header)) == header


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        loads_header(data)
