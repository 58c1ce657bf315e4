"""One large array, many tasks, one copy: the shared-memory object store at work.

``put`` writes the array once into the node's shared-memory store; every task that
receives the ref maps the same memory read-only, so 8 tasks reading a 200 MB array cost
no copies, and ``get`` in the driver is a view of that memory too.
"""

from __future__ import annotations

import time

import numpy as np

import graphexec as ge

MB = 1024 * 1024


@ge.remote
def column_means(block: np.ndarray, start: int, stop: int) -> np.ndarray:
    # each task reads its slice of the shared array in place
    return block[start:stop].mean(axis=0)


def main() -> None:
    ge.init(ignore_reinit_error=True)
    rows, cols = 200 * MB // 8 // 64, 64
    data = np.random.default_rng(0).random((rows, cols))
    ge.put(np.zeros(8))  # first contact with the store
    t = time.perf_counter()
    ref = ge.put(data)
    put_time = time.perf_counter() - t
    step = rows // 8
    t = time.perf_counter()
    parts = ge.get([column_means.remote(ref, i * step, (i + 1) * step) for i in range(8)])
    task_time = time.perf_counter() - t
    means = np.mean(parts, axis=0)
    assert np.allclose(means, data[: 8 * step].mean(axis=0))
    t = time.perf_counter()
    view = ge.get(ref)
    get_time = time.perf_counter() - t
    stats = ge.object_store_stats()
    print(
        f"put of a {data.nbytes / MB:.0f} MB array: {put_time * 1e3:.0f} ms "
        f"({data.nbytes / put_time / 1e9:.1f} GB/s) into shared memory"
    )
    print(
        f"  8 tasks read it in place: {task_time * 1e3:.0f} ms; get in the driver: "
        f"{get_time * 1e3:.2f} ms (read-only view: {not view.flags.writeable})"
    )
    print(
        f"  object store: {stats['used_bytes'] / MB:.0f} MB used of "
        f"{stats['capacity_bytes'] / MB:,.0f} MB, {stats['num_objects']} object(s)"
    )


if __name__ == "__main__":
    main()
    ge.shutdown()
