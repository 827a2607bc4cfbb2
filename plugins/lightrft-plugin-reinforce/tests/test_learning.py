"""Short seeded runs of the core RL loop on an easy task: each algorithm raises the reward.

The task (``LetterReward`` in ``lightrft_core.testing.training``): the reward is the
fraction of the response's characters that are ``a``; a randomly initialised one-layer
model starts near 0.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.mark.parametrize("algorithm", ["reinforce_pp", "reinforce_pp_baseline", "rloo"])
def test_mean_reward_rises(
    train_rewards: Callable[[str, list[str]], list[float]], algorithm: str
) -> None:
    rewards = train_rewards(algorithm, ["trainer.max_steps=16"])
    assert len(rewards) == 16
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.3, rewards


def test_reinforce_pp_with_the_kl_penalty_runs_with_a_reference_model(
    train_rewards: Callable[[str, list[str]], list[float]],
) -> None:
    # β > 0 makes the loop build the reference model and pass its log-probs: a short run must
    # go through (the KL arithmetic itself is checked by hand in test_reinforce_pp.py).
    rewards = train_rewards("reinforce_pp", ["trainer.max_steps=2", "algorithm.kl_coef=0.01"])
    assert len(rewards) == 2
