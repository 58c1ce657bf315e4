"""Leak checks: no process, thread or shared-memory entry may outlive the test that made it.

The helpers here are plain functions over snapshots, so ``tests/conftest.py`` can wrap
them in autouse fixtures and other harnesses (benchmarks, ad-hoc scripts) can reuse them.
Each check is a small object: built before the test (it takes the "before" snapshot),
``finish()`` after it, which waits up to a grace period for stragglers to go away by
themselves, then cleans up what is left and returns one line per leak (empty: clean).

Policy
------
* **Processes.** A leak is a process that descends from this one, did not exist before the
  test and is still running (zombies count as exited) after the grace period. Processes
  started by something that already existed before the test (a module-scoped cluster
  restarting a worker) belong to their owner, not to the test. Multiprocessing's own
  long-lived helpers (resource tracker, forkserver) are not leaks, but what they spawn is
  checked. Leaked processes are terminated, then killed; the ones orphaned onto us by the
  kill are reaped, our own children are left for their ``Popen`` owner (see
  :func:`kill_processes`). :func:`become_subreaper` (Linux) makes orphaned grandchildren --
  a worker whose node manager was killed -- reparent to this process, so they are seen.
* **Threads.** A leak is a thread started during the test and still alive after the grace
  period that is either non-daemon (it would block interpreter exit) or a daemon named
  ``graphexec-*`` (our own threads are named so: they must be stopped by their owner).
  Threads of process-lifetime pools that libraries keep on purpose (Dask's default
  threaded-scheduler pool) are exempt. Threads cannot be killed: the report shows where
  each one is stuck.
* **Shared memory.** A leak is a new entry matching ``/dev/shm/graphexec-*`` still present
  after the grace period and not in use by a process outside this process tree (another
  test run on the same machine). Leaked entries are removed.

Nothing here sleeps for a fixed time: waits poll with a short interval against a deadline,
so a clean test pays a few milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

import psutil

__all__ = [
    "DEFAULT_GRACE",
    "SHM_PATTERN",
    "LeakCheck",
    "ProcessLeakCheck",
    "ShmLeakCheck",
    "ThreadLeakCheck",
    "become_subreaper",
    "children_snapshot",
    "describe_process",
    "describe_thread",
    "is_alive",
    "kill_processes",
    "new_processes",
    "new_shm_entries",
    "new_threads",
    "reap_adopted",
    "remove_paths",
    "shm_in_use_elsewhere",
    "shm_snapshot",
    "threads_snapshot",
    "wait_for_exit",
    "wait_for_removal",
    "wait_for_threads",
    "wait_until",
]

DEFAULT_GRACE = 5.0
"""Seconds a test's leftovers get to go away by themselves before they count as leaks."""

POLL_INTERVAL = 0.01
SHM_PATTERN = "/dev/shm/graphexec-*"
THREAD_PREFIX = "graphexec-"

# Command-line fragments of multiprocessing's process-lifetime helper processes.
_HELPER_MARKERS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "multiprocessing.semaphore_tracker",
)

_PR_SET_CHILD_SUBREAPER = 36


class LeakCheck(Protocol):
    """What every check here is: built before the test, ``finish()``-ed after it."""

    def finish(self) -> list[str]:
        """Wait out the grace period, clean up what is left, return one line per leak."""
        ...


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = POLL_INTERVAL
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value.

    The interval starts small and doubles up to ``interval * 16`` so that quick conditions
    cost almost nothing and slow ones do not spin.

    >>> wait_until(lambda: True, timeout=1.0)
    True
    >>> wait_until(lambda: False, timeout=0.0)
    False
    """
    deadline = time.monotonic() + timeout
    delay = interval / 4
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, interval * 16)


# --------------------------------------------------------------------------- processes


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    Without it a grandchild whose parent dies is reparented to init and escapes the
    process check. Returns whether it took effect (False on other platforms).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def children_snapshot(parent: psutil.Process | None = None) -> set[psutil.Process]:
    """Every descendant of ``parent`` (default: this process), zombies included.

    ``psutil.Process`` objects compare by pid *and* creation time, so a reused pid is a
    different process.
    """
    parent = parent if parent is not None else psutil.Process()
    try:
        return set(parent.children(recursive=True))
    except psutil.NoSuchProcess:
        return set()


def is_alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs: a zombie (exited, not yet reaped) does not."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def _is_helper(proc: psutil.Process, root_pid: int) -> bool:
    """A multiprocessing helper started by ``root_pid`` itself.

    Children forked by a forkserver inherit its command line, hence the parent test.
    """
    try:
        if proc.ppid() != root_pid:
            return False
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(marker in cmdline for marker in _HELPER_MARKERS)


def _owned_by_preexisting(
    proc: psutil.Process, before: Collection[psutil.Process], root_pid: int
) -> bool:
    """Whether an ancestor of ``proc`` below ``root_pid`` existed before (and owns it)."""
    try:
        ancestor = proc.parent()
        while ancestor is not None and ancestor.pid != root_pid:
            if ancestor in before and not _is_helper(ancestor, root_pid):
                return True
            ancestor = ancestor.parent()
    except psutil.Error:
        pass
    return False


def new_processes(
    before: Collection[psutil.Process], parent: psutil.Process | None = None
) -> list[psutil.Process]:
    """Live descendants that are not in ``before`` and that the test itself is answerable for.

    Excluded: zombies, multiprocessing helpers, and processes below a process that already
    existed in ``before`` (their owner outlives the test and answers for them).
    """
    parent = parent if parent is not None else psutil.Process()
    found = []
    for proc in children_snapshot(parent) - set(before):
        if not is_alive(proc) or _is_helper(proc, parent.pid):
            continue
        if _owned_by_preexisting(proc, before, parent.pid):
            continue
        found.append(proc)
    return sorted(found, key=lambda p: p.pid)


def wait_for_exit(
    procs: Iterable[psutil.Process], timeout: float, interval: float = POLL_INTERVAL
) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for ``procs`` to exit; return those still running.

    Unlike ``psutil.wait_procs`` this never reaps: an exit status stays for whoever owns
    the ``Popen`` / ``multiprocessing.Process`` object.
    """
    pending = list(procs)

    def all_gone() -> bool:
        pending[:] = [p for p in pending if is_alive(p)]
        return not pending

    wait_until(all_gone, timeout, interval)
    return pending


