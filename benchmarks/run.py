"""The graphexec benchmark suite: prints time and rate for each case.

Run with ``make bench`` (or ``python benchmarks/run.py``). ``--compare`` also runs the
same cases on Ray and Dask distributed when they are importable (``make bench-compare``
installs them into a separate venv, never as graphexec dependencies). ``--json PATH``
writes the figures.

Cases (issue 2):
  init-to-first-result  fresh interpreter: import, init() a 2-CPU local cluster, one task
  tiny-tasks-10k        10,000 independent no-op tasks, one get
  chain-2000            a 2,000-task linear chain (fused into one task by the optimizer)
  tree-reduce-10k       a binary tree reduction over 10,000 leaves (~20,000 tasks)
  put-get-1MB           put + get of a 1 MB numpy array (round trips/s)

Suites: ``--suite tasks`` (the cases above), ``store`` (``benchmarks/store.py``), ``actors``
(``benchmarks/actors.py``; graphexec and Ray only: Dask has no Ray-style actors), ``all``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from actors import ACTOR_CASES, ACTOR_TARGETS, actor_cases, format_actor_case
from store import SIZES, format_case, store_cases

HERE = os.path.dirname(os.path.abspath(__file__))


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# --------------------------------------------------------------------------- graphexec


def bench_graphexec_startup(repeat: int = 3) -> float:
    code = textwrap.dedent("""
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
    return min(
        float(subprocess.check_output([sys.executable, "-c", code], text=True))
        for _ in range(repeat)
    )


