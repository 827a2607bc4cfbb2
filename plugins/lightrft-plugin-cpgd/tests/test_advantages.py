"""CPGD's group advantages with each weighting, checked against hand values."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightrft_core.algorithms.groups import broadcast_to_tokens
from lightrft_core.interfaces import AdvantageInput, AlgorithmContext
from lightrft_core.testing.training import ThreadGroup
from lightrft_plugin_cpgd.advantages import cpgd_advantages
from lightrft_plugin_cpgd.cpgd import CPGD


def test_std_weighting_is_the_normalised_group_advantage() -> None:
    # [1, 0] and [0, 1]: mean 0.5, unbiased std sqrt(0.5) = 0.7071068;
    # ±0.5/(0.7071068 + 1e-6) = ±0.7071057812.
    adv, weight = cpgd_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    a = 0.7071057812
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a]))
    assert weight == 1.0
    # [1, 2, 3, 4]: deviations -1.5, -0.5, 0.5, 1.5; unbiased std sqrt(5/3) = 1.2909944
    # -> -1.161895, -0.387298, 0.387298, 1.161895 (eps 0)
    adv, _ = cpgd_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), 4, eps=0.0)
    torch.testing.assert_close(
        adv, torch.tensor([-1.161895, -0.387298, 0.387298, 1.161895]), atol=1e-6, rtol=0
    )


def test_no_weighting_is_the_centred_reward() -> None:
    adv, weight = cpgd_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4, weighting="none")
    torch.testing.assert_close(adv, torch.tensor([-2.0, -1.0, 0.0, 3.0]))  # r - 3
    assert weight == 1.0


def test_clip_filter_like_weighting() -> None:
    # Groups [1, 0], [0.5, 0.5], [0, 0], [2, 0]: 4 groups, 2 with signal -> w = min(4/2, 3) = 2;
    # centred [0.5, -0.5 | 0, 0 | 0, 0 | 1, -1] · 2 = [1, -1, 0, 0, 0, 0, 2, -2].
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 0.0, 2.0, 0.0])
    adv, weight = cpgd_advantages(rewards, 2, weighting="clip-filter-like")
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0, -2.0]))
    assert weight == 2.0
    # Only 1 of 4 groups with signal: 4/1 = 4 -> capped at 3: [1.5, -1.5, 0, ...].
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 0.0, 2.0, 2.0])
    adv, weight = cpgd_advantages(rewards, 2, weighting="clip-filter-like")
    torch.testing.assert_close(adv, torch.tensor([1.5, -1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert weight == 3.0
    # A lower cap: min(4, 1.5) = 1.5 -> [0.75, -0.75, ...]
    adv, weight = cpgd_advantages(rewards, 2, weighting="clip-filter-like", max_weight=1.5)
    assert adv[:2].tolist() == [0.75, -0.75] and weight == 1.5


@pytest.mark.parametrize("weighting", ["std", "clip-filter-like", "none"])
def test_equal_reward_groups_give_exactly_zero(weighting: Any) -> None:
    # 0.1 is not exact in binary: the group mean may differ from 0.1 by a rounding residue,
    # which divided by eps would not be 0. Every group here is equal: all zero, no NaN.
    rewards = torch.tensor([0.1, 0.1, 0.1, 3.0, 3.0, 3.0])
    adv, _ = cpgd_advantages(rewards, 3, weighting=weighting)
    assert torch.equal(adv, torch.zeros(6))


def test_algorithm_broadcasts_and_reports() -> None:
    mask = torch.tensor(
        [[True, True, False], [False, True, True], [True, False, False], [True] * 3]
    )
    out = CPGD().compute_advantages(
        AdvantageInput(rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]), action_mask=mask, group_size=2)
    )
    a = 0.7071057812
    expected = torch.tensor([[a, a, 0.0], [0.0, -a, -a], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out.advantages, expected)
    assert out.metrics["zero_std_group_fraction"] == 0.5
    assert out.metrics["reward_mean"] == pytest.approx(0.75)
    assert out.metrics["advantage_weight"] == 1.0


def test_clip_filter_like_counts_are_global_on_2_ranks() -> None:
    # Rank 0: groups [1, 0], [0.5, 0.5]; rank 1: [0, 0], [0, 0]. Globally 1 of 4 groups has
    # signal -> w = min(4, 3) = 3 on rank 0 (its own shard alone would give 2/1 = 2).
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    mask = torch.ones(8, 1, dtype=torch.bool)

    def advantages(rows: slice, all_reduce: Any = None) -> torch.Tensor:
        algo = CPGD(CPGD.Config(advantage_weighting="clip-filter-like"))
        world_size = 1 if all_reduce is None else 2
        algo.setup(AlgorithmContext(world_size=world_size, all_reduce=all_reduce))
        batch = AdvantageInput(rewards[rows], mask[rows], 2)
        return algo.compute_advantages(batch).advantages[:, 0]

    rank0, rank1 = ThreadGroup(2).run(
        [lambda ar: advantages(slice(0, 4), ar), lambda ar: advantages(slice(4, 8), ar)]
    )
    torch.testing.assert_close(rank0, torch.tensor([1.5, -1.5, 0.0, 0.0]))
    torch.testing.assert_close(rank1, torch.zeros(4))
    torch.testing.assert_close(advantages(slice(0, 8)), torch.cat([rank0, rank1]))
    torch.testing.assert_close(advantages(slice(0, 4)), torch.tensor([1.0, -1.0, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.tensor([1.0, 0.0]), 1, "group_size >= 2"),
        (torch.tensor([1.0, 0.0, 1.0]), 2, "multiple of group_size"),
        (torch.tensor([[1.0, 0.0]]), 2, "1-D"),
        (torch.tensor([1.0, float("nan")]), 2, "finite"),
    ],
)
def test_bad_inputs_are_refused(rewards: torch.Tensor, group_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cpgd_advantages(rewards, group_size)


def test_unknown_weighting_and_bad_broadcast() -> None:
    with pytest.raises(ValueError, match="unknown advantage weighting"):
        cpgd_advantages(torch.tensor([1.0, 0.0]), 2, weighting="rank")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        broadcast_to_tokens(torch.tensor([1.0]), torch.ones(2, 2, dtype=torch.bool))
