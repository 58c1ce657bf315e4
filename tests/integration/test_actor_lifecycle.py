"""Actors on a real local cluster: restarts, deaths, kills, names, resources, misuse.

One module-scoped cluster (2 CPUs) serves every test: an actor costs a process, a
cluster costs a second. Each test creates its own actors (named ones with names unique
to the test) and kills them before it ends, so tests do not see each other's actors.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

import graphexec as ge

ActorDiedError = ge.exceptions.ActorDiedError
ActorUnavailableError = ge.exceptions.ActorUnavailableError
GetTimeoutError = ge.exceptions.GetTimeoutError

# the module-scoped cluster's client threads are checked when its fixture is torn down
pytestmark = pytest.mark.allow_leaks("threads")

TIMEOUT = 30


@pytest.fixture(scope="module")
def cluster():
    ctx = ge.init(num_cpus=2)
    try:
        yield ctx
    finally:
        ge.shutdown()


@ge.remote
class Counter:
    def __init__(self, marker: str | None = None) -> None:
        self.n = 0
        if marker is not None and os.path.exists(marker):
            time.sleep(1.0)  # a slow constructor: the actor is seen PENDING / RESTARTING

    def incr(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def die(self) -> None:
        os._exit(1)

    def die_once(self, marker: str) -> str:
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write("x")
            os._exit(1)
        return f"survived {self.n}"

    def fail(self) -> None:
        raise ValueError("method boom")

    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"


@ge.remote
class BadInit:
    def __init__(self) -> None:
        raise ValueError("constructor boom")

    def ping(self) -> str:
        return "pong"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


def row(handle: Any) -> dict[str, Any] | None:
    """The actor's row in ``cluster_info()['actors']`` (None if not listed)."""
    for r in ge.cluster_info()["actors"]:
        if r["actor_id"] == handle.actor_id:
            return r
    return None


def in_state(handle: Any, state: str, **fields: Any) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        r = row(handle)
        if r is None or r["state"] != state:
            return None
        if any(r[k] != v for k, v in fields.items()):
            return None
        return r

    return check


# --------------------------------------------------------------------------- restarts


def test_restart_after_exit_in_a_method(cluster):
    a = Counter.options(max_restarts=1).remote()
    assert ge.get([a.incr.remote(), a.incr.remote()], timeout=TIMEOUT) == [1, 2]
    pid1 = ge.get(a.pid.remote(), timeout=TIMEOUT)

    with pytest.raises(ActorUnavailableError, match="die"):
        ge.get(a.die.remote(), timeout=TIMEOUT)
    # the constructor ran again in a new process: the state starts over
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    pid2 = ge.get(a.pid.remote(), timeout=TIMEOUT)
    assert pid2 != pid1
    r = wait_for(in_state(a, "ALIVE", restarts=1), what="ALIVE after one restart")
    assert r["pid"] == pid2

    # no restart left: the call in flight and every later one fail for good
    with pytest.raises(ActorDiedError, match="died unexpectedly after 1 restart"):
        ge.get(a.die.remote(), timeout=TIMEOUT)
    with pytest.raises(ActorDiedError, match="died unexpectedly"):
        ge.get(a.incr.remote(), timeout=TIMEOUT)
    wait_for(in_state(a, "DEAD"), what="DEAD")


def test_no_restart_means_later_calls_raise_actor_died(cluster):
    a = Counter.options(max_restarts=0).remote()
    pid = ge.get(a.pid.remote(), timeout=TIMEOUT)
    with pytest.raises(ActorDiedError, match=rf"pid {pid}\) died unexpectedly"):
        ge.get(a.die.remote(), timeout=TIMEOUT)
    for _ in range(2):
        with pytest.raises(ActorDiedError, match="died unexpectedly") as info:
            ge.get(a.incr.remote(), timeout=TIMEOUT)
        assert "max_restarts" in str(info.value)
    assert wait_for(in_state(a, "DEAD"), what="DEAD")["restarts"] == 0


