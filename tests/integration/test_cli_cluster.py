"""The cluster CLI for real: ``graphexec start/stop/status/submit/job`` as subprocesses.

Each test uses its own ``GRAPHEXEC_HOME`` (the directory of cluster files), so nothing
touches a cluster the user may run on this machine, and stops what it started.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from graphexec.testing import leaks
from graphexec.testing.procs import recorded_pids, with_children

pytestmark = pytest.mark.allow_leaks("threads")


def graphexec(home: str, *args: str, timeout: float = 120, env: dict | None = None):
    full_env = dict(os.environ, GRAPHEXEC_HOME=home, **(env or {}))
    full_env.pop("GRAPHEXEC_ADDRESS", None)
    full_env.pop("GRAPHEXEC_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "graphexec", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def home(tmp_path):
    path = str(tmp_path / "gh")
    try:
        yield path
    finally:
        procs = with_children(recorded_pids(path))
        graphexec(path, "stop")
        alive = leaks.wait_for_exit(procs, timeout=15)
        for proc in alive:  # only if stop failed: the test then fails below
            proc.send_signal(signal.SIGKILL)
        leaks.reap_adopted(procs)  # they were detached; as a subreaper we adopted them
        assert not alive, f"graphexec stop left {alive}"


def _start_head(home: str, *extra: str) -> str:
    out = graphexec(home, "start", "--head", "--port", "0", "--num-cpus", "1", *extra)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(home, "head.json")) as f:
        return str(json.load(f)["address"])


def test_head_join_status_jobs_and_stop(home, tmp_path):
    address = _start_head(home)
    token_path = os.path.join(home, "token")
    assert stat.S_IMODE(os.stat(token_path).st_mode) == 0o600

    joined = graphexec(
        home, "start", "--address", address, "--num-cpus", "1", "--resources", '{"special": 1}'
    )
    assert joined.returncode == 0, joined.stderr
    assert "joined the cluster" in joined.stdout

    status = graphexec(home, "status")
    assert status.returncode == 0, status.stderr
    assert "2 node(s)" in status.stdout and "special" in status.stdout

    # a driver on this machine finds the cluster with address="auto"; a task that needs
    # the joined node's resource runs there
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import graphexec as ge
            ge.init(address="auto")
            @ge.remote(resources={"special": 1})
            def where():
                return os.getpid()
            print("pid", ge.get(where.remote()))
            print("nodes", len(ge.cluster_info()["nodes"]))
            ge.shutdown()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        env=dict(os.environ, GRAPHEXEC_HOME=home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "nodes 2" in out.stdout

    # jobs: run on the head as drivers (init() with no address joins the cluster)
    job_script = tmp_path / "job.py"
    job_script.write_text(
        textwrap.dedent(
            """
            import graphexec as ge
            ge.init()
            @ge.remote
            def sq(x):
                return x * x
            print("total", sum(ge.get([sq.remote(i) for i in range(10)])))
            """
        )
    )
    done = graphexec(home, "submit", "--job-id", "sq", "--", "python", str(job_script))
    assert done.returncode == 0, done.stderr
    assert "total 285" in done.stdout
    logs = graphexec(home, "job", "logs", "sq")
    assert "total 285" in logs.stdout
    assert "SUCCEEDED" in graphexec(home, "job", "status", "sq").stdout

    failing = graphexec(home, "submit", "--", "python", "-c", "raise SystemExit(3)")
    assert failing.returncode == 1 and "failed (exit code 3)" in failing.stderr

    graphexec(home, "submit", "--no-wait", "--job-id", "sleeper", "--", "sleep", "60")
    assert "RUNNING" in graphexec(home, "job", "status", "sleeper").stdout
    assert graphexec(home, "job", "stop", "sleeper").returncode == 0
    for _ in range(50):
        if "STOPPED" in graphexec(home, "job", "status", "sleeper").stdout:
            break
    else:
        pytest.fail("the stopped job never reached STOPPED")
    listing = graphexec(home, "job", "list").stdout
    assert "sq" in listing and "sleeper" in listing

    pids = recorded_pids(home)
    assert len(pids) == 3
    procs = with_children(pids)
    stopped = graphexec(home, "stop")
    assert stopped.returncode == 0 and "stopped the head" in stopped.stdout
    assert leaks.wait_for_exit(procs, timeout=1) == []  # stop returns once they are gone
    leaks.reap_adopted(procs)
    assert not os.path.exists(token_path)
    assert "nothing to stop" in graphexec(home, "stop").stdout


def test_bad_use_gets_clear_errors(home):
    none = graphexec(home, "status")
    assert none.returncode == 1 and "graphexec start --head" in none.stderr
    both = graphexec(home, "start", "--head", "--address", "127.0.0.1:1")
    assert both.returncode == 1 and "either --head" in both.stderr
    bad_json = graphexec(home, "start", "--head", "--resources", "{not json")
    assert bad_json.returncode == 2 and "--resources must be JSON" in bad_json.stderr

    address = _start_head(home)
    again = graphexec(home, "start", "--head", "--port", "0")
    assert again.returncode == 1 and "already runs a head" in again.stderr
    empty = graphexec(home, "submit")
    assert empty.returncode == 1 and "nothing to run" in empty.stderr
    unknown = graphexec(home, "job", "status", "nope")
    assert unknown.returncode == 1 and "no job 'nope'" in unknown.stderr

    wrong = os.path.join(home, "wrong-token")
    with open(wrong, "w") as f:
        f.write("0" * 64)
    os.chmod(wrong, 0o600)
    refused = graphexec(home, "status", "--address", address, "--token-file", wrong, timeout=60)
    assert refused.returncode == 1 and "cannot connect" in refused.stderr
    os.chmod(wrong, 0o644)
    loose = graphexec(home, "status", "--address", address, "--token-file", wrong)
    assert loose.returncode == 1 and "chmod 600" in loose.stderr
