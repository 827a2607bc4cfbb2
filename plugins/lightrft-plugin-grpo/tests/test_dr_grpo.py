"""Dr.GRPO: unscaled advantages and the constant-normalised token sum, by hand."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from lightrft_core.interfaces import AdvantageInput, AlgorithmContext, LossScale, PolicyLossInput
from lightrft_plugin_grpo.dr_grpo import DrGRPO
from lightrft_plugin_grpo.grpo import GRPO


def test_defaults_are_the_papers() -> None:
    cfg = DrGRPO.Config()
    assert DrGRPO.name == "dr_grpo"
    assert DrGRPO.requires_groups
    assert cfg.scale_rewards_by_std is False
    assert cfg.loss_aggregation == "seq-mean-token-sum-norm"
    assert cfg.max_tokens_norm is None  # the engine's max_new_tokens
    assert cfg.kl_coef == 0.0
    assert not DrGRPO().needs_reference()
    # Same options as GRPO, each documented.
    assert [f.name for f in fields(DrGRPO.Config)] == [f.name for f in fields(GRPO.Config)]
    assert all(f.metadata.get("help") for f in fields(DrGRPO.Config))


def test_advantages_are_not_divided_by_the_std() -> None:
    # Group [1, 0, 0, 0]: mean 0.25 -> A = r - 0.25 = 0.75, -0.25, -0.25, -0.25.
    # Group [2, 2, 2, 2]: all equal -> exactly 0.
    # (GRPO would divide the first by std = sqrt((0.5625 + 3·0.0625) / 3) = 0.5: 1.5, -0.5.)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    mask = torch.ones(8, 2, dtype=torch.bool)
    out = DrGRPO().compute_advantages(AdvantageInput(rewards, mask, group_size=4))
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(out.advantages, expected[:, None].expand(8, 2))
    assert torch.equal(out.advantages[4:], torch.zeros(4, 2))
    grpo = GRPO().compute_advantages(AdvantageInput(rewards, mask, group_size=4))
    assert grpo.advantages[0, 0].item() == pytest.approx(1.5, abs=1e-5)


def test_loss_is_the_token_sum_over_the_max_generation_length() -> None:
    # Ratio 1 (lp = old), so the per-token loss is -A. Sequence 0: A = 0.75 on 2 tokens,
    # sequence 1: A = -0.25 on 3 tokens; MAX_TOKENS = engine.max_new_tokens = 4.
    # Token sums: -1.5 and +0.75; over MAX_TOKENS: -0.375 and 0.1875; mean over the 2
    # sequences: -0.09375. A shorter sequence is not up-weighted (no 1/|o_i|).
    log_probs = torch.zeros(2, 3, requires_grad=True)
    batch = PolicyLossInput(
        log_probs=log_probs,
        old_log_probs=torch.zeros(2, 3),
        advantages=torch.tensor([[0.75, 0.75, 0.0], [-0.25, -0.25, -0.25]]),
        action_mask=torch.tensor([[True, True, False], [True, True, True]]),
        scale=LossScale(num_tokens=5, num_sequences=2),
    )
    algo = DrGRPO()
    algo.setup(AlgorithmContext(max_new_tokens=4))
    out = algo.policy_loss(batch)
    assert out.loss.item() == pytest.approx(-0.09375)
    # d loss / d lp_t = -A·ρ / (MAX_TOKENS · N_seq) = -A / 8: -0.09375 and +0.03125.
    out.loss.backward()
    assert log_probs.grad is not None
    torch.testing.assert_close(
        log_probs.grad, torch.tensor([[-0.09375, -0.09375, 0.0], [0.03125, 0.03125, 0.03125]])
    )


def test_needs_the_max_generation_length() -> None:
    batch = PolicyLossInput(
        log_probs=torch.zeros(1, 1),
        old_log_probs=torch.zeros(1, 1),
        advantages=torch.ones(1, 1),
        action_mask=torch.ones(1, 1, dtype=torch.bool),
        scale=LossScale(1, 1),
    )
    with pytest.raises(ValueError, match="dr_grpo: loss_aggregation 'seq-mean-token-sum-norm'"):
        DrGRPO().policy_loss(batch)
