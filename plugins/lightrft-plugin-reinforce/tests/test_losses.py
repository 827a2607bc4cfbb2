"""The policy loss REINFORCE++, REINFORCE++-baseline and RLOO share (the core's
``clipped_loss``): hand values and the configuration checks (micro-batch and data-parallel
invariance: ``test_conformance.py``)."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

import pytest
import torch

from lightrft_core.interfaces import AlgorithmContext, LossScale, PolicyLossInput
from lightrft_plugin_reinforce.reinforce_pp import ReinforcePP, ReinforcePPBaseline
from lightrft_plugin_reinforce.rloo import RLOO

ALGORITHMS = [ReinforcePP, ReinforcePPBaseline, RLOO]


def _hand_batch(**overrides: Any) -> PolicyLossInput:
    # One sequence, 3 positions, the last is padding. Ratios 1.5 and 1.1, A = 2 and 2.
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    log_probs = (old + torch.log(torch.tensor([[1.5, 1.1, 7.0]]))).requires_grad_(True)
    values: dict[str, Any] = {
        "log_probs": log_probs,
        "old_log_probs": old,
        "advantages": torch.tensor([[2.0, 2.0, 0.0]]),
        "action_mask": torch.tensor([[True, True, False]]),
        "scale": LossScale(num_tokens=2, num_sequences=1),
    }
    values.update(overrides)
    return PolicyLossInput(**values)


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_ppo_clip_loss_value_gradient_and_metrics(cls: Any) -> None:
    # ε = 0.2: token 0: max(-3.0, -2.4) = -2.4 (clipped); token 1: -2.2; token 2 masked.
    # token-mean over 2 tokens: (-2.4 - 2.2)/2 = -2.3. Gradient: token 0 clipped -> 0;
    # token 1: -A·ρ/2 = -2·1.1/2 = -1.1; padding 0.
    batch = _hand_batch()
    out = cls().policy_loss(batch)
    assert out.loss.item() == pytest.approx(-2.3, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(batch.log_probs.grad, torch.tensor([[0.0, -1.1, 0.0]]))
    # clip fraction 1/2; ratio mean 1.3; approx_kl (k3 of ln ρ) =
    # (1/1.5 - 1 + ln 1.5 + 1/1.1 - 1 + ln 1.1)/2 = (0.0721318 + 0.0044011)/2 = 0.0382664
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.5)
    assert out.metrics["ratio_mean"].item() == pytest.approx(1.3, abs=1e-6)
    assert out.metrics["approx_kl"].item() == pytest.approx(0.0382664, abs=1e-6)
    assert all(not m.requires_grad for m in out.metrics.values())


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_seq_mean_token_sum_norm_divides_by_the_engine_max_new_tokens(cls: Any) -> None:
    # Token losses -2.4 and -2.2 (above), one sequence: Σ_t L / MAX / 1. With the engine's
    # max_new_tokens = 4: -4.6 / 4 = -1.15; max_tokens_norm = 2, when set, wins: -2.3.
    algo = cls(cls.Config(loss_aggregation="seq-mean-token-sum-norm"))
    with pytest.raises(ValueError, match="set algorithm.max_tokens_norm"):
        algo.policy_loss(_hand_batch())
    algo.setup(AlgorithmContext(max_new_tokens=4))
    out = algo.policy_loss(_hand_batch())
    assert out.loss.item() == pytest.approx(-1.15, abs=1e-6)
    pinned = cls(cls.Config(loss_aggregation="seq-mean-token-sum-norm", max_tokens_norm=2))
    pinned.setup(AlgorithmContext(max_new_tokens=4))
    assert pinned.policy_loss(_hand_batch()).loss.item() == pytest.approx(-2.3)


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_kl_as_a_loss_term(cls: Any) -> None:
    # kl_mode loss, k1 with lp - ref = 0.5 on both valid tokens: KL token-mean 0.5;
    # β = 0.1: loss = -2.3 + 0.1·0.5 = -2.25.
    base = _hand_batch()
    algo = cls(cls.Config(kl_coef=0.1, kl_mode="loss"))
    assert algo.needs_reference()
    out = algo.policy_loss(replace(base, ref_log_probs=base.log_probs.detach() - 0.5))
    assert out.loss.item() == pytest.approx(-2.25, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="ref_log_probs"):
        algo.policy_loss(_hand_batch())


def test_kl_in_reward_mode_leaves_the_loss_alone() -> None:
    base = _hand_batch()
    out = RLOO(RLOO.Config(kl_coef=0.1)).policy_loss(
        replace(base, ref_log_probs=base.log_probs.detach() - 0.5)
    )
    assert out.loss.item() == pytest.approx(-2.3, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.5, abs=1e-6)  # k1, reported only


def test_dual_clip() -> None:
    # A = -1, ρ = 5 then 1; c = 3: min(5, 3) = 3 and 1 -> token-mean 2; dual fraction 1/2.
    batch = PolicyLossInput(
        log_probs=torch.tensor([[math.log(5.0), 0.0]], requires_grad=True),
        old_log_probs=torch.zeros(1, 2),
        advantages=torch.tensor([[-1.0, -1.0]]),
        action_mask=torch.ones(1, 2, dtype=torch.bool),
        scale=LossScale(num_tokens=2, num_sequences=1),
    )
    out = RLOO(RLOO.Config(dual_clip=3.0)).policy_loss(batch)
    assert out.loss.item() == pytest.approx(2.0, abs=1e-6)
    assert out.metrics["dual_clip_fraction"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize("cls", ALGORITHMS)
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"loss_aggregation": "sum"}, "loss_aggregation must be one of token-mean"),
        ({"dual_clip": 1.0}, "dual_clip must be > 1"),
        ({"clip_eps_low": 1.0}, "clip_eps_low"),
        ({"clip_eps_high": -0.2}, "clip_eps_high"),
        ({"max_tokens_norm": 0}, "max_tokens_norm must be >= 1"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"kl_estimator": "k4"}, "kl_estimator must be one of k1, k2, k3"),
        ({"kl_mode": "both"}, "kl_mode must be one of reward, loss"),
    ],
)
def test_shared_config_validation(cls: Any, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls.Config(**options)


@pytest.mark.parametrize("cls", [ReinforcePP, ReinforcePPBaseline])
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"gamma": 1.5}, "gamma must be in"),
        ({"gamma": -0.1}, "gamma must be in"),
        ({"advantage_eps": -1.0}, "advantage_eps"),
        ({"advantage_clip": 0.0}, "advantage_clip"),
    ],
)
def test_reinforce_config_validation(cls: Any, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls.Config(**options)


def test_defaults() -> None:
    assert ReinforcePP.Config().whiten_center is True
    assert ReinforcePPBaseline.Config().whiten_center is False
    for cls in ALGORITHMS:
        cfg = cls.Config()
        assert (cfg.kl_coef, cfg.kl_estimator, cfg.kl_mode) == (0.0, "k1", "reward")
        assert not cls().needs_reference() and not cls().needs_critic()
        assert all(f.metadata.get("help") for f in fields(cls.Config))
    assert not ReinforcePP.requires_groups
    assert ReinforcePPBaseline.requires_groups and RLOO.requires_groups
