"""Token rewards, discounted returns and group baselines, checked against hand values."""

from __future__ import annotations

import pytest
import torch

from lightrft_core.algorithms.groups import (
    broadcast_to_tokens,
    group_centered,
    leave_one_out,
    zero_std_groups,
)
from lightrft_core.algorithms.token_rewards import last_token_mask, token_level_rewards
from lightrft_plugin_reinforce.returns import discounted_returns

# Row 0: prompt at position 0, response at 1..3. Row 1: response at 0..1, then padding.
# Row 2: no response token at all.
MASK = torch.tensor(
    [[False, True, True, True], [True, True, False, False], [False, False, False, False]]
)


def test_last_token_mask() -> None:
    assert last_token_mask(MASK).tolist() == [
        [False, False, False, True],
        [False, True, False, False],
        [False, False, False, False],
    ]


def test_token_rewards_put_the_outcome_on_the_last_token_and_the_kl_everywhere() -> None:
    # β = 0.1. Row 0: r = 1, kl on the response [0.2, -0.4, 0.6] -> R = [0, -0.02, 0.04, 0.94]
    # (the 9.0 under the prompt is ignored). Row 1: r = 0, kl [1, -1] -> R = [-0.1, 0.1, 0, 0]
    # (the 5s under the padding are ignored). Row 2 (no response): all 0, r is dropped.
    kl = torch.tensor([[9.0, 0.2, -0.4, 0.6], [1.0, -1.0, 5.0, 5.0], [3.0, 3.0, 3.0, 3.0]])
    rewards = token_level_rewards(torch.tensor([1.0, 0.0, 7.0]), MASK, kl=kl, kl_coef=0.1)
    expected = torch.tensor([[0.0, -0.02, 0.04, 0.94], [-0.1, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    # Without KL only the outcome remains.
    plain = token_level_rewards(torch.tensor([1.0, 0.0, 7.0]), MASK)
    torch.testing.assert_close(plain, torch.tensor([[0, 0, 0, 1.0], [0, 0, 0, 0], [0, 0, 0, 0]]))


def test_discounted_returns_by_hand() -> None:
    # γ = 0.5, the token rewards of the test above.
    # Row 0: G_3 = 0.94, G_2 = 0.04 + 0.5·0.94 = 0.51, G_1 = -0.02 + 0.5·0.51 = 0.235.
    # Row 1: G_1 = 0.1, G_0 = -0.1 + 0.5·0.1 = -0.05.
    token_rewards = torch.tensor(
        [[0.0, -0.02, 0.04, 0.94], [-0.1, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    returns = discounted_returns(token_rewards, MASK, gamma=0.5)
    expected = torch.tensor(
        [[0.0, 0.235, 0.51, 0.94], [-0.05, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(returns, expected)
    # γ = 1: plain sums to the end: row 0 0.96, 0.98, 0.94; row 1 0.0, 0.1.
    returns = discounted_returns(token_rewards, MASK, gamma=1.0)
    expected = torch.tensor([[0.0, 0.96, 0.98, 0.94], [0.0, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(returns, expected)


def test_masked_gaps_do_not_count_as_steps() -> None:
    # Valid tokens at 0 and 2 (a gap at 1), R = [1, 9, 2]: G_2 = 2, G_0 = 1 + 0.5·2 = 2;
    # the 9 under the gap is ignored and the gap costs no discount.
    mask = torch.tensor([[True, False, True]])
    returns = discounted_returns(torch.tensor([[1.0, 9.0, 2.0]]), mask, gamma=0.5)
    torch.testing.assert_close(returns, torch.tensor([[2.0, 0.0, 2.0]]))


def test_bad_return_inputs() -> None:
    with pytest.raises(ValueError, match="gamma must be in"):
        discounted_returns(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), gamma=1.5)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        discounted_returns(torch.zeros(2), torch.ones(2, dtype=torch.bool), gamma=1.0)
    with pytest.raises(ValueError, match=r"rewards \[B\]"):
        token_level_rewards(torch.zeros(3), torch.ones(2, 2, dtype=torch.bool))


# ---------------------------------------------------------------------- group baselines
def test_leave_one_out_by_hand() -> None:
    # Group [1, 2, 3, 6]: Σ = 12; A_i = r_i - (12 - r_i)/3:
    #   1 - 11/3 = -8/3, 2 - 10/3 = -4/3, 3 - 9/3 = 0, 6 - 6/3 = 4   (= 4/3·(r - 3))
    # Group [0.7, 0.7, 0.7, 0.7]: exactly 0.
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.7, 0.7, 0.7, 0.7])
    adv = leave_one_out(rewards, 4)
    torch.testing.assert_close(adv[:4], torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0]))
    assert torch.equal(adv[4:], torch.zeros(4))
    # G = 2: A = r_i - r_other: [1, 0] -> [1, -1]; [0.2, 0.5] -> [-0.3, 0.3]
    adv = leave_one_out(torch.tensor([1.0, 0.0, 0.2, 0.5]), 2)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -0.3, 0.3]))


def test_group_centering_by_hand() -> None:
    # [1, 2, 3, 6] - 3 = [-2, -1, 0, 3]; the equal group gives exactly 0 (0.1 is not exact
    # in binary, so the computed mean may differ from 0.1 by a rounding residue).
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.1, 0.1, 0.1, 0.1])
    centered = group_centered(rewards, 4)
    torch.testing.assert_close(centered[:4], torch.tensor([-2.0, -1.0, 0.0, 3.0]))
    assert torch.equal(centered[4:], torch.zeros(4))
    assert zero_std_groups(rewards, 4).tolist() == [False, True]


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.tensor([1.0, 0.0]), 1, "group_size >= 2"),
        (torch.tensor([1.0, 0.0, 1.0]), 2, "multiple of group_size"),
        (torch.tensor([]), 2, "multiple of group_size"),
        (torch.tensor([[1.0, 0.0]]), 2, "1-D"),
        (torch.tensor([1.0, float("inf")]), 2, "finite"),
    ],
)
def test_bad_group_inputs_are_refused(rewards: torch.Tensor, group_size: int, match: str) -> None:
    for fn in (leave_one_out, group_centered):
        with pytest.raises(ValueError, match=match):
            fn(rewards, group_size)


def test_broadcast_to_tokens() -> None:
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0, 5.0]), MASK)
    expected = torch.tensor([[0, 2, 2, 2], [-1, -1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        broadcast_to_tokens(torch.tensor([2.0]), MASK)
