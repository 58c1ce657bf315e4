"""Actor lifetimes across drivers: detached actors outlive their driver, others do not.

Each test starts its own cluster in this process and runs a second driver as a
subprocess connected to it (``GRAPHEXEC_TOKEN`` + the address), then looks from here at
what that driver left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

import graphexec as ge
import graphexec.client.api as ge_api

ActorDiedError = ge.exceptions.ActorDiedError

DRIVER_TIMEOUT = 60

_DRIVER_PRELUDE = """
import os, sys, time
import graphexec as ge

ge.init(address=sys.argv[1], namespace=sys.argv[2] if len(sys.argv) > 2 else None)

@ge.remote
class Keeper:
    def __init__(self, tag):
        self.tag = tag
        self.calls = 0

    def ping(self):
        self.calls += 1
        return (self.tag, self.calls)

    def pid(self):
        return os.getpid()
"""

# creates a detached and a non-detached named actor, uses both, exits cleanly
_CREATE_AND_EXIT = """
d = Keeper.options(name="detached-name", lifetime="detached").remote("d")
n = Keeper.options(name="non-detached-name").remote("n")
assert ge.get([d.ping.remote(), n.ping.remote()], timeout=30) == [("d", 1), ("n", 1)]
print(ge.get(d.pid.remote(), timeout=30), ge.get(n.pid.remote(), timeout=30))
ge.shutdown()
"""

# same, then waits to be killed (no clean disconnect)
_CREATE_AND_HANG = """
d = Keeper.options(name="detached-name", lifetime="detached").remote("d")
n = Keeper.options(name="non-detached-name").remote("n")
assert ge.get([d.ping.remote(), n.ping.remote()], timeout=30) == [("d", 1), ("n", 1)]
print(ge.get(d.pid.remote(), timeout=30), ge.get(n.pid.remote(), timeout=30), flush=True)
time.sleep(120)
"""


def _driver_env() -> dict[str, str]:
    token = ge_api._session["cluster"].token
    env = dict(os.environ, GRAPHEXEC_TOKEN=token)
    env.pop("GRAPHEXEC_ADDRESS", None)
    return env


def _driver_cmd(body: str, address: str, namespace: str | None = None) -> list[str]:
    cmd = [sys.executable, "-c", textwrap.dedent(_DRIVER_PRELUDE) + textwrap.dedent(body)]
    cmd.append(address)
    if namespace is not None:
        cmd.append(namespace)
    return cmd


def _run_driver(address: str, namespace: str | None = None) -> tuple[int, int]:
    proc = subprocess.run(
        _driver_cmd(_CREATE_AND_EXIT, address, namespace),
        env=_driver_env(),
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout}\n{proc.stderr}"
    detached_pid, other_pid = map(int, proc.stdout.split())
    return detached_pid, other_pid


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _name_is_gone(name: str, namespace: str | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            ge.get_actor(name, namespace=namespace)
        except ValueError:
            return True
        return False

    return check


def _rows(name: str) -> list[dict[str, Any]]:
    return [r for r in ge.cluster_info()["actors"] if r["name"] == name]


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): it exited, its parent has not reaped it yet
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_detached_actor_outlives_its_driver_non_detached_does_not():
    ctx = ge.init(num_cpus=2)
    try:
        detached_pid, other_pid = _run_driver(ctx.address)

        # the non-detached actor ended with its driver: its name is free, its process gone
        _wait_for(_name_is_gone("non-detached-name"), 5, "the non-detached actor to end")
        _wait_for(lambda: _pid_gone(other_pid), 5, "the non-detached actor's process to exit")
        rows = _rows("non-detached-name")
        assert all(r["state"] == "DEAD" for r in rows), rows

        # the detached one lives on, with its state, in the same process
        d = ge.get_actor("detached-name")
        assert ge.get(d.ping.remote(), timeout=30) == ("d", 2)
        assert ge.get(d.pid.remote(), timeout=30) == detached_pid
        (row,) = _rows("detached-name")
        assert row["state"] == "ALIVE" and row["detached"] is True
        assert row["class_name"] == "Keeper" and row["pid"] == detached_pid

        # its name is still taken, for this driver too
        with pytest.raises(ValueError, match="already exists"):
            ge.remote(type("Keeper", (), {})).options(name="detached-name").remote()

        # dropping this driver's handle does not end a detached actor
        del d
        time.sleep(0.3)
        d = ge.get_actor("detached-name")
        assert ge.get(d.ping.remote(), timeout=30) == ("d", 3)

        ge.kill(d)
        _wait_for(_name_is_gone("detached-name"), 5, "the killed actor's name to be freed")
        with pytest.raises(ActorDiedError, match="killed"):
            ge.get(d.ping.remote(), timeout=30)
        _wait_for(lambda: _pid_gone(detached_pid), 5, "the killed actor's process to exit")
    finally:
        ge.shutdown()


def test_non_detached_actor_ends_when_its_driver_is_killed():
    ctx = ge.init(num_cpus=2)
    proc = None
    try:
        proc = subprocess.Popen(
            _driver_cmd(_CREATE_AND_HANG, ctx.address, "drivers-ns"),
            env=_driver_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"driver failed:\n{proc.stderr.read() if proc.stderr else ''}"
        detached_pid, other_pid = map(int, line.split())

        # both alive while their driver runs, in its namespace only
        other = ge.get_actor("non-detached-name", namespace="drivers-ns")
        assert ge.get(other.ping.remote(), timeout=30) == ("n", 2)
        with pytest.raises(ValueError, match="no live actor"):
            ge.get_actor("non-detached-name")

        proc.send_signal(signal.SIGKILL)  # no clean disconnect
        proc.wait(DRIVER_TIMEOUT)

        _wait_for(
            _name_is_gone("non-detached-name", "drivers-ns"), 5, "the non-detached actor to end"
        )
        with pytest.raises(ActorDiedError, match="ended with the driver"):
            ge.get(other.ping.remote(), timeout=30)
        _wait_for(lambda: _pid_gone(other_pid), 5, "the non-detached actor's process to exit")

        d = ge.get_actor("detached-name", namespace="drivers-ns")
        assert ge.get(d.ping.remote(), timeout=30) == ("d", 2)
        assert ge.get(d.pid.remote(), timeout=30) == detached_pid
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=DRIVER_TIMEOUT)
        ge.shutdown()
