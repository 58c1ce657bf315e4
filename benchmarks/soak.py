"""Soak test (issue 5): a mixed workload for N minutes, checking that memory stays flat.

Command (10 minutes plus ~15 s of start-up; not part of ``make test`` nor ``make bench``)::

    .venv/bin/python benchmarks/soak.py --minutes 10

``--minutes 0.5`` is a quick check of the script itself (too short for a verdict that
means much: judge runs of 5 minutes or more). ``--analyze FILE.json`` judges the samples
of an earlier run again (e.g. with another ``--warmup``), without running anything.
It is standalone, not a ``benchmarks/run.py`` suite: run.py reports best-of-N timings
per engine, while this runs for a fixed time and ends with a verdict and an exit code.

What it does: ``ge.init(num_cpus=2)``, then until the time is up, one cycle after another:

* 1,000 tiny tasks and a binary-tree reduction of their results (~2,000 tasks);
* tasks that return numpy arrays of 1-10 MB (through the object store) and tasks that
  read them;
* ``ge.put`` of a 1-10 MB array, three tasks reading it and a ``ge.get`` of it;
* two long-lived actors: ``Counter`` (100 synchronous calls, then a burst of 500 calls
  in flight) and ``Holder`` (its state, a 1-5 MB array passed as an argument, is replaced
  on every call, never grown);
* ``ge.wait`` over 20 short sleeping tasks (first half, then the rest);
* every ``--actor-churn`` seconds (20): two short-lived actors created, called, ``ge.kill``-ed.

Every reference is dropped at the end of its step, so every object can be freed.

Every ``--interval`` seconds (10; less for short runs, to get about 30 samples) it
samples every process of the cluster, found as the driver's descendants (psutil):
the driver, ``graphexec.scheduler``, ``graphexec.worker.nodemanager``, each task worker
(``graphexec.worker``), each actor process (``--actor``, or a ``--standby`` process that
``cluster_info()`` lists as an actor's pid) and the idle standby processes. From
``/proc/PID/smaps_rollup``: RSS, USS (private pages) and the anonymous memory ("heap":
the Python heap, malloc arenas, numpy buffers; the shared-memory arena of the store is
not in it). It also records the object store's usage (``ge.object_store_stats()``), the
scheduler's counts from ``ge.cluster_info()`` (tasks, actors, clients), each process's
thread and file descriptor counts, and the load average.

Verdict. The first 10% of the run (``--warmup``) is warm-up: imports, worker pools,
pymalloc arenas, the store arena's first touch. For each *long-lived* process (alive
from the end of the warm-up to the end of the run), over the post-warm-up samples:

* growth = RSS at the end - RSS at the end of the warm-up (MB and %): shown;
* slope = the least-squares slope of RSS against time (MB/min): judged, and with it the
  fitted growth (slope x window), not last - first, since a process's memory swings
  with what it holds at the instant of a sample (the Holder actor: 1-5 MB of state).

A process is GROWING when its fitted growth is >= 2 MB and either its slope is
>= 1 MB/min or its fitted growth is >= 10% of its mean. Why: this workload runs
~2,500 tasks/s and ~800 actor calls/s on 2 CPUs, so a leak of 10 bytes per task is
~1.5 MB/min and one of a 100-byte key per task ~15 MB/min; the allocator noise of a Python process is a one-off step of a few MB
(a new pymalloc arena, a numpy buffer reused or not), which the 2 MB floor absorbs,
while a trend that lasts the whole run is caught (1 MB/min over 9 minutes is 9 MB,
~15% of a 60 MB process). The same test runs on the heap (anonymous memory), since
RSS also counts the shared store pages a process touched, and a process is also
GROWING when its thread or fd count rose by 10 or more after the warm-up. The table's
"heap slope, last third" tells a plateau being reached (falling) from a steady leak
(about the overall slope). The run is "flat" when no long-lived process is GROWING;
the exit code is 1 otherwise. Processes that come and go (killed actors, standby
processes handed to new actors) are counted apart (started / ended / alive at the end)
and are not in the flat check.

The samples go as JSON to ``--out`` (default ``benchmarks/results/soak-<time>.json``;
``benchmarks/results/`` is git-ignored, like the other benchmark outputs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1024 * 1024

#: a long-lived process is GROWING when slope >= SLOPE_MB_MIN and growth >= FLOOR_MB,
#: or when growth >= GROWTH_PCT % (and >= FLOOR_MB)
SLOPE_MB_MIN = 1.0
GROWTH_PCT = 10.0
FLOOR_MB = 2.0
WARMUP_FRACTION = 0.10
#: ... and when its thread or file descriptor count grows by this much after the warm-up
COUNT_GROWTH = 10


# --------------------------------------------------------------------------- workload


def define(ge: Any) -> dict[str, Any]:
    """The remote functions and actor classes (defined here so they travel by value)."""

    @ge.remote
    def inc(x: int) -> int:
        return x + 1

    @ge.remote
    def add(a: int, b: int) -> int:
        return a + b

    @ge.remote
    def make_array(mb: int, seed: int) -> np.ndarray:
        return np.full(mb * MB // 8, float(seed))

    @ge.remote
    def checksum(array: np.ndarray) -> tuple[float, int]:
        return float(array[:: 4096 // 8].sum()), int(array.nbytes)

    @ge.remote
    def sleepy(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def incr(self) -> int:
            self.n += 1
            return self.n

        def pid(self) -> int:
            return os.getpid()

    class Holder:
        """Holds one array, replaced (not grown) by every ``replace``."""

        def __init__(self) -> None:
            self.state: np.ndarray | None = None

        def replace(self, array: np.ndarray) -> int:
            self.state = array
            return int(array.nbytes)

        def pid(self) -> int:
            return os.getpid()

    class Ephemeral:
        def ping(self, x: int) -> int:
            return x

        def pid(self) -> int:
            return os.getpid()

    return {
        "inc": inc,
        "add": add,
        "make_array": make_array,
        "checksum": checksum,
        "sleepy": sleepy,
        "Counter": ge.remote(Counter),
        "Holder": ge.remote(Holder),
        "Ephemeral": ge.remote(Ephemeral),
    }


class Workload:
    """One cycle of the mixed workload per :meth:`cycle`; counts what it did."""

    def __init__(self, ge: Any, rng: np.random.Generator) -> None:
        self.ge = ge
        self.rng = rng
        self.fns = define(ge)
        self.counter = self.fns["Counter"].remote()
        self.holder = self.fns["Holder"].remote()
        self.actor_pids = {
            ge.get(self.counter.pid.remote()): "actor:Counter",
            ge.get(self.holder.pid.remote()): "actor:Holder",
        }
        self.counter_value = 0
        self.ops = {
            "tasks": 0,
            "array_tasks": 0,
            "array_mb": 0,
            "puts": 0,
            "put_mb": 0,
            "actor_calls": 0,
            "holder_mb": 0,
            "waits": 0,
            "actors_created": 0,
            "actors_killed": 0,
            "cycles": 0,
        }
        self.ephemeral_pids: set[int] = set()

    def tiny_tasks(self, cycle: int) -> None:
        ge, f = self.ge, self.fns
        base = cycle * 1_000
        level = [f["inc"].remote(base + i) for i in range(1_000)]
        tasks = len(level)
        while len(level) > 1:
            nxt = [f["add"].remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            tasks += len(nxt)
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        assert ge.get(level[0]) == sum(range(base + 1, base + 1_001))
        self.ops["tasks"] += tasks

    def arrays(self, cycle: int) -> None:
        ge, f = self.ge, self.fns
        sizes = [int(s) for s in self.rng.integers(1, 11, size=4)]
        arrays = [f["make_array"].remote(mb, cycle) for mb in sizes]
        sums = ge.get([f["checksum"].remote(a) for a in arrays])
        assert [n for _, n in sums] == [mb * MB for mb in sizes]
        del arrays, sums
        self.ops["array_tasks"] += 8
        self.ops["array_mb"] += sum(sizes)

    def puts(self) -> None:
        ge, f = self.ge, self.fns
        mb = int(self.rng.integers(1, 11))
        array = self.rng.random(mb * MB // 8)
        ref = ge.put(array)
        sums = ge.get([f["checksum"].remote(ref) for _ in range(3)])
        assert all(n == mb * MB for _, n in sums)
        back = ge.get(ref)
        assert back.nbytes == mb * MB
        del array, ref, back, sums
        self.ops["puts"] += 1
        self.ops["put_mb"] += mb
        self.ops["tasks"] += 3

    def actors(self) -> None:
        ge = self.ge
        for _ in range(100):
            self.counter_value += 1
            assert ge.get(self.counter.incr.remote()) == self.counter_value
        burst = [self.counter.incr.remote() for _ in range(500)]
        values = ge.get(burst)
        self.counter_value += 500
        assert values[-1] == self.counter_value
        mb = int(self.rng.integers(1, 6))
        assert ge.get(self.holder.replace.remote(self.rng.random(mb * MB // 8))) == mb * MB
        del burst, values
        self.ops["actor_calls"] += 601
        self.ops["holder_mb"] += mb

    def waits(self) -> None:
        ge, f = self.ge, self.fns
        refs = [f["sleepy"].remote(float(s)) for s in self.rng.uniform(0, 0.05, size=20)]
        ready, rest = ge.wait(refs, num_returns=10, timeout=30)
        assert len(ready) == 10, (len(ready), len(rest))
        ready2, rest2 = ge.wait(rest, num_returns=len(rest), timeout=30)
        assert not rest2
        assert len(ge.get(refs)) == 20
        del refs, ready, rest, ready2, rest2
        self.ops["waits"] += 2
        self.ops["tasks"] += 20

    def churn_actors(self) -> None:
        """Two short-lived actors: created, called, killed."""
        ge = self.ge
        handles = [self.fns["Ephemeral"].remote() for _ in range(2)]
        self.ephemeral_pids.update(ge.get([h.pid.remote() for h in handles]))
        assert ge.get([h.ping.remote(i) for h in handles for i in range(50)]) == list(
            range(50)
        ) * len(handles)
        for h in handles:
            ge.kill(h)
        del handles
        self.ops["actors_created"] += 2
        self.ops["actors_killed"] += 2
        self.ops["actor_calls"] += 102

    def steps(self, cycle: int) -> list[Callable[[], None]]:
        return [
            lambda: self.tiny_tasks(cycle),
            lambda: self.arrays(cycle),
            self.puts,
            self.actors,
            self.waits,
        ]


# --------------------------------------------------------------------------- sampling


def _smaps(pid: int) -> dict[str, int] | None:
    """RSS, USS, PSS and anonymous bytes from /proc/PID/smaps_rollup (None: not readable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {}
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        return None
    return {
        "rss": fields.get("Rss", 0),
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "pss": fields.get("Pss", 0),
        "anon": fields.get("Anonymous", 0),
    }


def _memory(proc: psutil.Process) -> dict[str, int] | None:
    mem = _smaps(proc.pid)
    if mem is not None:
        return mem
    try:  # no smaps_rollup (old kernel, not Linux): RSS only
        rss = int(proc.memory_info().rss)
    except psutil.Error:
        return None
    return {"rss": rss, "uss": rss, "pss": rss, "anon": rss}


def _kind(cmdline: list[str], pid: int, actor_pids: set[int]) -> str:
    if "graphexec.scheduler" in cmdline:
        return "scheduler"
    if "graphexec.worker.nodemanager" in cmdline:
        return "nodemanager"
    if "graphexec.worker" in cmdline:
        if "--actor" in cmdline or pid in actor_pids:
            return "actor"
        if "--standby" in cmdline:
            return "standby"
        return "worker"
    return "other"


def sample(ge: Any, t0: float, labels: dict[int, str]) -> dict[str, Any]:
    """One sample of every process of the cluster, the store and the scheduler counts."""
    gc.collect()
    info = ge.cluster_info()
    actors = info.get("actors", [])
    actor_pids = {a["pid"] for a in actors if a.get("pid") and a.get("state") != "DEAD"}
    me = psutil.Process()
    procs: dict[str, Any] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        mem = _memory(proc)
        if mem is None:
            continue
        try:
            counts = {"threads": proc.num_threads(), "fds": proc.num_fds()}
        except (psutil.Error, AttributeError):  # num_fds: POSIX only
            counts = {"threads": 0, "fds": 0}
        kind = "driver" if proc.pid == me.pid else _kind(cmdline, proc.pid, actor_pids)
        procs[str(proc.pid)] = {
            "kind": kind,
            "label": labels.get(proc.pid, kind),
            **mem,
            **counts,
        }
    try:
        store = ge.object_store_stats()
        store = {k: store.get(k) for k in ("used_bytes", "num_objects", "spilled_bytes")}
    except Exception as err:  # not every version exposes it; the processes matter most
        store = {"error": repr(err)}
    states: dict[str, int] = {}
    for a in actors:
        states[a.get("state", "?")] = states.get(a.get("state", "?"), 0) + 1
    return {
        "t": time.monotonic() - t0,
        "load": os.getloadavg(),
        "procs": procs,
        "store": store,
        "scheduler": {
            "tasks": len(info.get("tasks", {})),
            "clients": info.get("clients"),
            "workers": info.get("workers"),
            "actors": states,
        },
    }


# --------------------------------------------------------------------------- analysis


def _slope(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 2 or max(ts) - min(ts) <= 0:
        return 0.0
    return float(np.polyfit(ts, ys, 1)[0])


def _judge(level: float, slope: float, window_min: float) -> bool:
    """True when a series is GROWING (see the module docstring).

    ``slope`` is the least-squares slope (MB/min) over the post-warm-up window of
    ``window_min`` minutes, ``level`` the series' mean (MB). The growth judged is the
    fitted line's (slope x window), not last - first sample: a process whose memory
    swings with what it holds at the instant of a sample (the Holder actor: 1-5 MB of
    state) must not be judged on two single samples.
    """
    fitted = slope * window_min
    if fitted < FLOOR_MB:
        return False
    return slope >= SLOPE_MB_MIN or fitted >= GROWTH_PCT / 100 * level


def analyze(
    samples: list[dict[str, Any]], warmup_index: int, ephemeral: set[int] | None = None
) -> dict[str, Any]:
    """Long-lived processes with their growth and slope, and the replaced ones.

    ``ephemeral``: pids of the actors created and killed during the run.
    """
    post = samples[warmup_index:]
    first, last = post[0], post[-1]
    long_lived = [pid for pid in first["procs"] if all(pid in s["procs"] for s in post)]
    ts = [s["t"] / 60 for s in post]
    window = ts[-1] - ts[0]
    tail = max(2, len(post) // 3)  # the last third: is the growth slowing down?
    rows = []
    for pid in long_lived:
        row: dict[str, Any] = {"pid": int(pid), "label": last["procs"][pid]["label"]}
        growing = []
        for metric in ("rss", "anon", "uss"):
            ys = [s["procs"][pid][metric] / MB for s in post]
            slope = _slope(ts, ys)
            row[metric] = {
                "start_mb": ys[0],
                "end_mb": ys[-1],
                "growth_mb": ys[-1] - ys[0],
                "growth_pct": 100 * (ys[-1] - ys[0]) / ys[0] if ys[0] else 0.0,
                "slope_mb_min": slope,
                "fitted_growth_mb": slope * window,
                "last_third_slope_mb_min": _slope(ts[-tail:], ys[-tail:]),
                "max_mb": max(ys),
            }
            if metric != "uss" and _judge(sum(ys) / len(ys), slope, window):
                growing.append(metric)
        for metric in ("threads", "fds"):
            a, b = first["procs"][pid].get(metric, 0), last["procs"][pid].get(metric, 0)
            most = max(s["procs"][pid].get(metric, 0) for s in post)
            row[metric] = {"start": a, "end": b, "max": most}
            if b - a >= COUNT_GROWTH:
                growing.append(metric)
        row["growing"] = growing
        rows.append(row)
    order = ["driver", "scheduler", "nodemanager", "worker", "actor", "standby", "other"]
    rows.sort(key=lambda r: (order.index(r["label"].split(":")[0].split("#")[0]), r["pid"]))

    # processes that were not alive for the whole post-warm-up window
    seen: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(samples):
        for pid, p in s["procs"].items():
            entry = seen.setdefault(pid, {"kind": p["kind"], "first": i, "max_rss": 0})
            entry["last"] = i
            if p["kind"] == "actor":  # a standby process handed to an actor counts as one
                entry["kind"] = "actor"
            entry["max_rss"] = max(entry["max_rss"], p["rss"])
    for pid in ephemeral or ():
        if str(pid) in seen:  # sampled while it was still an idle standby process
            seen[str(pid)]["kind"] = "actor (created and killed)"
    replaced: dict[str, dict[str, float]] = {}
    for pid, e in seen.items():
        if pid in long_lived:
            continue
        r = replaced.setdefault(
            e["kind"], {"started": 0, "ended": 0, "alive_at_end": 0, "max_rss_mb": 0.0}
        )
        r["started"] += e["first"] > 0
        r["ended"] += e["last"] < len(samples) - 1
        r["alive_at_end"] += e["last"] == len(samples) - 1
        r["max_rss_mb"] = max(r["max_rss_mb"], e["max_rss"] / MB)
    return {"rows": rows, "replaced": replaced, "window_min": window}


def report(result: dict[str, Any], samples: list[dict[str, Any]], warmup_index: int) -> str:
    w, e = samples[warmup_index], samples[-1]
    lines = [
        f"post-warm-up window: {w['t']:.0f} s -> {e['t']:.0f} s "
        f"({len(samples) - warmup_index} samples); heap = anonymous memory",
        "",
        "| process | pid | RSS warm-up MB | RSS end MB | RSS growth MB (%) | RSS slope MB/min "
        "| heap warm-up MB | heap end MB | heap slope MB/min | heap slope, last third "
        "| threads | fds | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rss, anon = r["rss"], r["anon"]
        verdict = "GROWING (" + ", ".join(r["growing"]) + ")" if r["growing"] else "flat"
        lines.append(
            f"| {r['label']} | {r['pid']} | {rss['start_mb']:.1f} | {rss['end_mb']:.1f} "
            f"| {rss['growth_mb']:+.1f} ({rss['growth_pct']:+.1f}%) "
            f"| {rss['slope_mb_min']:+.2f} | {anon['start_mb']:.1f} | {anon['end_mb']:.1f} "
            f"| {anon['slope_mb_min']:+.2f} | {anon['last_third_slope_mb_min']:+.2f} "
            f"| {r['threads']['start']}->{r['threads']['end']} "
            f"| {r['fds']['start']}->{r['fds']['end']} | {verdict} |"
        )
    lines += ["", "processes not alive for the whole window (not in the flat check):"]
    for kind, r in sorted(result["replaced"].items()):
        lines.append(
            f"  {kind}: {r['started']} started during the run, {r['ended']} ended, "
            f"{r['alive_at_end']} alive at the end, max RSS {r['max_rss_mb']:.1f} MB"
        )
    if not result["replaced"]:
        lines.append("  none")
    lines += [
        "",
        f"object store: {w['store']} at warm-up end -> {e['store']} at the end",
        f"scheduler: {w['scheduler']} at warm-up end -> {e['scheduler']} at the end",
    ]
    loads = [s["load"][0] for s in samples]
    lines.append(
        f"load average (1 min) during the run: min {min(loads):.2f}, "
        f"mean {sum(loads) / len(loads):.2f}, max {max(loads):.2f} on {os.cpu_count()} CPUs"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def label_processes(ge: Any, work: Workload) -> dict[int, str]:
    """Stable labels: ``worker#1``, ``worker#2`` ... by pid, actors by class."""
    labels = dict(work.actor_pids)
    info = ge.cluster_info()
    actor_pids = {a["pid"] for a in info.get("actors", []) if a.get("pid")}
    workers = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if _kind(proc.cmdline(), proc.pid, actor_pids) == "worker":
                workers.append(proc.pid)
        except psutil.Error:
            continue
    for i, pid in enumerate(sorted(workers), 1):
        labels[pid] = f"worker#{i}"
    return labels


def run(minutes: float, interval: float, churn: float, seed: int) -> dict[str, Any]:
    import graphexec as ge

    duration = minutes * 60
    interval = min(interval, max(1.0, duration / 30))
    rng = np.random.default_rng(seed)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    ge.init(num_cpus=2)
    try:
        work = Workload(ge, rng)
        labels = label_processes(ge, work)
        samples.append(sample(ge, t0, labels))
        next_sample = time.monotonic() + interval
        next_churn = time.monotonic() + churn
        deadline = t0 + duration
        cycle = 0
        while time.monotonic() < deadline:
            for step in work.steps(cycle):
                step()
                if time.monotonic() >= next_sample:
                    samples.append(sample(ge, t0, labels))
                    next_sample += interval
                    s = samples[-1]
                    total = sum(p["rss"] for p in s["procs"].values()) / MB
                    print(
                        f"[{s['t']:6.0f} s] {len(s['procs'])} processes, RSS {total:.0f} MB, "
                        f"store {s['store'].get('used_bytes', 0) / MB:.0f} MB, "
                        f"load {s['load'][0]:.2f}, cycles {work.ops['cycles']}",
                        flush=True,
                    )
                if time.monotonic() >= deadline:
                    break
            if time.monotonic() >= next_churn:
                work.churn_actors()
                next_churn += churn
            cycle += 1
            work.ops["cycles"] = cycle
        time.sleep(1.0)  # let the last killed actors exit, the last frees land
        samples.append(sample(ge, t0, labels))
        ops = dict(work.ops)
        ephemeral = sorted(work.ephemeral_pids)
        del work
    finally:
        ge.shutdown()
    return {
        "minutes": minutes,
        "interval_s": interval,
        "actor_churn_s": churn,
        "seed": seed,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "ops": ops,
        "ephemeral_actor_pids": ephemeral,
        "samples": samples,
    }


def judge(data: dict[str, Any], warmup: float) -> None:
    """Add the warm-up end, the thresholds and the analysis to ``data``."""
    samples = data["samples"]
    duration = data["minutes"] * 60
    index = next((i for i, s in enumerate(samples) if s["t"] >= warmup * duration), 0)
    data["warmup_index"] = min(index, len(samples) - 2) if len(samples) > 1 else 0
    data["thresholds"] = {
        "slope_mb_min": SLOPE_MB_MIN,
        "growth_pct": GROWTH_PCT,
        "floor_mb": FLOOR_MB,
        "count_growth": COUNT_GROWTH,
        "warmup_fraction": warmup,
    }
    data["result"] = analyze(samples, data["warmup_index"], set(data["ephemeral_actor_pids"]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--actor-churn", type=float, default=20.0, help="seconds between actor create/kill"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=WARMUP_FRACTION,
        help="fraction of the run left out of the verdict (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for the samples")
    parser.add_argument(
        "--analyze", metavar="JSON", help="no run: judge the samples of an earlier run again"
    )
    args = parser.parse_args()
    if args.analyze:
        with open(args.analyze) as f:
            data = json.load(f)
        judge(data, args.warmup)
    else:
        out = args.out or os.path.join(
            HERE, "results", time.strftime("soak-%Y%m%d-%H%M%S.json", time.localtime())
        )
        print(f"soak: {args.minutes:g} min of mixed workload, samples -> {out}", flush=True)
        data = run(args.minutes, args.interval, args.actor_churn, args.seed)
        judge(data, args.warmup)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(data, f, indent=1)
    print()
    print(f"machine: {data['cpus']} CPUs, Python {data['python']}; ops: {data['ops']}")
    print(report(data["result"], data["samples"], data["warmup_index"]))
    offenders = [r for r in data["result"]["rows"] if r["growing"]]
    print()
    if data["minutes"] < 5:
        print(f"note: a {data['minutes']:g}-minute run is a check of the script; judge >= 5 min")
    if offenders:
        names = ", ".join(f"{r['label']} ({'/'.join(r['growing'])})" for r in offenders)
        print(f"verdict: GROWING: {names}")
        return 1
    print(
        f"verdict: flat (no long-lived process's RSS or heap grows >= {SLOPE_MB_MIN:g} MB/min, "
        f"nor >= {GROWTH_PCT:g}% over the window, growth under {FLOOR_MB:g} MB ignored; "
        f"no thread or fd count up by {COUNT_GROWTH})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
