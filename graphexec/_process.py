"""What every graphexec server process does at start: die with its owner, stop cleanly.

Local clusters are children of the driver (DESIGN.md §9): each server process asks the
kernel for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``) and also polls its
owner's pid, so a driver killed with SIGKILL leaves nothing behind within a second or
two. SIGTERM and SIGINT ask the server to close gracefully; the server's ``close`` is the
only shutdown path. ``GRAPHEXEC_PROFILE_DIR`` makes each server write a cProfile file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

__all__ = ["configure_logging", "die_with_parent", "run_server"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """Ask for SIGTERM when the parent exits (Linux only; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        # the parent died before prctl took effect
        os._exit(0)


def configure_logging(name: str) -> None:
    level = os.environ.get("GRAPHEXEC_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _watch_owner(owner_pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if not _alive(owner_pid):
            stop.set()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def run_server(
    start: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    finished: Callable[[], Awaitable[object]],
    *,
    owner_pid: int | None = None,
) -> None:
    """Run a server until it finishes, a signal arrives, or the owner process dies."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await start()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(finished())]
        if owner_pid:
            waiters.append(asyncio.ensure_future(_watch_owner(owner_pid, stop)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.set()
            await close()
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    profile_dir = os.environ.get("GRAPHEXEC_PROFILE_DIR")
    if not profile_dir:
        asyncio.run(main())
        return
    # developer aid: GRAPHEXEC_PROFILE_DIR=/tmp/prof writes one cProfile file per process
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(main())
    finally:
        profiler.disable()
        name = os.path.basename(sys.argv[0]).replace(".py", "") or "server"
        profiler.dump_stats(os.path.join(profile_dir, f"{name}-{os.getpid()}.prof"))
