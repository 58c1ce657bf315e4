"""Transports: how graphexec processes talk (DESIGN.md §4).

Everything outside ``comm/`` uses this interface only:

* :func:`connect` / :func:`listen` -- open an authenticated connection / serve one.
* :class:`Comm` -- ``read()`` / ``write(header, frames)`` / ``write_nowait`` / ``close()``.
* :class:`Listener` -- ``address``, ``stop()``, ``await close()``.
* :func:`parse_address` / :func:`format_address` -- ``"tcp://host:port"``,
  ``"inproc://name"``.

Modules: ``core`` (interface, dispatch), ``framing`` (wire layout and limits), ``auth``
(HMAC handshake), ``tcp`` (Tornado), ``inproc`` (same process, for tests).
"""

from graphexec.comm.core import (
    Comm,
    Handler,
    Listener,
    connect,
    format_address,
    listen,
    parse_address,
)
from graphexec.comm.framing import MAX_FRAME_BYTES, MAX_FRAMES

__all__ = [
    "MAX_FRAMES",
    "MAX_FRAME_BYTES",
    "Comm",
    "Handler",
    "Listener",
    "connect",
    "format_address",
    "listen",
    "parse_address",
]
