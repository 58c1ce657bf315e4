"""The msgpack control plane: message headers to bytes and back.

A header is a small tree of msgpack-native values (dicts, lists, str, bytes, int, float,
bool, None). Tuples come back as lists; ``bytes`` stay ``bytes`` (``use_bin_type=True``,
``raw=False``); map keys may be any hashable msgpack value (``strict_map_key=False``).
Large payloads never go into a header: they travel as frames (see ``serialize``).

Policy:

* Decoding is bounded by the size of the frame: no string, bin, array, map or ext inside
  a header may claim more elements or bytes than the frame holds, so a hostile length
  field cannot make the decoder allocate more than the peer actually sent.
* Every failure, either way, is a :class:`~graphexec.errors.ProtocolError` chained to the
  msgpack error. Encoding failures mean nothing was sent.
* The encoder reuses one ``msgpack.Packer`` per thread (twice as fast as ``packb`` for
  the small headers the scheduler sends by the ten thousand).
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]

from graphexec.errors import ProtocolError

__all__ = ["dumps_header", "loads_header"]

_DECODE_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


class _ThreadPacker(threading.local):
    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True, autoreset=True)


_local = _ThreadPacker()


def dumps_header(obj: Any) -> bytes:
    """Encode a message header with msgpack.

    Examples
    --------
    >>> loads_header(dumps_header({"op": "ping", "n": 1}))
    {'op': 'ping', 'n': 1}
    """
    try:
        data: bytes = _local.packer.pack(obj)
    except (TypeError, ValueError, OverflowError) as err:
        # a failed pack may leave partial output behind: start again with a fresh packer
        _local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        raise ProtocolError(
            f"message header is not msgpack-serializable ({err}); headers hold plain "
            "dicts, lists, str, bytes, numbers, bool and None; send other objects as "
            "frames (graphexec.protocol.serialize)"
        ) from err
    return data


def loads_header(data: bytes | bytearray | memoryview) -> Any:
    """Decode a header frame, refusing anything larger than the frame can hold.

    Examples
    --------
    >>> loads_header(b"\\x92\\x01\\xa1a")
    [1, 'a']
    >>> loads_header(b"\\xc1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    graphexec.errors.ProtocolError: malformed message header (1 bytes): ...
    """
    limit = len(data) if not isinstance(data, memoryview) else data.nbytes
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            use_list=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit // 2,
            max_ext_len=limit,
        )
    except _DECODE_ERRORS as err:
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise ProtocolError(f"malformed message header ({limit} bytes): {detail}") from err
