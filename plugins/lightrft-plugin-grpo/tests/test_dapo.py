"""DAPO: overlong shaping, clip-higher, dynamic-sampling filter, defaults -- by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lightrft_core.interfaces import AdvantageInput, AlgorithmContext, LossScale, PolicyLossInput
from lightrft_plugin_grpo.advantages import overlong_length_penalty
from lightrft_plugin_grpo.dapo import DAPO
from lightrft_plugin_grpo.grpo import GRPO


def make(max_new_tokens: int | None = None, **options: Any) -> DAPO:
    """DAPO with ``options``, set up as the loop would with ``engine.max_new_tokens``."""
    algo = DAPO(DAPO.Config(**options))
    algo.setup(AlgorithmContext(max_new_tokens=max_new_tokens))
    return algo


def test_defaults_are_the_papers() -> None:
    cfg = DAPO.Config()
    assert DAPO.name == "dapo"
    assert DAPO.requires_groups
    assert (cfg.clip_eps_low, cfg.clip_eps_high) == (0.2, 0.28)
    assert cfg.loss_aggregation == "token-mean"
    assert cfg.kl_coef == 0.0 and not DAPO().needs_reference()
    assert cfg.overlong_penalty_factor == 1.0
    assert cfg.dynamic_sampling is True
    assert DAPO().max_resample_rounds == cfg.max_resample_rounds == 3


# ---------------------------------------------------------------------- overlong shaping
def test_overlong_penalty_inside_in_and_beyond_the_buffer() -> None:
    # L_max = 10, L_buf = 4: no penalty up to L_max - L_buf = 6, then -(L - 6)/4, -1 past 10.
    #   L = 5  inside:         0
    #   L = 6  at the edge:    -(6 - 6)/4 = 0
    #   L = 8  in the buffer:  -(8 - 6)/4 = -0.5
    #   L = 9  in the buffer:  -(9 - 6)/4 = -0.75
    #   L = 10 at L_max:       -(10 - 6)/4 = -1
    #   L = 12 beyond L_max:   -(12 - 6)/4 = -1.5, clamped to -1 (the paper's -1)
    lengths = torch.tensor([5, 6, 8, 9, 10, 12])
    penalty = overlong_length_penalty(lengths, max_length=10, buffer=4)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -0.75, -1.0, -1.0]))


@pytest.mark.parametrize(
    ("max_length", "buffer"), [(0, 1), (10, 0), (10, 11)], ids=["no-length", "no-buffer", "big"]
)
def test_overlong_penalty_refuses_bad_limits(max_length: int, buffer: int) -> None:
    with pytest.raises(ValueError, match="overlong shaping needs"):
        overlong_length_penalty(torch.tensor([1]), max_length, buffer)


def _shaping_input() -> AdvantageInput:
    # One group of 4, all rewards 1; response lengths 5, 8, 10, 12 tokens (mask width 12).
    lengths = torch.tensor([5, 8, 10, 12])
    mask = torch.arange(12)[None, :] < lengths[:, None]
    return AdvantageInput(torch.ones(4), mask, group_size=4)


def test_overlong_shaping_enters_the_advantages() -> None:
    # L_max = 10, L_buf = 4, factor 0.5: penalties 0.5·[0, -0.5, -1, -1] = [0, -0.25, -0.5,
    # -0.5]; shaped rewards [1, 0.75, 0.5, 0.5], mean 0.6875. Without std scaling the
    # advantages are the deviations 0.3125, 0.0625, -0.1875, -0.1875: equal raw rewards, yet
    # the shorter responses are preferred.
    algo = make(
        max_response_length=10,
        overlong_buffer=4,
        overlong_penalty_factor=0.5,
        scale_rewards_by_std=False,
    )
    out = algo.compute_advantages(_shaping_input())
    torch.testing.assert_close(
        out.advantages[:, 0], torch.tensor([0.3125, 0.0625, -0.1875, -0.1875])
    )
    assert (out.advantages[~_shaping_input().action_mask] == 0).all()
    assert out.metrics["reward_mean"] == pytest.approx(0.6875)
    # mean penalty (0 - 0.25 - 0.5 - 0.5) / 4 = -0.3125; 3 of 4 responses penalised.
    assert out.metrics["overlong_penalty_mean"] == pytest.approx(-0.3125)
    assert out.metrics["overlong_fraction"] == pytest.approx(0.75)


def test_overlong_limits_come_from_the_engine_when_not_configured() -> None:
    # No max_response_length: L_max = max_new_tokens = 10 (from the loop), default
    # L_buf = 10 // 5 = 2, threshold 8: penalties [0, 0, -1, -1] (factor 1), shaped rewards
    # [1, 1, 0, 0], mean 0.5, deviations ±0.5.
    algo = make(max_new_tokens=10, scale_rewards_by_std=False)
    assert algo.estimator.overlong_limits() == (10, 2)
    out = algo.compute_advantages(_shaping_input())
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([0.5, 0.5, -0.5, -0.5]))
    # A configured max_response_length wins over the engine's value: L_max = 20, L_buf = 4,
    # threshold 16: nobody is penalised, the equal rewards give exactly 0.
    algo = make(max_new_tokens=10, max_response_length=20)
    assert algo.estimator.overlong_limits() == (20, 4)
    out = algo.compute_advantages(_shaping_input())
    assert torch.equal(out.advantages, torch.zeros(4, 12))
    assert out.metrics["overlong_fraction"] == 0.0


def test_overlong_shaping_needs_a_maximum_length() -> None:
    with pytest.raises(ValueError, match="algorithm.max_response_length"):
        make().compute_advantages(_shaping_input())
    # Disabled shaping needs none, and logs no shaping metric.
    out = make(overlong_penalty_factor=0.0).compute_advantages(_shaping_input())
    assert torch.equal(out.advantages, torch.zeros(4, 12))
    assert "overlong_penalty_mean" not in out.metrics


def test_buffer_larger_than_the_engine_length_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds the maximum response length"):
        make(max_new_tokens=6, overlong_buffer=8).compute_advantages(_shaping_input())


# ---------------------------------------------------------------------- clip-higher
def test_clip_higher_both_sides() -> None:
    # ε_low = 0.2, ε_high = 0.28: ratio range [0.8, 1.28]. L = max(-ρA, -clip(ρ)A):
    #   A=1,  ρ=1.25: inside             -> -1.25, dL/dlp = -ρA = -1.25
    #   A=1,  ρ=1.4:  above, clipped     -> -1.28, gradient 0
    #   A=-1, ρ=0.7:  below, clipped     -> max(0.7, 0.8) = 0.8, gradient 0
    #   A=-1, ρ=1.4:  A<0 above: kept    -> max(1.4, 1.28) = 1.4, dL/dlp = 1.4
    #   A=1,  ρ=0.7:  A>0 below: kept    -> max(-0.7, -0.8) = -0.7, dL/dlp = -0.7
    # token-mean over 5: (-1.25 - 1.28 + 0.8 + 1.4 - 0.7) / 5 = -1.03 / 5 = -0.206.
    ratios = torch.tensor([[1.25, 1.4, 0.7, 1.4, 0.7]])
    log_probs = torch.log(ratios).requires_grad_(True)
    batch = PolicyLossInput(
        log_probs=log_probs,
        old_log_probs=torch.zeros(1, 5),
        advantages=torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]]),
        action_mask=torch.ones(1, 5, dtype=torch.bool),
        scale=LossScale(num_tokens=5, num_sequences=1),
    )
    out = make().policy_loss(batch)
    assert out.loss.item() == pytest.approx(-0.206, abs=1e-6)
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.4)
    out.loss.backward()
    assert log_probs.grad is not None
    torch.testing.assert_close(
        log_probs.grad, torch.tensor([[-0.25, 0.0, 0.0, 0.28, -0.14]]), atol=1e-6, rtol=0
    )
    # GRPO's symmetric 0.2 clips the first token at 1.2: (-1.2 - 1.2 + 0.8 + 1.4 - 0.7) / 5.
    grpo = GRPO().policy_loss(batch)
    assert grpo.loss.item() == pytest.approx(-0.9 / 5, abs=1e-6)


# ---------------------------------------------------------------------- dynamic sampling
def test_filter_groups_drops_groups_of_equal_rewards() -> None:
    # Groups of 2: [1, 1] all right, [0, 1] mixed, [0, 0] all wrong, [0.5, 0.25] mixed.
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.25])
    assert make().filter_groups(rewards, 2).tolist() == [False, True, False, True]
    # Groups of 4: [1, 1, 0, 1] mixed, [0, 0.5 - 0.5, 0, 0] hides no difference: 0 == 0.
    rewards4 = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.5 - 0.5, 0.0, 0.0])
    assert make().filter_groups(rewards4, 4).tolist() == [True, False]


def test_without_dynamic_sampling_every_group_is_kept() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0])
    algo = make(dynamic_sampling=False)
    assert algo.filter_groups(rewards, 2).tolist() == [True, True]
    assert algo.max_resample_rounds == 0
    assert make(max_resample_rounds=5).max_resample_rounds == 5


def test_the_base_interface_keeps_every_group() -> None:
    # GRPO does not override the interface's defaults: keep all, never resample.
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    assert GRPO().filter_groups(rewards, 2).tolist() == [True, True, True]
    assert GRPO().filter_groups(rewards, 3).tolist() == [True, True]
    assert GRPO().max_resample_rounds == 0
    with pytest.raises(ValueError, match="multiple of group_size"):
        GRPO().filter_groups(rewards, 4)


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"overlong_penalty_factor": -1.0}, "overlong_penalty_factor must be >= 0"),
        ({"overlong_buffer": 0}, "overlong_buffer must be >= 1"),
        ({"max_response_length": 0}, "max_response_length must be >= 1"),
        ({"overlong_buffer": 9, "max_response_length": 8}, "must not exceed"),
        ({"max_resample_rounds": -1}, "max_resample_rounds must be >= 0"),
        ({"clip_eps_low": 1.0}, "clip_eps_low"),  # GRPO's checks still apply
    ],
)
def test_config_validation(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DAPO.Config(**options)


def test_every_option_is_documented() -> None:
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(DAPO.Config))
    assert math.isclose(DAPO.Config().clip_eps_high, 0.28)
