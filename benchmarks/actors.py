"""Actor benchmarks (issue 4): method-call throughput, large arguments, actor creation.

Run through ``benchmarks/run.py --suite actors`` (``make bench`` runs every suite). The same
body runs on any module with Ray's API, so ``--compare`` measures Ray side by side; Dask has
no actors in this sense and is skipped. Each figure is the best of ``repeat`` runs.

Cases (the value stored is seconds; the report turns it into a rate):
  actor-sync-calls-2000       2,000 round trips to one sync actor: call, get, call, get ...
  actor-async-calls-3x1000    an ``async def`` method, 1,000 calls in flight then get all,
                              three rounds (3,000 calls)
  actor-pipelined-calls-5000  5,000 calls submitted to one sync actor, then one get of all
  actor-call-1MB-arg          one call carrying a 1 MB numpy array, then get (per call)
  actor-create-20             create 20 actors and get one call from each (then kill them)
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

MB = 1024 * 1024
SYNC_CALLS = 2_000
ASYNC_IN_FLIGHT = 1_000
ASYNC_ROUNDS = 3
PIPELINED_CALLS = 5_000
ARG_CALLS = 20
NEW_ACTORS = 20

#: case -> number of method calls it makes (its value is the time they took)
CALLS = {
    "actor-sync-calls-2000": SYNC_CALLS,
    "actor-async-calls-3x1000": ASYNC_ROUNDS * ASYNC_IN_FLIGHT,
    "actor-pipelined-calls-5000": PIPELINED_CALLS,
}
ACTOR_CASES = {*CALLS, "actor-call-1MB-arg", f"actor-create-{NEW_ACTORS}"}
ACTOR_TARGETS = {
    "actor-sync-calls-2000": ">= 5,000 calls/s",
    "actor-pipelined-calls-5000": ">= 15,000 calls/s",
}


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _kill_all(api: Any, handles: list[Any]) -> None:
    for handle in handles:
        api.kill(handle)
    handles.clear()
    gc.collect()


def actor_cases(api: Any, repeat: int = 3) -> dict[str, float]:
    """The actor suite on ``api`` (``graphexec`` or ``ray``), with a cluster initialized."""

    # Defined here, not at module level: the actor processes cannot import this module,
    # so the classes travel by value.
    class Echo:
        """A sync actor: one method call at a time, in order."""

        def echo(self, x: Any) -> Any:
            return x

        def nbytes(self, array: np.ndarray) -> int:
            return int(array.nbytes)

    class AsyncEcho:
        """An async actor: its methods run on the actor's event loop, many in flight."""

        async def echo(self, x: Any) -> Any:
            await asyncio.sleep(0)  # yield to the loop, as a real awaiting method would
            return x

    class Trivial:
        def ping(self) -> int:
            return 1

    echo_cls = api.remote(Echo)
    async_cls = api.remote(AsyncEcho)
    trivial_cls = api.remote(Trivial)

    echo = echo_cls.remote()
    aecho = async_cls.remote()
    # wait until both actors are up, and warm the call path
    api.get([echo.echo.remote(i) for i in range(100)] + [aecho.echo.remote(i) for i in range(100)])

    def sync_calls() -> None:
        for i in range(SYNC_CALLS):
            assert api.get(echo.echo.remote(i)) == i

    def async_calls() -> None:
        for _ in range(ASYNC_ROUNDS):
            refs = [aecho.echo.remote(i) for i in range(ASYNC_IN_FLIGHT)]
            assert api.get(refs) == list(range(ASYNC_IN_FLIGHT))

    def pipelined_calls() -> None:
        refs = [echo.echo.remote(i) for i in range(PIPELINED_CALLS)]
        assert api.get(refs) == list(range(PIPELINED_CALLS))

    array = np.random.default_rng(0).random(MB // 8)

    def big_arg_calls() -> None:
        for _ in range(ARG_CALLS):
            assert api.get(echo.nbytes.remote(array)) == MB

    out = {
        "actor-sync-calls-2000": _best(sync_calls, repeat),
        "actor-async-calls-3x1000": _best(async_calls, repeat),
        "actor-pipelined-calls-5000": _best(pipelined_calls, repeat),
        "actor-call-1MB-arg": _best(big_arg_calls, repeat) / ARG_CALLS,
    }
    _kill_all(api, [echo, aecho])

    created: list[Any] = []

    def create() -> None:
        # default options: an actor needs 1 CPU to be placed and holds 0 while alive,
        # so 20 of them fit on 2 CPUs
        created.extend(trivial_cls.remote() for _ in range(NEW_ACTORS))
        assert api.get([h.ping.remote() for h in created]) == [1] * NEW_ACTORS

    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        create()
        times.append(time.perf_counter() - t)
        _kill_all(api, created)
        time.sleep(0.5)  # let the killed actors' processes exit before the next round
    out[f"actor-create-{NEW_ACTORS}"] = min(times)
    return out


def format_actor_case(case: str, value: float) -> str:
    """One report cell: the time and the rate (calls/s, actors/s) it stands for."""
    if case in CALLS:
        return f"{value:.3f} s ({CALLS[case] / value:,.0f} calls/s)"
    if case == "actor-call-1MB-arg":
        return f"{value * 1e3:.2f} ms per call ({1 / value:,.0f} calls/s)"
    if case.startswith("actor-create-"):
        count = int(case.removeprefix("actor-create-"))
        return f"{value:.2f} s ({count / value:,.1f} actors/s)"
    return f"{value:.3f} s"
