"""Shared test harness: every test must leave no process, thread or shared memory behind.

Three autouse fixtures wrap each test (STYLE.md rule 16); the logic lives in
:mod:`graphexec.testing.leaks`. After the test, each waits up to a grace period
(``GRAPHEXEC_LEAK_GRACE`` seconds, default 5) for leftovers to go by themselves, polling,
so a clean test pays milliseconds. What is left fails the test at teardown, listed, and is
cleaned up (processes killed, ``/dev/shm/graphexec-*`` entries removed) so later tests
are unaffected. Teardown runs processes first, then threads, then shared memory: killing a
leaked worker is what lets its segments and the threads waiting on it go.

A test that must leave something behind on purpose says so with
``@pytest.mark.allow_leaks("processes" | "threads" | "shm", ...)`` and a comment why.
Fixtures with a wider scope (module, session) are checked once at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from graphexec.testing import leaks

pytest_plugins = ("pytester",)

GRACE = float(os.environ.get("GRAPHEXEC_LEAK_GRACE", leaks.DEFAULT_GRACE))
LEAK_KINDS = frozenset({"processes", "threads", "shm"})


def _allowed(request: pytest.FixtureRequest, kind: str) -> bool:
    for marker in request.node.iter_markers("allow_leaks"):
        unknown = set(marker.args) - LEAK_KINDS
        if unknown:
            raise pytest.UsageError(f"allow_leaks: unknown kinds {sorted(unknown)}")
        if kind in marker.args:
            return True
    return False


def _fail_on(report: list[str], what: str) -> None:
    if report:
        lines = "\n  ".join(report)
        pytest.fail(f"test left {what} behind (cleaned up now):\n  {lines}", pytrace=False)


# Definition order is setup order; teardown runs in reverse (processes first).


@pytest.fixture(autouse=True)
def _check_shm_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    check = leaks.ShmLeakCheck(grace=GRACE)
    yield
    if not _allowed(request, "shm"):
        _fail_on(check.finish(), "shared-memory entries")


@pytest.fixture(autouse=True)
def _check_thread_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    check = leaks.ThreadLeakCheck(grace=GRACE)
    yield
    if not _allowed(request, "threads"):
        _fail_on(check.finish(), "threads")


@pytest.fixture(autouse=True)
def _check_process_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    check = leaks.ProcessLeakCheck(grace=GRACE)
    yield
    if not _allowed(request, "processes"):
        _fail_on(check.finish(), "processes")


# --------------------------------------------------------------------------- session


_session_checks: list[leaks.LeakCheck] = []


def pytest_configure(config: pytest.Config) -> None:
    # Orphaned grandchildren (a worker whose node manager died) reparent to the test
    # process instead of init, so the process check still sees them.
    leaks.become_subreaper()


def pytest_sessionstart(session: pytest.Session) -> None:
    _session_checks[:] = [leaks.ProcessLeakCheck(grace=GRACE), leaks.ShmLeakCheck(grace=GRACE)]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After session-scoped fixtures are torn down: nothing of the run may remain."""
    report = [line for check in _session_checks for line in check.finish()]
    _session_checks.clear()
    if not report:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "leaks at the end of the session (cleaned up now)", red=True)
        for line in report:
            reporter.write_line(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
