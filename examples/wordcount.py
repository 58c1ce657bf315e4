"""Parallel map-reduce word count on a local graphexec cluster (Ray Core style).

Run: ``python examples/wordcount.py`` (or ``make demo``, which runs it among others).
Each map task counts words in one chunk of text and splits the counts into one partition
per reducer (``num_returns``); each reduce task merges one partition from every mapper.
"""

from __future__ import annotations

import collections
import random
import time

import graphexec as ge

WORDS = [
    "graph",
    "task",
    "worker",
    "actor",
    "object",
    "store",
    "scheduler",
    "lazy",
    "eager",
    "fuse",
    "cull",
    "order",
    "shuffle",
    "reduce",
    "map",
    "partition",
    "ray",
    "dask",
    "tornado",
    "arrow",
    "pandas",
    "numpy",
]


def read_chunk(index: int, words: int = 60_000) -> str:
    """Stands in for reading one file of a corpus: each mapper loads its own input."""
    rng = random.Random(index)
    return " ".join(rng.choices(WORDS, k=words))


def count_words(text: str, partitions: int) -> list[dict[str, int]]:
    counts = collections.Counter(text.split())
    # a little CPU work per chunk, as real parsing would have
    for _ in range(3):
        collections.Counter(text.split())
    parts: list[dict[str, int]] = [{} for _ in range(partitions)]
    for word, n in counts.items():
        parts[sum(map(ord, word)) % partitions][word] = n
    return parts


def merge(*parts: dict[str, int]) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for part in parts:
        total.update(part)
    return dict(total)


@ge.remote
def map_chunk(index: int, partitions: int) -> list[dict[str, int]]:
    return count_words(read_chunk(index), partitions)


@ge.remote
def reduce_partition(*parts: dict[str, int]) -> dict[str, int]:
    return merge(*parts)


def wordcount(chunks: int, partitions: int = 4) -> dict[str, int]:
    mapped = [
        map_chunk.options(num_returns=partitions).remote(i, partitions) for i in range(chunks)
    ]
    reduced = [reduce_partition.remote(*[m[p] for m in mapped]) for p in range(partitions)]
    result: dict[str, int] = {}
    for part in ge.get(reduced):
        result.update(part)
    return result


def wordcount_serial(chunks: int, partitions: int = 4) -> dict[str, int]:
    mapped = [count_words(read_chunk(i), partitions) for i in range(chunks)]
    result: dict[str, int] = {}
    for p in range(partitions):
        result.update(merge(*[m[p] for m in mapped]))
    return result


def main() -> None:
    chunks = 40
    t = time.perf_counter()
    serial = wordcount_serial(chunks)
    serial_time = time.perf_counter() - t
    ge.init(ignore_reinit_error=True)
    t = time.perf_counter()
    counts = wordcount(chunks)
    parallel_time = time.perf_counter() - t
    assert counts == serial, "parallel and serial word counts differ"
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
    print(f"word count over {chunks} chunks ({sum(counts.values()):,} words)")
    print("  top words: " + ", ".join(f"{w}={n:,}" for w, n in top))
    print(
        f"  serial {serial_time:.2f} s, graphexec {parallel_time:.2f} s "
        f"-> {serial_time / parallel_time:.2f}x on {int(ge.cluster_resources()['CPU'])} CPUs"
    )


if __name__ == "__main__":
    main()
    ge.shutdown()
