"""``from graphexec.util.queue import Queue, Empty, Full``, as ``ray.util.queue`` offers.

The queue is defined in :mod:`graphexec.actors.queue`; this module only re-exports it.
"""

from __future__ import annotations

from graphexec.actors.queue import Empty, Full, Queue

__all__ = ["Empty", "Full", "Queue"]
