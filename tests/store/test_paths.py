"""Store and spill directories: creation, fallback to disk, removal, stale cleanup."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from graphexec.store import paths
from graphexec.store.paths import (
    cleanup_stale,
    create_arena,
    create_store_dir,
    owner_alive,
    remove_store_dir,
    spill_dir,
    store_root,
)
from graphexec.testing.leaks import wait_until

GiB = 2**30


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Spill directories and disk fallbacks go under tmp_path, not the real temp dir."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_statvfs(small: str, free: int) -> Callable[[str], os.statvfs_result]:
    real = os.statvfs

    def statvfs(path: str) -> os.statvfs_result:
        st = real(path)
        if os.path.realpath(path) != os.path.realpath(small):
            return st
        fields = list(st)
        fields[0] = fields[1] = 4096  # f_bsize, f_frsize
        fields[4] = free // 4096  # f_bavail
        return os.statvfs_result(fields)

    return statvfs


def test_store_root_is_dev_shm_here() -> None:
    assert store_root() == "/dev/shm"


def test_create_store_dir_layout(tmp_path: Path, private_tempdir: Path) -> None:
    path, on_shm = create_store_dir("c1", "n1", 2**20, root=str(tmp_path))
    assert path == str(tmp_path / "graphexec-c1-n1") and not on_shm
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert (Path(path) / "owner.pid").read_text().split()[0] == str(os.getpid())
    assert owner_alive(path)
    arena = create_arena(path, 64 * 2**20)
    st = os.stat(arena)
    assert st.st_size == 64 * 2**20 and st.st_blocks == 0  # sparse
    spill = spill_dir(path)
    assert spill == str(private_tempdir / "graphexec-spill-c1-n1")
    assert stat.S_IMODE(os.stat(spill).st_mode) == 0o700
    assert (Path(spill) / "owner.pid").read_text() == (Path(path) / "owner.pid").read_text()
    assert spill_dir(path) == spill  # idempotent
    remove_store_dir(path)
    assert not os.path.exists(path) and not os.path.exists(spill)
    remove_store_dir(path)  # already gone: fine


def test_store_on_dev_shm() -> None:
    path, on_shm = create_store_dir(f"test{os.getpid()}", "n0", 2**20)
    try:
        assert on_shm and path.startswith("/dev/shm/graphexec-")
    finally:
        remove_store_dir(path)


def test_small_dev_shm_falls_back_to_disk(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, private_tempdir: Path
) -> None:
    monkeypatch.setattr(os, "statvfs", _fake_statvfs("/dev/shm", free=GiB))
    with caplog.at_level(logging.WARNING, logger=paths.__name__):
        path, on_shm = create_store_dir("c2", "n1", 2 * GiB)
    assert not on_shm
    assert path == str(private_tempdir / "graphexec-c2-n1")
    assert "less than the object store's capacity" in caplog.text
    assert "on disk" in caplog.text
    remove_store_dir(path)


def test_enough_dev_shm_stays_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "statvfs", _fake_statvfs("/dev/shm", free=4 * GiB))
    path, on_shm = create_store_dir(f"test{os.getpid()}", "n1", 2 * GiB)
    try:
        assert on_shm
    finally:
        remove_store_dir(path)


def test_bad_names_and_live_duplicates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cluster id"):
        create_store_dir("../etc", "n", 1, root=str(tmp_path))
    with pytest.raises(ValueError, match="node id"):
        create_store_dir("c", "", 1, root=str(tmp_path))
    path, _ = create_store_dir("c3", "n1", 1, root=str(tmp_path))
    with pytest.raises(FileExistsError, match="in use"):
        create_store_dir("c3", "n1", 1, root=str(tmp_path))
    remove_store_dir(path)


def test_leftover_of_a_dead_owner_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "graphexec-c4-n1"
    stale.mkdir()
    (stale / "owner.pid").write_text(f"{_dead_pid()}\n")
    (stale / "arena").write_bytes(b"old")
    path, _ = create_store_dir("c4", "n1", 1, root=str(tmp_path))
    assert path == str(stale) and not (stale / "arena").exists()
    remove_store_dir(path)


def test_cleanup_stale_removes_only_dead_owners(tmp_path: Path, private_tempdir: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    live, _ = create_store_dir("live", "n1", 1, root=str(root))
    live_spill = spill_dir(live)
    dead = root / "graphexec-dead-n1"
    dead.mkdir()
    (dead / "owner.pid").write_text(f"{_dead_pid()}\n")
    dead_spill = spill_dir(str(dead))
    reused = root / "graphexec-reused-n1"  # our pid, but another process's start time
    reused.mkdir()
    (reused / "owner.pid").write_text(f"{os.getpid()}\n12345.0\n")
    creating = root / "graphexec-creating-n1"  # no owner.pid yet: hands off
    creating.mkdir()
    other = root / "someone-else"
    other.mkdir()

    removed = cleanup_stale(str(root))

    assert sorted(removed) == sorted([str(dead), str(reused)])
    assert not dead.exists() and not os.path.exists(dead_spill) and not reused.exists()
    assert os.path.exists(live) and os.path.exists(live_spill)
    assert creating.exists() and other.exists()
    remove_store_dir(live)


def test_cleanup_stale_default_roots_include_orphan_spill_dirs(private_tempdir: Path) -> None:
    orphan = private_tempdir / "graphexec-spill-gone-n1"
    orphan.mkdir()
    (orphan / "owner.pid").write_text(f"{_dead_pid()}\n")
    (orphan / "0.obj").write_bytes(b"x")
    assert str(orphan) in cleanup_stale()
    assert not orphan.exists()


def test_zombie_owner_counts_as_dead(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert wait_until(
            lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, timeout=30
        )
        zombie = tmp_path / "graphexec-zombie-n1"
        zombie.mkdir()
        started = psutil.Process(proc.pid).create_time()
        (zombie / "owner.pid").write_text(f"{proc.pid}\n{started!r}\n")
        assert not owner_alive(str(zombie))
    finally:
        proc.wait()