def ray_api_cases(api: Any, repeat: int) -> dict[str, float]:
    """The same program on any module with Ray's API (``graphexec`` or ``ray``)."""

    @api.remote
    def noop(x: int) -> int:
        return x

    @api.remote
    def inc(x: int) -> int:
        return x + 1

    @api.remote
    def add(x: int, y: int) -> int:
        return x + y

    api.get([noop.remote(i) for i in range(200)])  # warm the workers

    def tiny() -> None:
        assert len(api.get([noop.remote(i) for i in range(10_000)])) == 10_000

    def chain() -> None:
        ref = inc.remote(0)
        for _ in range(1_999):
            ref = inc.remote(ref)
        assert api.get(ref) == 2_000

    def tree() -> None:
        level = [noop.remote(i) for i in range(10_000)]
        while len(level) > 1:
            nxt = [add.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        assert api.get(level[0]) == sum(range(10_000))

    array = np.random.default_rng(0).random(1024 * 1024 // 8)

    def put_get() -> None:
        for _ in range(20):
            api.get(api.put(array))

    return {
        "tiny-tasks-10k": _best(tiny, repeat),
        "chain-2000": _best(chain, repeat),
        "tree-reduce-10k": _best(tree, repeat),
        "put-get-1MB": _best(put_get, repeat) / 20,
    }


def bench_graphexec(repeat: int, suites: list[str]) -> dict[str, float]:
    import graphexec as ge

    out: dict[str, float] = {}
    if "tasks" in suites:
        out["init-to-first-result"] = bench_graphexec_startup()
    ge.init(num_cpus=2)
    try:
        if "tasks" in suites:
            out.update(ray_api_cases(ge, repeat))
        if "store" in suites:
            out.update(store_cases(ge, repeat))
        if "actors" in suites:
            out.update(actor_cases(ge, repeat))
    finally:
        ge.shutdown()
    return out


def bench_ray(repeat: int, suites: list[str]) -> dict[str, float]:
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        ray.get(ray.remote(lambda: 1).remote())
        out = {"init-to-first-result": time.perf_counter() - t}
        if "tasks" in suites:
            out.update(ray_api_cases(ray, repeat))
        if "store" in suites:
            out.update(store_cases(ray, repeat))
        if "actors" in suites:
            out.update(actor_cases(ray, repeat))
    finally:
        ray.shutdown()
    return out


def bench_dask(repeat: int, suites: list[str]) -> dict[str, float]:
    from dask import delayed
    from dask.distributed import Client, LocalCluster

    out: dict[str, float] = {}
    if "tasks" not in suites:
        return out  # the store and actor suites are Ray-API only
    t = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    try:

        def noop(x: int) -> int:
            return x

        def inc(x: int) -> int:
            return x + 1

        def add(x: int, y: int) -> int:
            return x + y

        client.submit(noop, 1).result()
        out["init-to-first-result"] = time.perf_counter() - t

        def tiny() -> None:
            client.gather(client.map(noop, range(10_000), pure=False))

        def chain() -> None:
            x = delayed(inc)(0)
            for _ in range(1_999):
                x = delayed(inc)(x)
            assert x.compute() == 2_000

        def tree() -> None:
            level = [delayed(noop)(i) for i in range(10_000)]
            while len(level) > 1:
                nxt = [delayed(add)(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
                if len(level) % 2:
                    nxt.append(level[-1])
                level = nxt
            assert level[0].compute() == sum(range(10_000))

        array = np.random.default_rng(0).random(1024 * 1024 // 8)

        def put_get() -> None:
            for _ in range(20):
                [fut] = client.scatter([array], hash=False)
                fut.result()
                del fut

        out["tiny-tasks-10k"] = _best(tiny, repeat)
        out["chain-2000"] = _best(chain, repeat)
        out["tree-reduce-10k"] = _best(tree, repeat)
        out["put-get-1MB"] = _best(put_get, repeat) / 20
    finally:
        client.close()
        cluster.close()
    return out


# --------------------------------------------------------------------------- report

TASKS = {"tiny-tasks-10k": 10_000, "chain-2000": 2_000, "tree-reduce-10k": 19_999}
TARGETS = {
    "init-to-first-result": "< 1 s",
    "tiny-tasks-10k": "< 2 s",
    "chain-2000": "< 0.5 s",
    "tree-reduce-10k": "< 3 s",
    "put-100MB": ">= 4 GB/s",
    "get-1MB": "< 1 ms",
    "get-100MB": "< 1 ms",
    "get-1GB": "< 1 ms",
    "one-100MB-to-8-tasks-memory": "one copy (no per-task copies)",
    **ACTOR_TARGETS,
}
STORE_CASES = {f"{op}-{size}" for op in ("put", "get") for size in SIZES} | {
    "one-100MB-to-8-tasks",
    "one-100MB-to-8-tasks-memory",
}


def report(results: dict[str, dict[str, float]]) -> str:
    engines = [e for e in results if results[e]]
    lines = [
        "| case | " + " | ".join(engines) + " | target |",
        "|---|" + "---|" * len(engines) + "---|",
    ]
    for case in results[engines[0]]:
        cells = []
        for engine in engines:
            value = results[engine].get(case)
            if value is None:
                cells.append("n/a")
            elif case in STORE_CASES:
                cells.append(format_case(case, value))
            elif case in ACTOR_CASES:
                cells.append(format_actor_case(case, value))
            elif case in TASKS:
                cells.append(f"{value:.3f} s ({TASKS[case] / value:,.0f} tasks/s)")
            elif case == "put-get-1MB":
                cells.append(f"{value * 1e3:.2f} ms per round trip")
            else:
                cells.append(f"{value:.3f} s")
        cells.append(TARGETS.get(case, ""))
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compare", action="store_true", help="also run Ray and Dask")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--suite", choices=["tasks", "store", "actors", "all"], default="all")
    args = parser.parse_args()
    suites = ["tasks", "store", "actors"] if args.suite == "all" else [args.suite]
    results = {"graphexec": bench_graphexec(args.repeat, suites)}
    if args.compare:
        for name, fn in (("ray", bench_ray), ("dask", bench_dask)):
            try:
                results[name] = fn(args.repeat, suites)
            except ImportError as err:
                print(f"skipping {name}: {err}", file=sys.stderr)
            except Exception as err:  # a reference engine failing must not hide our figures
                print(f"{name} failed: {err!r}", file=sys.stderr)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
