"""The object store on the filesystem: its directories, arena file and spill files, and
cleaning up after dead clusters.

Layout::

    /dev/shm/graphexec-<cluster>-<node>/         the store directory (mode 0700)
        owner.pid                                 pid (and start time) of the creating process
        arena                                     the sparse arena file, ``capacity`` bytes
    <tmp>/graphexec-spill-<cluster>-<node>/       spilled objects, on disk (mode 0700)
        owner.pid                                 same owner as the store directory

Policy
------
* The store goes in ``/dev/shm`` when it exists and is writable, else in the temp directory.
  When the filesystem there has less free space than the capacity, the store goes to the
  temp directory (on disk) instead and a warning is logged. A ``warnings.warn`` would turn
  into an error under the test suite's warning filter. A store on disk still works, just
  slower once pages are evicted.
* Spill directories are always under the temp directory, never on tmpfs: spilling into
  memory would free nothing. Spill files are written from, and read back into, the arena
  in :data:`SPILL_CHUNK` pieces, so an object never has a second full copy in memory.
* Stale directories are those whose ``owner.pid`` names a process that no longer exists or
  is a zombie. A process with the same pid but a different start time also counts as dead
  (pid reuse).
  :func:`cleanup_stale` removes them and nothing else. A directory without ``owner.pid``
  (one being created right now, or not ours) is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile

import psutil

__all__ = [
    "ARENA_NAME",
    "OWNER_FILE",
    "PREFIX",
    "SHM_ROOT",
    "SPILL_CHUNK",
    "SPILL_PREFIX",
    "cleanup_stale",
    "create_arena",
    "create_store_dir",
    "owner_alive",
    "read_spill_file",
    "remove_store_dir",
    "spill_dir",
    "store_root",
    "write_spill_file",
]

logger = logging.getLogger(__name__)

SHM_ROOT = "/dev/shm"
PREFIX = "graphexec-"
SPILL_PREFIX = "graphexec-spill-"
OWNER_FILE = "owner.pid"
ARENA_NAME = "arena"
#: Bytes per write or read call when spilling or restoring an object.
SPILL_CHUNK = 8 * 2**20

_NAME_RE = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*")


def store_root() -> str:
    """``/dev/shm`` when it exists and is writable, else the temp directory."""
    if os.path.isdir(SHM_ROOT) and os.access(SHM_ROOT, os.W_OK | os.X_OK):
        return SHM_ROOT
    return tempfile.gettempdir()


def _is_shm(path: str) -> bool:
    real = os.path.realpath(path)
    return real == SHM_ROOT or real.startswith(SHM_ROOT + os.sep)


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def create_store_dir(
    cluster: str, node: str, capacity: int, *, root: str | None = None
) -> tuple[str, bool]:
    """Create ``<root>/graphexec-<cluster>-<node>/``; return ``(path, on_shm)``.

    ``on_shm`` tells whether the directory is on ``/dev/shm`` (memory) or fell back to disk.
    A leftover directory of the same name whose owner is dead is replaced. One whose
    owner is alive raises ``FileExistsError``.
    """
    for what, name in (("cluster", cluster), ("node", node)):
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"{what} id {name!r} must be letters, digits, '_', '.' or '-'")
    base = root if root is not None else store_root()
    if _free_bytes(base) < capacity:
        fallback = tempfile.gettempdir()
        if os.path.realpath(fallback) != os.path.realpath(base):
            logger.warning(
                "%s has %d bytes free, less than the object store's capacity of %d bytes: "
                "putting the object store on disk in %s instead (slower); make %s larger "
                "or lower object_store_memory",
                base,
                _free_bytes(base),
                capacity,
                fallback,
                base,
            )
            base = fallback
    path = os.path.join(base, f"{PREFIX}{cluster}-{node}")
    if os.path.lexists(path):
        if _read_owner(path) is None or owner_alive(path):
            raise FileExistsError(f"object store directory {path} is in use")
        remove_store_dir(path)
    os.mkdir(path, 0o700)
    _write_owner(path, os.getpid())
    return path, _is_shm(path)


def create_arena(store_dir: str, capacity: int) -> str:
    """Create the sparse arena file of ``capacity`` bytes in ``store_dir``; return its path.

    Nothing is allocated until pages are touched (tmpfs and disk files alike are sparse).
    """
    path = os.path.join(store_dir, ARENA_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, capacity)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def _spill_path(store_dir: str) -> str:
    name = os.path.basename(os.path.normpath(store_dir))
    suffix = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    return os.path.join(tempfile.gettempdir(), f"{SPILL_PREFIX}{suffix}")


def spill_dir(store_dir: str) -> str:
    """The spill directory of ``store_dir``, on disk; created (mode 0700) if missing."""
    path = _spill_path(store_dir)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return path
    owner = _read_owner(store_dir)
    _write_owner(path, owner[0] if owner else os.getpid(), owner[1] if owner else None)
    return path


def remove_store_dir(store_dir: str) -> None:
    """Remove ``store_dir`` and its spill directory (missing ones are fine)."""
    for path in (_spill_path(store_dir), store_dir):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)


def cleanup_stale(root: str | None = None) -> list[str]:
    """Remove store and spill directories whose owner process is dead; return their paths.

    With no ``root``, looks in :func:`store_root` and in the temp directory (where both
    fallback stores and spill directories live).
    """
    roots = [root] if root is not None else [store_root(), tempfile.gettempdir()]
    removed: list[str] = []
    for base in dict.fromkeys(os.path.realpath(r) for r in roots):
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            path = os.path.join(base, name)
            if not name.startswith(PREFIX) or not os.path.isdir(path):
                continue
            if _read_owner(path) is None or owner_alive(path):
                continue
            if name.startswith(SPILL_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(path)
            else:
                remove_store_dir(path)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------- spill files


def write_spill_file(path: str, data: memoryview) -> None:
    """Write ``data`` (a slice of the arena) to a new file, in chunks; release ``data``.

    A failed write leaves no file behind.
    """
    try:
        with open(path, "wb") as f:  # large writes bypass the buffer: no extra copy
            for start in range(0, data.nbytes, SPILL_CHUNK):
                f.write(data[start : start + SPILL_CHUNK])
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    finally:
        data.release()


def read_spill_file(path: str, dest: memoryview) -> None:
    """Fill ``dest`` (a slice of the arena) from a spill file, in chunks; release ``dest``."""
    try:
        with open(path, "rb", buffering=0) as f:
            pos = 0
            while pos < dest.nbytes:
                n = f.readinto(dest[pos : pos + SPILL_CHUNK])
                if not n:
                    raise OSError(f"spill file {path} is truncated at {pos} bytes")
                pos += n
    finally:
        dest.release()


# --------------------------------------------------------------------------- owner file


def _process_start(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _write_owner(path: str, pid: int, started: float | None = None) -> None:
    if started is None:
        started = _process_start(pid)
    text = f"{pid}\n{started!r}\n" if started is not None else f"{pid}\n"
    tmp = os.path.join(path, f".{OWNER_FILE}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(path, OWNER_FILE))  # readers never see half a file


def _read_owner(path: str) -> tuple[int, float | None] | None:
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            lines = f.read().split()
        pid = int(lines[0])
        started = float(lines[1]) if len(lines) > 1 else None
    except (OSError, ValueError, IndexError):
        return None
    return pid, started


def owner_alive(path: str) -> bool:
    """Whether the process named in ``path``'s ``owner.pid`` is running.

    Unknown or unreadable owners count as alive, so nothing of theirs is removed.
    """
    owner = _read_owner(path)
    if owner is None:
        return True
    pid, started = owner
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False  # died; its parent has not reaped it yet
        now: float | None = float(proc.create_time())
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        now = None
    return started is None or now is None or abs(now - started) < 1.0