def test_task_retry_resends_a_call_lost_with_the_process(cluster, tmp_path):
    marker = str(tmp_path / "died-once")
    a = Counter.options(max_restarts=1, max_task_retries=1).remote()
    pid1 = ge.get(a.pid.remote(), timeout=TIMEOUT)
    # first run: the process dies mid-call; the call is resent to the restarted actor
    assert ge.get(a.die_once.remote(marker), timeout=TIMEOUT) == "survived 0"
    assert os.path.exists(marker)
    assert ge.get(a.pid.remote(), timeout=TIMEOUT) != pid1
    assert wait_for(in_state(a, "ALIVE"), what="ALIVE")["restarts"] == 1
    ge.kill(a)


def test_states_pending_alive_restarting_dead(cluster, tmp_path):
    slow = tmp_path / "slow-constructor"
    slow.write_text("x")
    a = Counter.options(max_restarts=1).remote(str(slow))
    r = wait_for(in_state(a, "PENDING"), what="PENDING while constructing")
    assert r["class_name"] == "Counter" and r["detached"] is False and r["restarts"] == 0
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    pid = ge.get(a.pid.remote(), timeout=TIMEOUT)
    r = wait_for(in_state(a, "ALIVE"), what="ALIVE")
    assert r["pid"] == pid and r["node_id"] == ge.nodes()[0]["NodeID"]
    assert r["waiting"] == "" and r["namespace"] == "default" and r["name"] == ""

    with pytest.raises(ActorUnavailableError):
        ge.get(a.die.remote(), timeout=TIMEOUT)
    wait_for(in_state(a, "RESTARTING", restarts=1), what="RESTARTING (slow constructor)")
    ref = a.incr.remote()  # made while restarting: waits for the new incarnation
    assert ge.get(ref, timeout=TIMEOUT) == 1
    wait_for(in_state(a, "ALIVE", restarts=1), what="ALIVE again")

    ge.kill(a)
    wait_for(in_state(a, "DEAD"), what="DEAD after kill")


# --------------------------------------------------------------------------- kill


def test_kill_no_restart_fails_pending_and_later_calls(cluster):
    a = Counter.options(max_restarts=1).remote()
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    running = a.sleep.remote(30)
    queued = a.incr.remote()
    time.sleep(0.2)  # let the sleep start
    start = time.monotonic()
    ge.kill(a, no_restart=True)
    for ref in (running, queued, a.incr.remote()):
        with pytest.raises(ActorDiedError, match="killed"):
            ge.get(ref, timeout=TIMEOUT)
    assert time.monotonic() - start < 10
    r = wait_for(in_state(a, "DEAD"), what="DEAD")
    assert r["restarts"] == 0  # max_restarts did not apply
    ge.kill(a)  # killing a dead actor again is harmless


def test_kill_with_restart_restarts_the_actor(cluster):
    a = Counter.options(max_restarts=1).remote()
    assert ge.get([a.incr.remote(), a.incr.remote()], timeout=TIMEOUT) == [1, 2]
    pid1 = ge.get(a.pid.remote(), timeout=TIMEOUT)
    ge.kill(a, no_restart=False)
    wait_for(
        lambda: (r := row(a)) and r["state"] == "ALIVE" and r["restarts"] == 1 and r["pid"] != pid1,
        what="restarted after kill(no_restart=False)",
    )
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    assert ge.get(a.pid.remote(), timeout=TIMEOUT) != pid1
    ge.kill(a)


# --------------------------------------------------------------------------- errors


