"""Serialization: the only place graphexec calls msgpack, pickle and cloudpickle.

* :mod:`~graphexec.protocol.wire` -- message headers (msgpack), bounded decoding.
* :mod:`~graphexec.protocol.serialize` -- Python objects to frames (pickle protocol 5
  with out-of-band buffers, cloudpickle fallback), functions and exceptions.

Every function is re-exported here except ``serialize`` itself: that name is the
submodule (``from graphexec.protocol import serialize as ser; ser.serialize(obj)``), and
binding the function to it would shadow the module for every importer.
"""

from graphexec.protocol import serialize
from graphexec.protocol.serialize import (
    OOB_MIN_BYTES,
    deserialize,
    deserialize_small,
    dumps_exception,
    dumps_function,
    frames_nbytes,
    loads_exception,
    loads_function,
    serialize_small,
)
from graphexec.protocol.wire import dumps_header, loads_header

__all__ = [
    "OOB_MIN_BYTES",
    "deserialize",
    "deserialize_small",
    "dumps_exception",
    "dumps_function",
    "dumps_header",
    "frames_nbytes",
    "loads_exception",
    "loads_function",
    "loads_header",
    "serialize",
    "serialize_small",
]
