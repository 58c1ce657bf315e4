"""Starting and stopping local clusters: nothing survives shutdown, exit or a killed driver."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

import graphexec as ge


@ge.remote
def square(x):
    return x * x


def _descendants():
    return psutil.Process().children(recursive=True)


def _run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_shutdown_leaves_no_process_and_get_after_shutdown_fails():
    ge.init(num_cpus=1)
    ref = square.remote(4)
    assert ge.get(ref) == 16
    children = _descendants()
    assert len(children) >= 3  # scheduler, node manager, worker
    ge.shutdown()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    with pytest.raises(RuntimeError, match="not initialized"):
        ge.get(square.remote(2))
    with pytest.raises(RuntimeError, match="not initialized"):
        ge.put(1)


def test_interpreter_exit_cleans_up():
    result = _run_script("""
        import graphexec as ge, psutil
        ge.init(num_cpus=1)
        @ge.remote
        def f(): return 1
        assert ge.get(f.remote()) == 1
        print(",".join(str(p.pid) for p in psutil.Process().children(recursive=True)))
    """)
    assert result.returncode == 0, result.stderr
    pids = [int(p) for p in result.stdout.strip().split(",")]
    procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []


def test_killed_driver_leaves_nothing_behind():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import graphexec as ge, psutil, sys, time
        ge.init(num_cpus=1)
        @ge.remote
        def f(): return 1
        ge.get(f.remote())
        print(",".join(str(p.pid) for p in psutil.Process().children(recursive=True)),
              flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.strip().split(",")]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
        _, alive = psutil.wait_procs(procs, timeout=10)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_init_to_first_result_is_fast():
    # a behaviour check with a generous bound (the figure itself is in benchmarks/)
    result = _run_script("""
        import time
        t = time.perf_counter()
        import graphexec as ge
        ge.init(num_cpus=2)
        @ge.remote
        def f(): return 1
        assert ge.get(f.remote()) == 1
        print(time.perf_counter() - t)
        ge.shutdown()
    """)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) < 10


def test_scheduler_death_raises_scheduler_lost_not_a_hang():
    from graphexec.errors import SchedulerLostError

    ge.init(num_cpus=1)
    try:
        scheduler_pid = ge.cluster_info()["pid"]

        @ge.remote
        def slow():
            import time

            time.sleep(30)

        ref = ge.persist(slow.remote())
        psutil.Process(scheduler_pid).kill()
        with pytest.raises(SchedulerLostError, match="scheduler"):
            ge.get(ref, timeout=20)
        with pytest.raises(SchedulerLostError):
            ge.get(square.remote(1))
    finally:
        ge.shutdown()
