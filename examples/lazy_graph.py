"""A lazy graph and what the optimizer does with it before anything runs.

``.remote()`` only records a node; ``get`` culls the graph to what was asked, fuses
linear chains into single tasks, and orders the rest depth-first. This example builds a
pipeline of 1,000 inputs, each through a chain of 20 steps, feeding a tree reduction,
and shows the task counts before and after optimization and the time it took.
"""

from __future__ import annotations

import time

import graphexec as ge
from graphexec.graph.optimize import optimize


@ge.remote
def load(i: int) -> int:
    return i


@ge.remote
def step(x: int) -> int:
    return x + 1


@ge.remote
def combine(a: int, b: int) -> int:
    return a + b


def build(inputs: int = 1_000, steps: int = 20) -> ge.ObjectRef[int]:
    level = []
    for i in range(inputs):
        ref = load.remote(i)
        for _ in range(steps):
            ref = step.remote(ref)
        level.append(ref)
    while len(level) > 1:
        nxt = [combine.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def graph_of(ref: ge.ObjectRef[int]) -> dict[str, object]:
    """The lazy graph behind a ref (what ``get`` would submit)."""
    graph: dict[str, object] = {}
    stack = [ref]
    while stack:
        r = stack.pop()
        node = r._node
        if node is None or r.key in graph:
            continue
        graph[r.key] = node
        for arg in list(node.args) + list(node.kwargs.values()):
            if isinstance(arg, ge.ObjectRef.__mro__[2]):  # TaskRef and subclasses
                stack.append(arg)
    return graph


def main() -> None:
    ge.init(ignore_reinit_error=True)
    inputs, steps = 1_000, 20
    root = build(inputs, steps)
    graph = graph_of(root)
    optimized, _ = optimize(graph, [root.key])
    t = time.perf_counter()
    value = ge.get(root)
    elapsed = time.perf_counter() - t
    expected = sum(range(inputs)) + inputs * steps
    assert value == expected
    print(
        f"lazy graph: {len(graph):,} tasks as written -> {len(optimized):,} after "
        f"fusing chains ({len(graph) / len(optimized):.1f}x fewer)"
    )
    print(f"  result {value:,} in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
    ge.shutdown()
