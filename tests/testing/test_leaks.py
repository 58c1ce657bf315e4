"""Tests of the leak checks in graphexec.testing.leaks and of the harness in tests/conftest.py."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from graphexec.testing import leaks

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
PROJECT_ROOT = CONFTEST.parents[1]
HAS_SHM = os.path.isdir("/dev/shm")


def _pid_running(pid: int) -> bool:
    try:
        return leaks.is_alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def _spawn_sleep(seconds: float = 30) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", str(seconds)])


# --------------------------------------------------------------------------- processes


def test_spawned_subprocess_is_detected_and_killed() -> None:
    before = leaks.children_snapshot()
    proc = _spawn_sleep()
    try:
        new = leaks.new_processes(before)
        assert [p.pid for p in new] == [proc.pid]
        assert "sleep" in leaks.describe_process(new[0])
        assert leaks.kill_processes(new) == []
        assert not leaks.is_alive(new[0])
        assert leaks.new_processes(before) == []
    finally:
        proc.kill()
        proc.wait()


def test_wait_for_exit_returns_as_soon_as_processes_exit() -> None:
    proc = _spawn_sleep(0.05)
    (child,) = leaks.new_processes(set())
    started = time.monotonic()
    assert leaks.wait_for_exit([child], timeout=10) == []
    assert time.monotonic() - started < 5
    # wait_for_exit does not reap: the exit status is still there for the Popen owner.
    assert proc.wait(timeout=5) == 0


def test_wait_for_exit_gives_up_at_the_deadline() -> None:
    proc = _spawn_sleep()
    try:
        (child,) = leaks.new_processes(set())
        assert leaks.wait_for_exit([child], timeout=0.05) == [child]
    finally:
        proc.kill()
        proc.wait()


def test_zombie_counts_as_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    child = psutil.Process(proc.pid)
    assert leaks.wait_until(lambda: not leaks.is_alive(child), timeout=10)
    assert child.status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped
    assert leaks.new_processes(set()) == []
    assert proc.wait(timeout=5) == 0


def test_children_of_a_preexisting_process_belong_to_it() -> None:
    # A long-lived parent (think: a module-scoped cluster) that spawns a child on request.
    script = "import subprocess, sys; sys.stdin.readline(); subprocess.run(['sleep', '30'])"
    # children this process had already (zombies other tests left to reap) are not ours
    baseline = leaks.children_snapshot()
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        before = leaks.children_snapshot()
        assert parent.stdin is not None
        parent.stdin.write(b"go\n")
        parent.stdin.flush()
        assert leaks.wait_until(lambda: len(leaks.children_snapshot() - baseline) == 2, timeout=10)
        assert leaks.new_processes(before) == []  # the grandchild is the parent's business
        assert len(leaks.new_processes(baseline)) == 2
    finally:
        leaks.kill_processes(psutil.Process(parent.pid).children(recursive=True))
        parent.kill()
        parent.wait()
        assert parent.stdin is not None
        parent.stdin.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER")
def test_orphaned_grandchild_is_adopted_and_seen() -> None:
    assert leaks.become_subreaper()
    before = leaks.children_snapshot()
    out = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], capture_output=True, check=True
    )
    orphan = psutil.Process(int(out.stdout))
    try:
        assert leaks.wait_until(lambda: orphan.ppid() == os.getpid(), timeout=10)
        assert leaks.new_processes(before) == [orphan]
    finally:
        assert leaks.kill_processes([orphan]) == []
        # Adopted before the kill, so it counts as our child: reaping is the owner's job.
        os.waitpid(orphan.pid, 0)
    assert leaks.new_processes(before) == []
    assert orphan not in leaks.children_snapshot()


def test_grandchild_orphaned_by_the_kill_is_reaped() -> None:
    assert leaks.become_subreaper()
    baseline = leaks.children_snapshot()  # what earlier tests left is not this test's
    script = "import subprocess; subprocess.run(['sleep', '30'])"
    parent = subprocess.Popen([sys.executable, "-c", script])
    assert leaks.wait_until(lambda: len(leaks.children_snapshot() - baseline) == 2, timeout=10)
    procs = leaks.new_processes(baseline)
    assert leaks.kill_processes(procs) == []
    parent.wait(timeout=5)
    # The sleep was reparented onto us when its parent died, and reaped by the kill.
    assert leaks.children_snapshot() - baseline == set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver")
def test_forkserver_is_exempt_but_its_children_are_not() -> None:
    ctx = multiprocessing.get_context("forkserver")
    before = leaks.children_snapshot()
    proc = ctx.Process(target=time.sleep, args=(60,), name="graphexec-test-sleeper")
    proc.start()
    try:
        # The forkserver (and its resource tracker) live as long as this process: exempt.
        # The child it forked carries the forkserver's command line but is still checked.
        assert [p.pid for p in leaks.new_processes(before)] == [proc.pid]
    finally:
        proc.kill()
        proc.join(10)
    assert leaks.new_processes(before) == []


def test_clean_check_is_fast() -> None:
    checks: list[leaks.LeakCheck] = [
        leaks.ProcessLeakCheck(),
        leaks.ThreadLeakCheck(),
        leaks.ShmLeakCheck(),
    ]
    started = time.monotonic()
    assert [check.finish() for check in checks] == [[], [], []]
    assert time.monotonic() - started < 1.0


def test_process_check_reports_and_kills() -> None:
    check = leaks.ProcessLeakCheck(grace=0.05)
    proc = _spawn_sleep()
    report = check.finish()
    assert len(report) == 1
    assert f"pid {proc.pid}" in report[0]
    assert proc.wait(timeout=5) == -15  # terminated by the check, status left for us


# --------------------------------------------------------------------------- threads


def test_thread_rules() -> None:
    before = leaks.threads_snapshot()
    stop = threading.Event()
    threads = [
        threading.Thread(target=stop.wait, name="worker", daemon=False),
        threading.Thread(target=stop.wait, name="graphexec-heartbeat", daemon=True),
        threading.Thread(target=stop.wait, name="some-library-daemon", daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        found = leaks.new_threads(before)
        assert sorted(t.name for t in found) == ["graphexec-heartbeat", "worker"]
        assert leaks.wait_for_threads(found, timeout=0.05) == found
        text = leaks.describe_thread(threads[0])
        assert "'worker' (non-daemon" in text
        assert "wait" in text  # the stack shows where it is stuck
    finally:
        stop.set()
    assert leaks.wait_for_threads(threads, timeout=10) == []
    assert leaks.new_threads(before) == []


def test_thread_check_reports() -> None:
    check = leaks.ThreadLeakCheck(grace=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="graphexec-stuck", daemon=True)
    thread.start()
    try:
        (line,) = check.finish()
        assert "graphexec-stuck" in line
    finally:
        stop.set()
        thread.join(10)


# --------------------------------------------------------------------------- shared memory


@pytest.mark.skipif(not HAS_SHM, reason="no /dev/shm")
def test_shm_entry_is_detected_and_removed() -> None:
    before = leaks.shm_snapshot()
    entry = Path(f"/dev/shm/graphexec-leaktest-{uuid.uuid4().hex}")
    (entry / "objects").mkdir(parents=True)
    (entry / "objects" / "blob").write_bytes(b"x" * 16)
    try:
        assert leaks.new_shm_entries(before) == [str(entry)]
        # Open by this very process: that is ours, not someone else's.
        with open(entry / "objects" / "blob", "rb"):
            assert leaks.shm_in_use_elsewhere([str(entry)]) == set()
        assert leaks.wait_for_removal([str(entry)], timeout=0.05) == [str(entry)]
        assert leaks.remove_paths([str(entry)]) == []
        assert not entry.exists()
        assert leaks.new_shm_entries(before) == []
    finally:
        leaks.remove_paths([str(entry)])


@pytest.mark.skipif(not HAS_SHM, reason="no /dev/shm")
def test_shm_check_reports_and_removes() -> None:
    check = leaks.ShmLeakCheck(grace=0.05)
    entry = Path(f"/dev/shm/graphexec-leaktest-{uuid.uuid4().hex}")
    entry.write_bytes(b"segment")
    (line,) = check.finish()
    assert str(entry) in line
    assert not entry.exists()


# --------------------------------------------------------------------------- the harness


LEAKY_TESTS = """
    import subprocess, threading, uuid
    from pathlib import Path
    import pytest

    def test_clean():
        pass

    PROCS = []

    def test_leaks_a_process():
        PROCS.append(subprocess.Popen(["sleep", "60"]))  # kept: no ResourceWarning
        Path({pidfile!r}).write_text(str(PROCS[-1].pid))

    def test_leaks_a_thread():
        threading.Thread(target=threading.Event().wait, name="graphexec-leaky", daemon=True).start()

    def test_leaks_shm():
        Path("/dev/shm/graphexec-leaktest-" + uuid.uuid4().hex).write_bytes(b"x")

    @pytest.mark.allow_leaks("threads")
    def test_allowed_leak():
        threading.Thread(target=threading.Event().wait, name="graphexec-allowed", daemon=True).start()
"""


@pytest.mark.skipif(not HAS_SHM, reason="no /dev/shm")
def test_harness_fails_leaky_tests_and_cleans_up(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pidfile = tmp_path / "leaked.pid"
    shm_before = leaks.shm_snapshot()
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyprojecttoml(
        textwrap.dedent(
            """
            [tool.pytest.ini_options]
            addopts = "-p no:cacheprovider --strict-markers"
            filterwarnings = ["error"]
            markers = ["allow_leaks(*kinds): test may leave these behind"]
            """
        )
    )
    pytester.makepyfile(textwrap.dedent(LEAKY_TESTS.format(pidfile=str(pidfile))))
    monkeypatch.setenv("GRAPHEXEC_LEAK_GRACE", "0.2")
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))

    result = pytester.runpytest_subprocess(timeout=120)

    result.assert_outcomes(passed=5, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*test left processes behind*",
            "*leaked process pid*sleep 60*",
            "*test left threads behind*",
            "*leaked thread 'graphexec-leaky'*",
            "*test left shared-memory entries behind*",
        ]
    )
    pid = int(pidfile.read_text())
    assert leaks.wait_until(lambda: not _pid_running(pid), timeout=5)
    assert leaks.new_shm_entries(shm_before) == []
