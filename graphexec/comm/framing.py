"""Wire framing: how one message is laid out on a byte stream. Pure functions, no I/O.

A message is::

    [u32 nframes] [u64 length] * nframes  frame_0 frame_1 ... frame_{n-1}

little-endian; frame 0 is the msgpack header, the others are raw payload frames.

Limits protect a reader from a broken or hostile peer: a message has 1 to
``MAX_FRAMES`` frames, and no frame is longer than ``max_frame_bytes`` (default
:data:`MAX_FRAME_BYTES`, overridable per ``listen`` / ``connect``). A reader that sees a
violation raises ``ProtocolError``; the transport then drops that one connection.

The limits of the layers above live here too, so that every process reads them alike:
an ``update-graph`` holds at most :func:`max_graph_tasks` tasks and
:func:`max_graph_bytes` bytes of task payloads, keys, dependency keys and functions (the
client refuses to send more, the scheduler refuses to take more); environment variables
override the defaults (see :func:`env_limit`).

Writers coalesce the prefix, the header and small frames into one buffer (one syscall for
the typical small message) and pass large frames through untouched (never copied).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from graphexec.errors import ProtocolError

__all__ = [
    "COALESCE_BYTES",
    "MAX_FRAMES",
    "MAX_FRAME_BYTES",
    "MAX_GRAPH_BYTES",
    "MAX_GRAPH_TASKS",
    "PREFIX_BYTES",
    "as_byte_view",
    "check_lengths",
    "check_nframes",
    "encode",
    "env_limit",
    "max_graph_bytes",
    "max_graph_tasks",
    "unpack_first",
    "unpack_lengths",
]

#: default upper bound for one frame
MAX_FRAME_BYTES = 2**31
#: upper bound for the number of frames in one message (header included)
MAX_FRAMES = 10_000
#: frames up to this size are copied into one write buffer with the prefix and header
COALESCE_BYTES = 64 * 1024
#: default upper bound for the tasks of one ``update-graph`` (``GRAPHEXEC_MAX_GRAPH_TASKS``)
MAX_GRAPH_TASKS = 1_000_000
#: default upper bound for the bytes of one ``update-graph`` (``GRAPHEXEC_MAX_GRAPH_BYTES``)
MAX_GRAPH_BYTES = 2**30

_FIRST = struct.Struct("<IQ")
#: bytes a reader needs to learn the frame count and the header's length
PREFIX_BYTES = _FIRST.size

Frame = bytes | bytearray | memoryview


def as_byte_view(frame: Frame) -> bytes | memoryview:
    """``frame`` as ``bytes`` or a flat unsigned-byte memoryview (``len`` == ``nbytes``).

    Examples
    --------
    >>> import array
    >>> len(as_byte_view(memoryview(array.array("d", [1.0, 2.0]))))
    16
    """
    if isinstance(frame, bytes):
        return frame
    view = memoryview(frame)
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise ValueError("frames must be C-contiguous buffers")
        view = view.cast("B")
    return view


def encode(
    header: bytes, frames: Sequence[Frame], *, max_frame_bytes: int = MAX_FRAME_BYTES
) -> list[bytes | memoryview]:
    """Lay out one message as buffers to write in order.

    Raises ``ProtocolError`` if the message breaks the limits (nothing should be sent).

    Examples
    --------
    >>> encode(b"\\x90", [])
    [b'\\x01\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x90']
    >>> [len(b) for b in encode(b"\\x90", [b"ab", bytes(100_000)])]
    [31, 100000]
    """
    if not frames:
        check_lengths([len(header)], max_frame_bytes=max_frame_bytes)
        return [_FIRST.pack(1, len(header)) + header]
    views = [as_byte_view(f) for f in frames]
    lengths = [len(header), *(len(v) for v in views)]
    check_nframes(len(lengths))
    check_lengths(lengths, max_frame_bytes=max_frame_bytes)
    small: list[bytes | memoryview] = [
        struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths),
        header,
    ]
    out: list[bytes | memoryview] = []
    for view in views:
        if len(view) <= COALESCE_BYTES:
            small.append(view)
        else:
            out.append(b"".join(small))
            out.append(view)
            small = []
    if small:
        out.append(b"".join(small))
    return out


def unpack_first(prefix: bytes | memoryview) -> tuple[int, int]:
    """``(nframes, header_length)`` from the first :data:`PREFIX_BYTES` of a message."""
    nframes, header_length = _FIRST.unpack(prefix)
    return nframes, header_length


def unpack_lengths(data: bytes | memoryview, count: int) -> tuple[int, ...]:
    """Unpack ``count`` frame lengths (u64 little-endian)."""
    return struct.unpack(f"<{count}Q", data)


def check_nframes(nframes: int, *, max_frames: int = MAX_FRAMES) -> None:
    """Raise ``ProtocolError`` unless ``1 <= nframes <= max_frames``.

    Examples
    --------
    >>> check_nframes(0)
    Traceback (most recent call last):
    ...
    graphexec.errors.ProtocolError: message with 0 frames (needs 1 to 10000)
    """
    if not 1 <= nframes <= max_frames:
        raise ProtocolError(f"message with {nframes} frames (needs 1 to {max_frames})")


def check_lengths(lengths: Sequence[int], *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
    """Raise ``ProtocolError`` if a frame is longer than ``max_frame_bytes``.

    Examples
    --------
    >>> check_lengths([10, 2**40])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    graphexec.errors.ProtocolError: frame 1 of 1099511627776 bytes exceeds max_frame_bytes=...
    """
    for i, n in enumerate(lengths):
        if n > max_frame_bytes:
            raise ProtocolError(f"frame {i} of {n} bytes exceeds max_frame_bytes={max_frame_bytes}")


def env_limit(name: str, default: int) -> int:
    """The positive integer in environment variable ``name``; ``default`` if it is unset
    or not a positive integer.

    Examples
    --------
    >>> env_limit("GRAPHEXEC_NO_SUCH_LIMIT", 5)
    5
    """
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def max_graph_tasks() -> int:
    """Tasks one ``update-graph`` may hold (``GRAPHEXEC_MAX_GRAPH_TASKS``)."""
    return env_limit("GRAPHEXEC_MAX_GRAPH_TASKS", MAX_GRAPH_TASKS)


def max_graph_bytes() -> int:
    """Bytes of task payloads, keys, dependency keys and functions one ``update-graph``
    may hold (``GRAPHEXEC_MAX_GRAPH_BYTES``)."""
    return env_limit("GRAPHEXEC_MAX_GRAPH_BYTES", MAX_GRAPH_BYTES)
