"""The ``graphexec`` command (also ``python -m graphexec``).

Subcommands: ``demo`` (the end-to-end showcase behind ``make demo``), ``bench`` (the
benchmark suite), and the cluster commands ``start``, ``stop``, ``status``, ``submit`` and
``job`` (``graphexec/cluster_cli.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys
import time
from types import ModuleType

from graphexec.cluster_cli import add_cluster_commands, run

__all__ = ["main"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_example(name: str) -> ModuleType:
    path = os.path.join(REPO, "examples", f"{name}.py")
    if not os.path.exists(path):
        raise SystemExit(
            f"example {name!r} not found at {path}: run the demo from a "
            "checkout of the graphexec repository"
        )
    spec = importlib.util.spec_from_file_location(f"graphexec_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import graphexec as ge

    ctx = ge.init(num_cpus=args.num_cpus)
    try:

        @ge.remote
        def ping() -> str:
            return "pong"

        ge.get(ping.remote())
        started = time.perf_counter() - t0
        cpus = int(ge.cluster_resources()["CPU"])
        print(
            f"graphexec {ge.__version__}: local cluster at {ctx.address} with {cpus} "
            f"worker processes, first result {started:.2f} s after start\n"
        )
        print("1) map-reduce word count (tasks with num_returns, refs as arguments)")
        _load_example("wordcount").main()
        print("\n2) a lazy graph, optimized before it runs (cull, fuse, order)")
        _load_example("lazy_graph").main()
        print("\n3) one large array shared by many tasks (shared-memory object store)")
        _load_example("shared_array").main()
        print("\n4) actors: rollout actors gather experience, the driver learns a policy")
        _load_example("actor_sim").main()
        print("\n5) many tiny tasks")

        @ge.remote
        def noop(i: int) -> int:
            return i

        t = time.perf_counter()
        n = 10_000
        assert ge.get([noop.remote(i) for i in range(n)]) == list(range(n))
        dt = time.perf_counter() - t
        print(f"{n:,} tasks in {dt:.2f} s ({n / dt:,.0f} tasks/s)")
    finally:
        ge.shutdown()
    print("\ndone: the cluster is shut down and its processes are gone")
    return 0


def bench(args: argparse.Namespace) -> int:
    path = os.path.join(REPO, "benchmarks", "run.py")
    sys.argv = [path, *args.rest]
    runpy.run_path(path, run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphexec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the end-to-end showcase")
    p_demo.add_argument("--num-cpus", type=int, default=None)
    p_demo.set_defaults(func=demo)
    p_bench = sub.add_parser("bench", help="run the benchmark suite")
    p_bench.add_argument("rest", nargs=argparse.REMAINDER)
    p_bench.set_defaults(func=bench)
    add_cluster_commands(sub)
    args = parser.parse_args(argv)
    if args.command in ("demo", "bench"):
        result: int = args.func(args)
        return result
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