def test_constructor_exception_fails_every_call(cluster):
    a = BadInit.remote()
    refs = [a.ping.remote(), a.ping.remote()]  # made before the constructor failed
    for ref in refs:
        with pytest.raises(ActorDiedError, match="constructor boom") as info:
            ge.get(ref, timeout=TIMEOUT)
        assert isinstance(info.value.__cause__, ValueError)
        assert "constructor boom" in str(info.value.__cause__)
    with pytest.raises(ActorDiedError, match="constructor") as info:
        ge.get(a.ping.remote(), timeout=TIMEOUT)  # made after it
    assert isinstance(info.value.__cause__, ValueError)
    assert wait_for(in_state(a, "DEAD"), what="DEAD")["restarts"] == 0


def test_constructor_exception_is_not_restarted(cluster):
    a = BadInit.options(max_restarts=3).remote()
    with pytest.raises(ActorDiedError) as info:
        ge.get(a.ping.remote(), timeout=TIMEOUT)
    assert isinstance(info.value.__cause__, ValueError)
    assert wait_for(in_state(a, "DEAD"), what="DEAD")["restarts"] == 0


def test_method_exception_fails_only_that_call(cluster):
    a = Counter.remote()
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    pid = ge.get(a.pid.remote(), timeout=TIMEOUT)
    with pytest.raises(ValueError, match="method boom"):
        ge.get(a.fail.remote(), timeout=TIMEOUT)
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 2  # state kept
    assert ge.get(a.pid.remote(), timeout=TIMEOUT) == pid
    assert row(a)["state"] == "ALIVE"
    ge.kill(a)


# --------------------------------------------------------------------------- SIGKILL


def test_sigkill_from_outside_restarts_the_actor(cluster):
    a = Counter.options(max_restarts=1).remote()
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    pid1 = ge.get(a.pid.remote(), timeout=TIMEOUT)
    os.kill(pid1, signal.SIGKILL)
    wait_for(
        lambda: (r := row(a)) and r["state"] == "ALIVE" and r["restarts"] == 1 and r["pid"] != pid1,
        what="restarted after SIGKILL",
    )
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1  # constructor ran again
    assert ge.get(a.pid.remote(), timeout=TIMEOUT) != pid1
    ge.kill(a)


def test_sigkill_from_outside_without_restarts_is_death(cluster):
    a = Counter.remote()
    pid = ge.get(a.pid.remote(), timeout=TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    wait_for(in_state(a, "DEAD"), what="DEAD after SIGKILL")
    with pytest.raises(ActorDiedError, match=rf"pid {pid}\) died unexpectedly"):
        ge.get(a.incr.remote(), timeout=TIMEOUT)


# --------------------------------------------------------------------------- names


def test_named_actors(cluster):
    a = Counter.options(name="lc-named").remote()
    b = ge.get_actor("lc-named")
    assert b == a and b.actor_id == a.actor_id
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    assert ge.get(b.incr.remote(), timeout=TIMEOUT) == 2  # one actor, one state

    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="lc-named").remote()
    c = Counter.options(name="lc-named", get_if_exists=True).remote()
    assert c == a
    assert ge.get(c.incr.remote(), timeout=TIMEOUT) == 3

    with pytest.raises(ValueError, match="no live actor named 'lc-missing'"):
        ge.get_actor("lc-missing")

    # namespaces keep names apart
    other = Counter.options(name="lc-named", namespace="lc-other").remote()
    assert other != a
    assert ge.get_actor("lc-named", namespace="lc-other") == other
    assert ge.get_actor("lc-named") == a
    assert ge.get(other.incr.remote(), timeout=TIMEOUT) == 1
    only = Counter.options(name="lc-only-other", namespace="lc-other").remote()
    with pytest.raises(ValueError, match="no live actor"):
        ge.get_actor("lc-only-other")
    assert ge.get_actor("lc-only-other", namespace="lc-other") == only
    r = wait_for(in_state(other, "ALIVE"), what="ALIVE")
    assert r["name"] == "lc-named" and r["namespace"] == "lc-other"

    # killing frees the name
    for handle in (a, other, only):
        ge.kill(handle)

    def name_gone() -> bool:
        try:
            ge.get_actor("lc-named")
        except ValueError:
            return True
        return False

    wait_for(name_gone, what="the name to be freed")
    again = Counter.options(name="lc-named").remote()
    assert again != a
    assert ge.get(again.incr.remote(), timeout=TIMEOUT) == 1
    ge.kill(again)


