"""Group-normalised advantages, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightrft_core.algorithms.groups import (
    broadcast_to_tokens,
    group_normalized_advantages,
    zero_std_groups,
)


def test_two_groups_of_two() -> None:
    # Groups [1, 0] and [0, 1]: mean 0.5, deviations ±0.5,
    # unbiased std = sqrt((0.25 + 0.25) / (2 - 1)) = sqrt(0.5) = 0.7071068,
    # advantages ±0.5 / 0.7071068 = ±0.7071068 (eps = 0 here).
    adv = group_normalized_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, eps=0.0)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([s, -s, -s, s]))


def test_default_eps_enters_the_denominator() -> None:
    # 0.5 / (sqrt(0.5) + 1e-6) = 0.5 / 0.707107781 = 0.7071057812
    adv = group_normalized_advantages(torch.tensor([1.0, 0.0]), 2)
    assert adv[0].item() == pytest.approx(0.7071057812, abs=1e-7)
    assert adv[1].item() == pytest.approx(-0.7071057812, abs=1e-7)


def test_group_of_four() -> None:
    # [1, 2, 3, 4]: mean 2.5, deviations -1.5, -0.5, 0.5, 1.5; squares sum to
    # 2.25 + 0.25 + 0.25 + 2.25 = 5; unbiased var 5/3, std sqrt(5/3) = 1.2909944;
    # advantages -1.5/1.2909944 = -1.161895, -0.5/1.2909944 = -0.387298, +0.387298, +1.161895.
    adv = group_normalized_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), 4, eps=0.0)
    torch.testing.assert_close(
        adv, torch.tensor([-1.161895, -0.387298, 0.387298, 1.161895]), atol=1e-6, rtol=0
    )


def test_equal_rewards_give_exactly_zero() -> None:
    # Group [3, 3, 3] and [0.1, 0.1, 0.1] (0.1 is not exact in binary: the mean may differ
    # from 0.1 by a rounding residue, which divided by eps would not be 0) -> all exactly 0.
    rewards = torch.tensor([3.0, 3.0, 3.0, 0.1, 0.1, 0.1, 0.0, 1.0, 2.0])
    for scale_by_std in (True, False):
        adv = group_normalized_advantages(rewards, 3, scale_by_std=scale_by_std)
        assert not torch.isnan(adv).any()
        assert torch.equal(adv[:6], torch.zeros(6))
        # The third group [0, 1, 2]: mean 1, std 1 -> -1, 0, 1 (Dr.GRPO: same deviations).
        torch.testing.assert_close(adv[6:], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-5, rtol=0)


def test_dr_grpo_does_not_divide_by_std() -> None:
    # Dr.GRPO: r - mean. [1, 2, 3, 4] -> -1.5, -0.5, 0.5, 1.5; [1, 0 | 0, 1] -> ±0.5.
    adv = group_normalized_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), 4, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    adv = group_normalized_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_integer_rewards_are_accepted() -> None:
    adv = group_normalized_advantages(torch.tensor([1, 0]), 2, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]))


def test_zero_std_groups() -> None:
    mask = zero_std_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2)
    assert mask.tolist() == [True, False, True]


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.tensor([1.0, 0.0]), 1, "group_size >= 2"),
        (torch.tensor([1.0, 0.0, 1.0]), 2, "multiple of group_size"),
        (torch.tensor([]), 2, "multiple of group_size"),
        (torch.tensor([[1.0, 0.0]]), 2, "1-D"),
        (torch.tensor([1.0, float("nan")]), 2, "finite"),
    ],
)
def test_bad_inputs_are_refused(rewards: torch.Tensor, group_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_normalized_advantages(rewards, group_size)


def test_broadcast_to_tokens() -> None:
    # values [2, -1] copied over each row's mask, 0 elsewhere.
    mask = torch.tensor([[True, True, False], [False, True, True]])
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]]))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        broadcast_to_tokens(torch.tensor([2.0]), mask)