def kill_processes(
    procs: Iterable[psutil.Process], term_timeout: float = 2.0
) -> list[psutil.Process]:
    """Terminate ``procs`` (SIGTERM, then SIGKILL after ``term_timeout``); return survivors.

    Reaping policy: a process that was already our child is left for its owner (the
    ``Popen`` or ``multiprocessing.Process`` that started it) to reap, so its exit status
    stays right. A grandchild that the kill orphaned onto us (see :func:`become_subreaper`)
    has no owner here and is reaped, so it does not linger as a zombie.
    """
    procs = list(procs)
    me = os.getpid()
    grandchildren = [p for p in procs if _ppid(p) not in (me, None)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    alive = wait_for_exit(procs, term_timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    survivors = wait_for_exit(alive, term_timeout)
    _reap_adopted(grandchildren)
    return survivors


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return int(proc.ppid())
    except psutil.Error:
        return None


def _reap_adopted(procs: Iterable[psutil.Process]) -> None:
    """Collect exit statuses of dead processes that were reparented onto us."""
    me = os.getpid()
    pending = list(procs)

    def reap_what_reparented() -> bool:
        for proc in list(pending):
            ppid = _ppid(proc)
            if ppid == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, os.WNOHANG)
            if ppid in (me, None):
                pending.remove(proc)
        return not pending

    # A dead process reparents only once its own parent is gone too: allow a moment.
    wait_until(reap_what_reparented, timeout=0.5)


def reap_adopted(procs: Iterable[psutil.Process], timeout: float = 10.0) -> None:
    """Wait for ``procs`` to exit, then collect those reparented onto this process.

    For tests that stop daemons they did not start as children (``graphexec start``
    detaches them; as a subreaper this process adopts them): their zombies would
    otherwise stay among this process's children.
    """
    me = os.getpid()
    pending = list(procs)
    wait_for_exit(pending, timeout)

    def settled() -> bool:
        for proc in list(pending):
            ppid = _ppid(proc)
            if ppid == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, os.WNOHANG)
            if ppid == me or ppid is None:  # reaped by us, or gone for good
                pending.remove(proc)
        return not pending

    # a zombie whose parent died is reparented onto us a moment later: wait for that
    wait_until(settled, timeout)


def describe_process(proc: psutil.Process) -> str:
    """``pid 123 [ppid 100]: python -m graphexec.worker ...`` (best effort)."""
    try:
        with proc.oneshot():
            cmdline = " ".join(proc.cmdline()) or proc.name()
            return f"pid {proc.pid} [ppid {proc.ppid()}]: {cmdline[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}: (gone)"


class ProcessLeakCheck:
    """Snapshot descendants now; ``finish()`` reports and kills the new ones left running."""

    def __init__(self, grace: float = DEFAULT_GRACE) -> None:
        self.grace = grace
        self.before = children_snapshot()

    def finish(self) -> list[str]:
        leaked = wait_for_exit(new_processes(self.before), self.grace)
        # Re-list: a process that exited may have left orphans that were adopted meanwhile.
        leaked = sorted(set(leaked) | set(new_processes(self.before)), key=lambda p: p.pid)
        if not leaked:
            return []
        report = [f"leaked process {describe_process(p)}" for p in leaked]
        survivors = kill_processes(leaked)
        report += [f"could not kill {describe_process(p)}" for p in survivors]
        return report


# --------------------------------------------------------------------------- threads


