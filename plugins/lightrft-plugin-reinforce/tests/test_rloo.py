"""RLOO advantages, worked out by hand."""

from __future__ import annotations

import pytest
import torch

from lightrft_core.interfaces import AdvantageInput
from lightrft_plugin_reinforce.rloo import RLOO


def test_leave_one_out_advantages_are_broadcast_over_the_response() -> None:
    # Group [1, 2, 3, 6]: A_i = r_i - (12 - r_i)/3 = -8/3, -4/3, 0, 4; group [0, 0, 0, 0]: 0.
    mask = torch.tensor([[True, True, False]] * 4 + [[False, True, True]] * 4)
    out = RLOO().compute_advantages(
        AdvantageInput(
            rewards=torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 0.0]),
            action_mask=mask,
            group_size=4,
        )
    )
    per_sample = torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0])
    expected = torch.where(mask, per_sample[:, None].expand(8, 3), 0.0)
    torch.testing.assert_close(out.advantages, expected)
    assert out.metrics["zero_std_group_fraction"] == 0.5
    assert out.metrics["advantage_mean"] == pytest.approx(0.0, abs=1e-6)
    # mean reward 12/8 = 1.5
    assert out.metrics["reward_mean"] == pytest.approx(1.5)


def test_equal_reward_groups_give_exactly_zero() -> None:
    out = RLOO().compute_advantages(
        AdvantageInput(
            rewards=torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0]),
            action_mask=torch.ones(6, 2, dtype=torch.bool),
            group_size=3,
        )
    )
    assert torch.equal(out.advantages, torch.zeros(6, 2))
    assert out.metrics["zero_std_group_fraction"] == 1.0


def test_kl_penalised_reward_before_leave_one_out() -> None:
    # k1 with Δ = old - ref: sample 0 tokens [0.2, 0.4] -> Σ 0.6; sample 1: [1.0, (5.0 masked)]
    # -> Σ 1.0. β = 0.5: rewards [1, 0] -> [1 - 0.3, 0 - 0.5] = [0.7, -0.5];
    # G = 2: A_0 = 0.7 - (-0.5) = 1.2, A_1 = -0.5 - 0.7 = -1.2.
    old = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    ref = old - torch.tensor([[0.2, 0.4], [1.0, 5.0]])
    algo = RLOO(RLOO.Config(kl_coef=0.5))
    assert algo.needs_reference()
    out = algo.compute_advantages(
        AdvantageInput(
            rewards=torch.tensor([1.0, 0.0]),
            action_mask=torch.tensor([[True, True], [True, False]]),
            group_size=2,
            old_log_probs=old,
            ref_log_probs=ref,
        )
    )
    torch.testing.assert_close(out.advantages, torch.tensor([[1.2, 1.2], [-1.2, 0.0]]))
    # mean Σkl = 0.8, β·that = 0.4; mean penalised reward 0.1
    assert out.metrics["kl_sequence_mean"] == pytest.approx(0.8)
    assert out.metrics["kl_penalty_mean"] == pytest.approx(0.4)
    assert out.metrics["reward_mean"] == pytest.approx(0.1)


def test_group_size_one_is_refused() -> None:
    assert RLOO.requires_groups
    with pytest.raises(ValueError, match="group_size >= 2"):
        RLOO().compute_advantages(
            AdvantageInput(
                rewards=torch.tensor([1.0, 0.0]),
                action_mask=torch.ones(2, 1, dtype=torch.bool),
                group_size=1,
            )
        )
