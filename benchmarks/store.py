"""Object store benchmarks (issue 3): put/get of large arrays, one object to many tasks.

Run through ``benchmarks/run.py --suite store`` (``make bench`` runs every suite). The same
body runs on any module with Ray's API, so ``--compare`` measures Ray side by side.

Cases:
  put-1MB / put-100MB / put-1GB   time of one ``put`` of a float64 array (best of N), GB/s
  get-1MB / get-100MB / get-1GB   time of one ``get`` on the same node (median of N)
  one-100MB-to-8-tasks            8 tasks each summing the same 100 MB put object: time,
                                  and how much the private memory of the cluster's
                                  processes grew (zero-copy reads: about 0; a copy per
                                  task: about 800 MB; the one shared copy is not counted)
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import numpy as np
import psutil

MB = 1024 * 1024
SIZES = {"1MB": MB, "100MB": 100 * MB, "1GB": 1024 * MB}
#: gets are sub-millisecond: a median over this many samples, whatever the size
GET_SAMPLES = 20


def _settle(seconds: float = 0.3) -> None:
    """Let released objects be freed before the next measurement."""
    gc.collect()
    time.sleep(seconds)


def _cluster_private_bytes() -> int:
    """Private (unshared) memory of every process this one started: workers, servers.

    Shared-memory object stores count as shared, so this grows by the object's size
    for every task that had to copy it, and stays flat when tasks read it in place.
    """
    total = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            total += proc.memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def store_cases(api: Any, repeat: int = 3) -> dict[str, float]:
    out: dict[str, float] = {}

    @api.remote
    def total(x: Any) -> float:
        return float(x.sum())

    for label, nbytes in SIZES.items():
        array = np.random.default_rng(0).random(nbytes // 8)
        puts = []
        for _ in range(repeat):
            t = time.perf_counter()
            ref = api.put(array)
            puts.append(time.perf_counter() - t)
            del ref
            _settle(0.1 if nbytes < 1024 * MB else 0.5)
        out[f"put-{label}"] = min(puts)
        ref = api.put(array)
        gets = []
        for _ in range(max(repeat, GET_SAMPLES)):
            t = time.perf_counter()
            value = api.get(ref)
            gets.append(time.perf_counter() - t)
            del value
        out[f"get-{label}"] = statistics.median(gets)
        del ref, array
        _settle(0.5)

    array = np.ones(100 * MB // 8)
    api.get([total.remote(api.put(np.ones(8))) for _ in range(8)])  # warm the workers
    _settle()
    base = _cluster_private_bytes()
    ref = api.put(array)
    del array
    t = time.perf_counter()
    sums = api.get([total.remote(ref) for _ in range(8)])
    out["one-100MB-to-8-tasks"] = time.perf_counter() - t
    out["one-100MB-to-8-tasks-memory"] = float(_cluster_private_bytes() - base)
    assert sums == [100 * MB // 8] * 8
    del ref
    _settle()
    return out


def format_case(case: str, value: float) -> str:
    if case.endswith("-memory"):
        return f"{value / MB:+,.0f} MB private memory"
    if case.startswith("put-"):
        size = SIZES[case.removeprefix("put-")]
        return f"{value * 1e3:.1f} ms ({size / value / 1e9:.1f} GB/s)"
    if case.startswith("get-"):
        return f"{value * 1e3:.2f} ms"
    return f"{value:.3f} s"
