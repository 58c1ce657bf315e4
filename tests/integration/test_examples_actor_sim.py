"""``examples/actor_sim.py`` on a real local cluster: rollout actors, ``wait``, ``kill``.

The example is loaded the way ``graphexec demo`` loads it (from its file, not importable by
the actor processes, so its classes travel by value) and run with small settings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphexec as ge
from graphexec.cli import _load_example


@pytest.fixture(scope="module")
def cluster():
    ctx = ge.init(num_cpus=2)
    try:
        yield ctx
    finally:
        ge.shutdown()


@pytest.mark.allow_leaks("threads")
def test_actor_sim_learns_to_walk_to_the_goal(cluster, capsys):
    example = _load_example("actor_sim")
    history = example.main(iterations=6, workers=2, episodes=10)
    assert len(history) == 6
    env = example.Corridor()
    worst = env.max_steps * example.STEP_REWARD
    assert all(math.isfinite(r) and worst <= r <= example.best_reward(env) for r in history)
    # a random walk rarely reaches the goal in 40 steps; a few policy updates make it likely
    assert history[-1] > history[0] + 5
    out = capsys.readouterr().out
    assert "iteration 6:" in out and "greedy policy" in out


@pytest.mark.allow_leaks("threads")
def test_actor_sim_pieces(cluster):
    example = _load_example("actor_sim")
    corridor = example.Corridor()
    env = example.Environment.remote()
    try:
        assert ge.get(env.reset.remote()) == corridor.start
        step = ge.get(env.step.remote(example.RIGHT))
        assert step == (corridor.start + 1, example.STEP_REWARD, False)
        # greedy "always right" walks straight to the goal
        always_right = np.tile([0.0, 1.0], (corridor.length, 1))
        assert example.evaluate_greedy(env, always_right) == example.best_reward(corridor)
        assert example.show_policy(always_right) == "→" * (corridor.length - 1) + "G"
    finally:
        ge.kill(env)
