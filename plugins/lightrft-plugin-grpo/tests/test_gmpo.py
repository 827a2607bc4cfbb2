"""GMPO: the clipped geometric mean of token ratios, value and gradient -- by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lightrft_core.interfaces import LossScale, PolicyLossInput
from lightrft_plugin_grpo.gmpo import GMPO
from lightrft_plugin_grpo.grpo import GRPO
from lightrft_plugin_grpo.sequence_losses import gmpo_loss

# Sequence 0: A = +1, 3 tokens, log-ratios δ = 0.1, 0.6, -0.7.
# Sequence 1: A = -2, 2 tokens, log-ratios δ = -0.5, 0.2 (then padding, δ = 9 ignored).
# Log-space clip ε = 0.4 on both sides (the paper's).
#   A > 0 keeps min(δ, clip(δ)): 0.1, min(0.6, 0.4) = 0.4 (clipped), min(-0.7, -0.4) = -0.7
#     mean (0.1 + 0.4 - 0.7) / 3 = -0.0666667, ratio e^-0.0666667 = 0.9355069850
#     L_0 = -A·ratio = -0.9355069850
#   A < 0 keeps max(δ, clip(δ)): max(-0.5, -0.4) = -0.4 (clipped), max(0.2, 0.2) = 0.2
#     mean (-0.4 + 0.2) / 2 = -0.1, ratio e^-0.1 = 0.9048374180
#     L_1 = -A·ratio = 2 · 0.9048374180 = 1.8096748361
DELTA = [[0.1, 0.6, -0.7], [-0.5, 0.2, 9.0]]
MASK = [[True, True, True], [True, True, False]]
ADV = [[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]]
R0, R1 = math.exp(-0.2 / 3), math.exp(-0.1)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]])
    log_probs = (old + torch.tensor(DELTA)).requires_grad_(True)
    return log_probs, old, torch.tensor(ADV), torch.tensor(MASK)


def test_defaults_are_the_papers() -> None:
    cfg = GMPO.Config()
    assert GMPO.name == "gmpo" and GMPO.requires_groups
    assert (cfg.clip_eps_low, cfg.clip_eps_high) == (0.4, 0.4)  # log space
    assert cfg.loss_aggregation == "seq-mean-token-mean"
    assert cfg.kl_coef == 0.0 and cfg.dual_clip is None


def test_per_sequence_value_clipping_and_gradient() -> None:
    log_probs, old, adv, mask = _inputs()
    out = gmpo_loss(log_probs, old, adv, mask, log_clip_low=0.4, log_clip_high=0.4)
    torch.testing.assert_close(out.ratio.detach()[:, 0], torch.tensor([R0, R1]))
    torch.testing.assert_close(out.loss.detach()[:, 0], torch.tensor([-R0, 2 * R1]))
    assert out.clipped.tolist() == [[False, True, False], [True, False, False]]
    # d L_i / d lp_t = -A_i · ratio_i / n_i on unclipped tokens, 0 on clipped ones:
    #   sequence 0: -1 · 0.9355069850 / 3 = -0.3118356617 (tokens 0 and 2)
    #   sequence 1: +2 · 0.9048374180 / 2 = +0.9048374180 (token 1)
    out.loss.sum().backward()
    assert log_probs.grad is not None
    expected = torch.tensor([[-R0 / 3, 0.0, -R0 / 3], [0.0, R1, 0.0]])
    torch.testing.assert_close(log_probs.grad, expected)


def test_batch_loss_is_the_mean_over_sequences() -> None:
    # (L_0 + L_1) / 2 = (-0.9355069850 + 1.8096748361) / 2 = 0.4370839255; gradients halve.
    # clip_fraction: 2 clipped of 5 response tokens.
    log_probs, old, adv, mask = _inputs()
    out = GMPO().policy_loss(PolicyLossInput(log_probs, old, adv, mask, LossScale(5, 2)))
    assert out.loss.item() == pytest.approx(0.4370839255, abs=1e-6)
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.4)
    out.loss.backward()
    expected = torch.tensor([[-R0 / 6, 0.0, -R0 / 6], [0.0, R1 / 2, 0.0]])
    torch.testing.assert_close(log_probs.grad, expected)


def test_geometric_mean_is_less_sensitive_to_an_outlier_than_the_arithmetic_mean() -> None:
    # No clipping (ε = 10): one token at ratio e^3, two at ratio 1, A = 1.
    # GMPO: ratio exp((3 + 0 + 0) / 3) = e = 2.7182818; the arithmetic mean of the ratios
    # (GRPO, seq-mean-token-mean) is (e^3 + 2) / 3 = 7.3618457.
    log_probs = torch.tensor([[3.0, 0.0, 0.0]])
    out = gmpo_loss(
        log_probs,
        torch.zeros(1, 3),
        torch.ones(1, 3),
        torch.ones(1, 3, dtype=torch.bool),
        log_clip_low=10.0,
        log_clip_high=10.0,
    )
    assert out.ratio.item() == pytest.approx(math.e, rel=1e-6)
    grpo = GRPO(GRPO.Config(clip_eps_high=100.0, loss_aggregation="seq-mean-token-mean"))
    arithmetic = grpo.policy_loss(
        PolicyLossInput(
            log_probs,
            torch.zeros(1, 3),
            torch.ones(1, 3),
            torch.ones(1, 3, dtype=torch.bool),
            LossScale(3, 1),
        )
    )
    assert -arithmetic.loss.item() == pytest.approx(7.3618457, rel=1e-6)


def test_zero_advantage_gives_zero_loss_and_gradient() -> None:
    log_probs, old, _, mask = _inputs()
    out = gmpo_loss(log_probs, old, torch.zeros(2, 3), mask)
    assert torch.equal(out.loss.detach(), torch.zeros(2, 1))
    out.loss.sum().backward()
    assert torch.equal(log_probs.grad, torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dual_clip": 2.0}, "gmpo has no dual clip"),
        ({"clip_eps_low": -0.1}, "must be >= 0"),
        ({"clip_eps_high": -0.1}, "must be >= 0"),
    ],
)
def test_config_validation(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GMPO.Config(**options)


def test_log_space_bounds_may_exceed_one() -> None:
    # In log space 1.5 is a valid bound (ratio e^-1.5); GRPO's [0, 1) rule does not apply.
    assert GMPO.Config(clip_eps_low=1.5).clip_eps_low == 1.5
    with pytest.raises(ValueError, match="log-space clip bounds"):
        gmpo_loss(
            torch.zeros(1, 1),
            torch.zeros(1, 1),
            torch.ones(1, 1),
            torch.ones(1, 1) > 0,
            log_clip_low=-1.0,
        )