def threads_snapshot() -> set[threading.Thread]:
    """The live ``threading.Thread`` objects of this process."""
    return set(threading.enumerate())


def _global_pool_threads() -> set[threading.Thread]:
    """Threads of pools that libraries keep for the life of the process, on purpose."""
    threads: set[threading.Thread] = set()
    dask_threaded = sys.modules.get("dask.threaded")
    pool = getattr(dask_threaded, "default_pool", None)
    threads.update(getattr(pool, "_threads", ()))
    return threads


def _is_checked(thread: threading.Thread) -> bool:
    return not thread.daemon or thread.name.startswith(THREAD_PREFIX)


def new_threads(before: Collection[threading.Thread]) -> list[threading.Thread]:
    """Live threads not in ``before`` that must not outlive a test (see the module policy)."""
    exempt = set(before) | _global_pool_threads() | {threading.current_thread()}
    return [t for t in threading.enumerate() if t not in exempt and t.is_alive() and _is_checked(t)]


def wait_for_threads(
    threads: Iterable[threading.Thread], timeout: float, interval: float = POLL_INTERVAL
) -> list[threading.Thread]:
    """Wait up to ``timeout`` seconds for ``threads`` to end; return those still alive."""
    pending = list(threads)

    def all_done() -> bool:
        pending[:] = [t for t in pending if t.is_alive()]
        return not pending

    wait_until(all_done, timeout, interval)
    return pending


def describe_thread(thread: threading.Thread, frames: int = 4) -> str:
    """Name, kind and the innermost ``frames`` stack frames of ``thread``."""
    kind = "daemon" if thread.daemon else "non-daemon"
    head = f"{thread.name!r} ({kind}, ident {thread.ident})"
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return head
    stack = traceback.format_stack(frame)[-frames:]
    return head + " at\n" + "".join(stack).rstrip()


class ThreadLeakCheck:
    """Snapshot threads now; ``finish()`` reports the new ones still alive after the grace."""

    def __init__(self, grace: float = DEFAULT_GRACE) -> None:
        self.grace = grace
        self.before = threads_snapshot()

    def finish(self) -> list[str]:
        leaked = wait_for_threads(new_threads(self.before), self.grace)
        return [f"leaked thread {describe_thread(t)}" for t in leaked]


# --------------------------------------------------------------------------- shared memory


def shm_snapshot(pattern: str = SHM_PATTERN) -> set[str]:
    """Paths (files or directories) matching ``pattern`` right now."""
    return set(glob.glob(pattern))


def new_shm_entries(before: Collection[str], pattern: str = SHM_PATTERN) -> list[str]:
    """Paths matching ``pattern`` that were not in ``before``."""
    return sorted(shm_snapshot(pattern) - set(before))


def wait_for_removal(
    paths: Iterable[str], timeout: float, interval: float = POLL_INTERVAL
) -> list[str]:
    """Wait up to ``timeout`` seconds for ``paths`` to disappear; return those still there."""
    pending = list(paths)

    def all_gone() -> bool:
        pending[:] = [p for p in pending if os.path.lexists(p)]
        return not pending

    wait_until(all_gone, timeout, interval)
    return pending


def _paths_used_by(pid: int) -> set[str]:
    """Files ``pid`` has open or mapped (best effort: unreadable processes give nothing)."""
    used: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                used.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6:
                used.add(fields[5].strip().removesuffix(" (deleted)"))
    return used


def shm_in_use_elsewhere(paths: Iterable[str]) -> set[str]:
    """The ``paths`` open or mapped by a process outside this process tree.

    Such an entry belongs to someone else (another test run on the same machine), not to
    the test being checked. Scans ``/proc``: only call it on the leak path.
    """
    paths = list(paths)
    if not paths:
        return set()
    ours = {os.getpid()} | {p.pid for p in children_snapshot()}
    held: set[str] = set()
    for pid in psutil.pids():
        if pid in ours:
            continue
        for used in _paths_used_by(pid):
            held.update(p for p in paths if used == p or used.startswith(p + os.sep))
    return held


def remove_paths(paths: Iterable[str]) -> list[str]:
    """Remove files and directory trees; return the paths that could not be removed."""
    failed = []
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError:
            failed.append(path)
    return failed


class ShmLeakCheck:
    """Snapshot ``/dev/shm/graphexec-*`` now; ``finish()`` reports and removes new leftovers."""

    def __init__(self, grace: float = DEFAULT_GRACE, pattern: str = SHM_PATTERN) -> None:
        self.grace = grace
        self.pattern = pattern
        self.before = shm_snapshot(pattern)

    def finish(self) -> list[str]:
        left = wait_for_removal(new_shm_entries(self.before, self.pattern), self.grace)
        leaked = sorted(set(left) - shm_in_use_elsewhere(left))
        if not leaked:
            return []
        report = [f"leaked shared-memory entry {path}" for path in leaked]
        report += [f"could not remove {path}" for path in remove_paths(leaked)]
        return report
