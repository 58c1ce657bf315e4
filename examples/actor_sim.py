"""Reinforcement learning with actors: rollout actors gather experience, the driver learns.

Run: ``python examples/actor_sim.py`` (or ``make demo``, which runs it among others).

The world is a corridor of cells; the agent starts near the left wall and must walk to the
goal at the right end, paying 1 per step, earning 10 at the goal, for at most 40 steps.
The policy is a table of action preferences (one row per cell, softmax over left/right).

- Several ``RolloutWorker`` actors each own an environment and play episodes with the
  policy they are sent, returning the (cell, action, return-to-go) experience.
- The driver takes the rollouts with ``graphexec.wait`` in the order they finish, applies a
  policy-gradient (REINFORCE) update for each at once and sends that worker its next
  rollout with the new policy, so a slow worker never holds the others up. An iteration is
  one rollout's worth of work per worker.
- After each iteration an ``Environment`` actor, driven step by step through ``reset()`` and
  ``step(action)`` calls, scores the greedy policy.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import graphexec as ge

LEFT, RIGHT = 0, 1
STEP_REWARD, GOAL_REWARD = -1.0, 10.0


class Corridor:
    """A 1-D gridworld: cells ``0 .. length - 1``, a wall on the left, the goal on the right."""

    def __init__(self, length: int = 10, start: int = 2, max_steps: int = 40) -> None:
        self.length, self.start, self.max_steps = length, start, max_steps
        self.cell, self.steps = start, 0

    def reset(self) -> int:
        self.cell, self.steps = self.start, 0
        return self.cell

    def step(self, action: int) -> tuple[int, float, bool]:
        """Move one cell; return ``(cell, reward, done)``."""
        move = 1 if action == RIGHT else -1
        self.cell = min(max(self.cell + move, 0), self.length - 1)
        self.steps += 1
        if self.cell == self.length - 1:
            return self.cell, GOAL_REWARD, True
        return self.cell, STEP_REWARD, self.steps >= self.max_steps


def action_probs(prefs: np.ndarray) -> np.ndarray:
    """Softmax over the last axis: the policy's action probabilities in each cell."""
    z = np.exp(prefs - prefs.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


#: what a worker sends back: its index, the visited cells, the actions taken there, the
#: reward-to-go from each, and each episode's total reward (plain types: the example's own
#: classes need not be importable where the result is unpickled)
Rollout = tuple[int, np.ndarray, np.ndarray, np.ndarray, list[float]]


@ge.remote
class RolloutWorker:
    """An actor that owns one environment and plays whole episodes with a given policy."""

    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.env = Corridor()
        self.rng = np.random.default_rng(seed)

    def ready(self) -> bool:
        return True

    def rollout(self, prefs: np.ndarray, episodes: int) -> Rollout:
        probs = action_probs(prefs)
        cells: list[int] = []
        actions: list[int] = []
        returns: list[float] = []
        totals = []
        for _ in range(episodes):
            cell, done, rewards = self.env.reset(), False, []
            while not done:
                action = int(self.rng.random() < probs[cell, RIGHT])
                cells.append(cell)
                actions.append(action)
                cell, reward, done = self.env.step(action)
                rewards.append(reward)
            returns.extend(np.cumsum(rewards[::-1])[::-1].tolist())  # reward-to-go
            totals.append(float(sum(rewards)))
        return self.index, np.array(cells), np.array(actions), np.array(returns), totals


@ge.remote
class Environment:
    """The corridor as an actor: the driver plays it one ``step`` call at a time."""

    def __init__(self) -> None:
        self.env = Corridor()

    def reset(self) -> int:
        return self.env.reset()

    def step(self, action: int) -> tuple[int, float, bool]:
        return self.env.step(action)


def update(prefs: np.ndarray, rollout: Rollout, lr: float) -> np.ndarray:
    """One REINFORCE step on the preference table, advantages normalized per rollout."""
    _, cells, actions, returns, totals = rollout
    adv = (returns - returns.mean()) / (returns.std() + 1e-8)
    grad = -action_probs(prefs)[cells] * adv[:, None]  # d log pi(a|s) = onehot(a) - pi(s)
    grad[np.arange(len(adv)), actions] += adv
    new = prefs.copy()
    np.add.at(new, cells, lr * grad / len(totals))  # the mean over episodes of their sums
    return new


def evaluate_greedy(env: ge.ActorHandle[Any], prefs: np.ndarray) -> float:
    """Play one greedy episode on the ``Environment`` actor; return its total reward."""
    cell, done, total = ge.get(env.reset.remote()), False, 0.0
    while not done:
        cell, reward, done = ge.get(env.step.remote(int(prefs[cell].argmax())))
        total += reward
    return total


def best_reward(env: Corridor) -> float:
    """The total reward of walking straight to the goal."""
    return GOAL_REWARD + STEP_REWARD * (env.length - 1 - env.start - 1)


def show_policy(prefs: np.ndarray) -> str:
    """The greedy action in each cell as an arrow, the goal cell as G."""
    return "".join("→" if p[RIGHT] > p[LEFT] else "←" for p in prefs[:-1]) + "G"


def train(
    iterations: int = 6, workers: int = 4, episodes: int = 10, lr: float = 0.3, seed: int = 0
) -> tuple[list[float], np.ndarray]:
    """Train, printing progress; return each iteration's mean episode reward, and the policy."""
    actors = [RolloutWorker.remote(i, seed + i) for i in range(workers)]
    env = Environment.remote()
    prefs = np.zeros((Corridor().length, 2))
    history: list[float] = []
    try:
        # start together: a rollout from an actor still starting would carry an old policy
        ge.get([a.ready.remote() for a in actors])
        pending = [a.rollout.remote(prefs, episodes) for a in actors]
        submitted = len(pending)
        rewards: list[float] = []
        order: list[int] = []  # which worker finished, in completion order
        t = time.perf_counter()
        while pending:
            [ready], pending = ge.wait(pending, num_returns=1)
            rollout: Rollout = ge.get(ready)
            prefs = update(prefs, rollout, lr)
            worker = rollout[0]
            if submitted < iterations * workers:  # keep this worker busy, newest policy
                pending.append(actors[worker].rollout.remote(prefs, episodes))
                submitted += 1
            order.append(worker)
            rewards.extend(rollout[4])
            if len(order) == workers:  # an iteration's worth of rollouts
                history.append(float(np.mean(rewards)))
                greedy = evaluate_greedy(env, prefs)
                print(
                    f"  iteration {len(history)}: mean reward {history[-1]:6.1f} over "
                    f"{len(rewards)} episodes, greedy {greedy:5.1f}, rollouts from workers "
                    f"{order} ({time.perf_counter() - t:.2f} s)"
                )
                rewards, order, t = [], [], time.perf_counter()
    finally:
        for handle in [*actors, env]:
            ge.kill(handle)
    return history, prefs


def main(iterations: int = 6, workers: int = 4, episodes: int = 10) -> list[float]:
    ge.init(ignore_reinit_error=True)
    t = time.perf_counter()
    history, prefs = train(iterations, workers, episodes)
    print(
        f"  mean reward {history[0]:.1f} -> {history[-1]:.1f} in {iterations} iterations "
        f"with {workers} rollout actors, {time.perf_counter() - t:.2f} s "
        f"(best possible {best_reward(Corridor()):.0f}); "
        f"greedy policy {show_policy(prefs)}"
    )
    return history


if __name__ == "__main__":
    main()
    ge.shutdown()
