"""A real two-host cluster: a second network namespace joined over a veth link.

Host A is this namespace (the head listens on 10.77.<n>.1); host B is a network
namespace with its own interface, 10.77.<n>.2, and its own loopback, so nothing it
serves is reachable through 127.0.0.1 from A. Host B joins with ``graphexec start
--address``. Tasks, a large object moved between the nodes' stores, and an actor on
host B (its Unix socket is invisible from A: calls fall back to TCP) all cross the link.

Needs root and ``ip netns``/veth; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest

from graphexec.testing import leaks
from graphexec.testing.procs import recorded_pids, with_children

pytestmark = pytest.mark.allow_leaks("threads")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _netns_unavailable() -> str:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"gx-probe-{uuid.uuid4().hex[:6]}"
    out = _ip("netns", "add", probe)
    if out.returncode != 0:
        return f"`ip netns add` failed: {out.stderr.strip()}"
    _ip("netns", "del", probe)
    return ""


@pytest.fixture
def hosts(tmp_path):
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    ns, veth_a, veth_b = f"gx-b-{tag}", f"gxa{tag}", f"gxb{tag}"
    subnet = 100 + int(tag, 16) % 100
    ip_a, ip_b = f"10.77.{subnet}.1", f"10.77.{subnet}.2"
    steps = [
        ("netns", "add", ns),
        ("link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
        ("link", "set", veth_b, "netns", ns),
        ("addr", "add", f"{ip_a}/24", "dev", veth_a),
        ("link", "set", veth_a, "up"),
        ("-n", ns, "addr", "add", f"{ip_b}/24", "dev", veth_b),
        ("-n", ns, "link", "set", veth_b, "up"),
        ("-n", ns, "link", "set", "lo", "up"),
    ]
    home_a, home_b = str(tmp_path / "host-a"), str(tmp_path / "host-b")
    try:
        for step in steps:
            out = _ip(*step)
            if out.returncode != 0:
                pytest.skip(f"cannot build the two-host network: ip {' '.join(step)}: {out.stderr}")
        yield {"ns": ns, "ip_a": ip_a, "ip_b": ip_b, "home_a": home_a, "home_b": home_b}
    finally:
        procs = with_children(recorded_pids(home_a) + recorded_pids(home_b))
        _cli(home_b, "stop", ns=ns)
        _cli(home_a, "stop")
        alive = leaks.wait_for_exit(procs, timeout=15)
        for proc in alive:  # stop must have ended them: make sure, and fail below
            proc.kill()
        leaks.reap_adopted(procs)
        _ip("link", "del", veth_a)
        _ip("netns", "del", ns)
        assert not alive, f"graphexec stop left {alive}"


def _cli(home: str, *args: str, ns: str = "", timeout: float = 120):
    env = dict(os.environ, GRAPHEXEC_HOME=home)
    env.pop("GRAPHEXEC_ADDRESS", None)
    env.pop("GRAPHEXEC_TOKEN", None)
    cmd = [sys.executable, "-m", "graphexec", *args]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


DRIVER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import graphexec as ge

    ge.init(address=sys.argv[1])
    nodes = ge.cluster_info()["nodes"]
    print("hosts", sorted(n["host"] for n in nodes))

    @ge.remote(resources={"host_b": 1})
    def make_on_b(n):
        return np.arange(n, dtype=np.int64)  # 8 MB: lives in host B's store

    @ge.remote(resources={"host_a": 1})
    def total_on_a(array):
        return int(array.sum())  # read across the link into host A

    n = 1_000_000
    print("sum", ge.get(total_on_a.remote(make_on_b.remote(n))), n * (n - 1) // 2)

    @ge.remote
    class Counter:
        def __init__(self):
            self.n = 0
        def incr(self):
            self.n += 1
            return self.n

    c = Counter.options(resources={"host_b": 1}).remote()
    print("actor", ge.get([c.incr.remote() for _ in range(100)])[-1])
    ge.shutdown()
    """
)


def test_two_hosts_share_work_data_and_actors(hosts, tmp_path):
    head = _cli(
        hosts["home_a"],
        "start", "--head", "--host", hosts["ip_a"], "--port", "0", "--num-cpus", "1",
        "--resources", '{"host_a": 1}',
    )  # fmt: skip
    assert head.returncode == 0, head.stderr
    with open(os.path.join(hosts["home_a"], "head.json")) as f:
        address = json.load(f)["address"]
    assert address.startswith(hosts["ip_a"] + ":")

    token_copy = tmp_path / "token-copy"  # what a user copies to the other machine
    shutil.copy(os.path.join(hosts["home_a"], "token"), token_copy)
    os.chmod(token_copy, 0o600)
    joined = _cli(
        hosts["home_b"],
        "start", "--address", address, "--token-file", str(token_copy), "--num-cpus", "1",
        "--resources", '{"host_b": 1}',
        ns=hosts["ns"],
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, GRAPHEXEC_HOME=hosts["home_a"])
    with open(os.path.join(hosts["home_a"], "token")) as f:
        env["GRAPHEXEC_TOKEN"] = f.read().strip()
    out = subprocess.run(
        [sys.executable, str(script), address],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["hosts"] == str(sorted([hosts["ip_a"], hosts["ip_b"]]))
    got, expected = lines["sum"].split()
    assert got == expected
    assert lines["actor"] == "100"