# --------------------------------------------------------------------------- resources


def test_num_cpus_actor_holds_its_cpus(cluster):
    wait_for(lambda: ge.available_resources().get("CPU") == 2.0, what="2 CPUs free")
    a = Counter.options(num_cpus=2).remote()
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    wait_for(lambda: ge.available_resources().get("CPU") == 0.0, 3, what="CPU 0")
    ge.kill(a)
    wait_for(lambda: ge.available_resources().get("CPU") == 2.0, 3, what="CPU back to 2")


def test_actor_without_num_cpus_holds_none(cluster):
    a = Counter.remote()
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1
    assert ge.available_resources().get("CPU") == 2.0
    ge.kill(a)


def test_infeasible_actor_stays_pending_and_says_why(cluster):
    a = Counter.options(resources={"gizmo": 1}).remote()
    ref = a.incr.remote()
    with pytest.raises(GetTimeoutError):
        ge.get(ref, timeout=1)
    r = row(a)
    assert r is not None and r["state"] == "PENDING"
    assert "gizmo" in r["waiting"] and r["pid"] == 0
    ge.kill(a)
    with pytest.raises(ActorDiedError, match="killed"):
        ge.get(ref, timeout=TIMEOUT)
    wait_for(in_state(a, "DEAD"), what="DEAD")


def test_get_timeout_on_a_pending_actor_says_why(cluster):
    a = Counter.options(resources={"gizmo": 1}).remote()
    try:
        # the scheduler's verdict reaches this process first (on a busy machine, the
        # placement attempt can take longer than the 1 s get below)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = [r for r in ge.cluster_info()["actors"] if r["actor_id"] == a._actor_id]
            if row and "gizmo" in row[0]["waiting"]:
                break
            time.sleep(0.05)
        with pytest.raises(GetTimeoutError) as info:
            ge.get(a.incr.remote(), timeout=1)
        assert "gizmo" in str(info.value), str(info.value)
    finally:
        ge.kill(a)


# --------------------------------------------------------------------------- misuse


def test_bad_input(cluster):
    a = Counter.remote()
    with pytest.raises(AttributeError, match="no method 'nope'") as info:
        a.nope  # noqa: B018
    for name in ("incr", "pid", "die", "fail"):
        assert name in str(info.value)
    with pytest.raises(TypeError, match="cannot be called directly"):
        a.incr()
    with pytest.raises(TypeError, match="cannot be instantiated directly"):
        Counter()
    with pytest.raises(TypeError, match="unknown actor option"):
        Counter.options(num_cpu=1)
    with pytest.raises(TypeError, match="unknown actor method option"):
        a.incr.options(num_cpus=1)
    bad_values = [
        {"num_cpus": -1},
        {"num_cpus": "two"},
        {"max_restarts": -2},
        {"max_task_retries": 1.5},
        {"max_concurrency": 0},
        {"lifetime": "forever"},
        {"name": ""},
        {"resources": {"CPU": 1}},
        {"resources": {"gizmo": -1}},
    ]
    for options in bad_values:
        with pytest.raises(ValueError):
            Counter.options(**options)
    with pytest.raises(ValueError, match="num_returns"):
        a.incr.options(num_returns=0)
    with pytest.raises(TypeError, match="actor handle"):
        ge.kill("not a handle")
    with pytest.raises(ValueError, match="actor name"):
        ge.get_actor("")
    assert ge.get(a.incr.remote(), timeout=TIMEOUT) == 1  # the actor is unharmed
    ge.kill(a)


def test_exceptions_module_is_importable():
    import importlib

    module = importlib.import_module("graphexec.exceptions")
    assert module.ActorDiedError is ActorDiedError
