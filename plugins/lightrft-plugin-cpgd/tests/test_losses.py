"""CPGD's per-token terms, checked token by token against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from lightrft_core.algorithms import ppo_clip_loss
from lightrft_core.interfaces import LossScale, PolicyLossInput
from lightrft_plugin_cpgd.cpgd import CPGD
from lightrft_plugin_cpgd.losses import DEFAULT_DRIFT_CLIP, cpgd_token_loss, log_ratio_bounds

# ε = 0.2: bounds ln(0.8) = -0.2231436 (for A < 0) and ln(1.2) = 0.1823216 (for A > 0).
LOWER, UPPER = math.log(0.8), math.log(1.2)


def _terms(log_ratios: list[float], advantages: list[float], **kwargs: float | None):  # type: ignore[no-untyped-def]
    old = torch.full((1, len(log_ratios)), -2.0)
    log_probs = (old + torch.tensor([log_ratios])).requires_grad_(True)
    return log_probs, cpgd_token_loss(log_probs, old, torch.tensor([advantages]), **kwargs)


def test_policy_gradient_term_is_clipped_by_the_sign_of_the_advantage() -> None:
    # (A, δ) -> L^pg = -A·min(δ, ln 1.2) for A > 0, -A·max(δ, ln 0.8) for A < 0:
    #   ( 2,  0.3): -2·0.1823216 = -0.3646431  past the upper bound: clipped, gradient 0
    #   ( 2,  0.1): -2·0.1 = -0.2                                     gradient -A = -2
    #   ( 2, -0.5): -2·(-0.5) = 1.0   A > 0 below: no lower bound,    gradient -2
    #   (-1, -0.4): 1·max(-0.4, -0.2231436) = -0.2231436  clipped,    gradient 0
    #   (-1,  0.5): 1·0.5 = 0.5       A < 0 above: no upper bound,    gradient +1
    #   ( 0,  0.7): 0                                                 gradient 0
    #   (-1, -0.1): 1·(-0.1) = -0.1   inside,                         gradient +1
    log_probs, terms = _terms(
        [0.3, 0.1, -0.5, -0.4, 0.5, 0.7, -0.1], [2.0, 2.0, 2.0, -1.0, -1.0, 0.0, -1.0]
    )
    expected = torch.tensor([[-2 * UPPER, -0.2, 1.0, LOWER, 0.5, 0.0, -0.1]])
    torch.testing.assert_close(terms.policy_gradient.detach(), expected)
    assert terms.clipped.tolist() == [[True, False, False, True, False, False, False]]
    terms.policy_gradient.sum().backward()
    torch.testing.assert_close(
        log_probs.grad, torch.tensor([[0.0, -2.0, -2.0, 0.0, 1.0, 0.0, 1.0]])
    )


def test_policy_drift_term_by_hand() -> None:
    # D = ρ - 1 - δ, dD/dlp = ρ - 1:
    #   δ = 0.3:  e^0.3  = 1.3498588 -> D = 0.0498588, grad  0.3498588
    #   δ = -0.5: e^-0.5 = 0.6065307 -> D = 0.1065307, grad -0.3934693
    #   δ = 0:    D = 0, grad 0 (no drift, no pull)
    #   δ = 0.7:  e^0.7  = 2.0137527 -> D = 0.3137527, grad  1.0137527
    log_probs, terms = _terms([0.3, -0.5, 0.0, 0.7], [1.0, -1.0, 1.0, 0.0])
    torch.testing.assert_close(
        terms.drift.detach(), torch.tensor([[0.0498588, 0.1065307, 0.0, 0.3137527]])
    )
    terms.drift.sum().backward()
    torch.testing.assert_close(
        log_probs.grad, torch.tensor([[0.3498588, -0.3934693, 0.0, 1.0137527]])
    )


def test_asymmetric_bounds() -> None:
    # ε_low = 0.5 (lower bound ln 0.5 = -0.6931472), ε_high = 0.1 (upper ln 1.1 = 0.0953102):
    #   (1, 0.2) -> clipped at 0.0953102: L = -0.0953102;  (-1, -0.6) -> inside: L = -0.6
    _, terms = _terms([0.2, -0.6], [1.0, -1.0], clip_eps_low=0.5, clip_eps_high=0.1)
    torch.testing.assert_close(
        terms.policy_gradient.detach(), torch.tensor([[-math.log(1.1), -0.6]])
    )
    assert terms.clipped.tolist() == [[True, False]]


def test_no_ratio_multiplies_the_gradient_unlike_ppo() -> None:
    # A = -1 and a ratio that exploded to e^3 = 20.0855: PPO's gradient is -A·ρ = 20.0855,
    # CPGD's policy-gradient term gives -A = 1 (A < 0 is bounded below only).
    log_probs, terms = _terms([3.0], [-1.0])
    terms.policy_gradient.sum().backward()
    assert log_probs.grad is not None and log_probs.grad.item() == pytest.approx(1.0)
    lp = torch.tensor([[1.0]], requires_grad=True)
    ppo_clip_loss(lp, torch.tensor([[-2.0]]), torch.tensor([[-1.0]])).loss.sum().backward()
    assert lp.grad is not None and lp.grad.item() == pytest.approx(math.exp(3.0), rel=1e-5)


def test_bounds_and_bad_values() -> None:
    assert log_ratio_bounds(0.2, 0.2) == pytest.approx((LOWER, UPPER))
    with pytest.raises(ValueError, match="clip_eps_low"):
        log_ratio_bounds(1.0, 0.2)
    with pytest.raises(ValueError, match="clip_eps_high"):
        log_ratio_bounds(0.2, -0.1)


def test_drift_far_below_keeps_the_k3_gradient() -> None:
    # δ = -25: ρ = e^-25 = 1.3888e-11, D = ρ - 1 + 25 = 24.0000000000139 -> 24.0 in float32;
    # gradient ρ - 1 = -0.99999999998611 -> -1.0 (the paper's ρ - 1; a clamp at δ = -20
    # would freeze D at 19 + e^-20 with gradient 0).
    log_probs, terms = _terms([-25.0], [1.0])
    assert terms.drift.item() == pytest.approx(24.0)
    terms.drift.sum().backward()
    assert log_probs.grad is not None and log_probs.grad.item() == pytest.approx(-1.0)


def test_drift_clip_bounds_the_gradient_weight_not_the_value() -> None:
    # Value D = ρ - 1 - δ unchanged; gradient min(ρ - 1, c) with c = 2 (the default):
    #   δ = ln 4   = 1.3862944: ρ - 1 = 3   -> D = 3 - 1.3862944 = 1.6137056, grad 2 (clipped)
    #   δ = ln 2.5 = 0.9162907: ρ - 1 = 1.5 -> D = 1.5 - 0.9162907 = 0.5837093, grad 1.5
    #   δ = ln 0.5 = -0.6931472: ρ - 1 = -0.5 -> D = -0.5 + 0.6931472 = 0.1931472, grad -0.5
    #   δ = -25: D = 24, grad -1 (ρ - 1 >= -1: the lower side is never clipped)
    deltas = [math.log(4.0), math.log(2.5), math.log(0.5), -25.0]
    values = torch.tensor([[1.6137056, 0.5837093, 0.1931472, 24.0]])
    log_probs, terms = _terms(deltas, [1.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(terms.drift.detach(), values)
    terms.drift.sum().backward()
    torch.testing.assert_close(log_probs.grad, torch.tensor([[2.0, 1.5, -0.5, -1.0]]))
    # c = 1: ρ - 1 = 3 and 1.5 both capped at 1; without a bound: the plain k3 gradient.
    for drift_clip, grads in ((1.0, [1.0, 1.0, -0.5, -1.0]), (None, [3.0, 1.5, -0.5, -1.0])):
        log_probs, terms = _terms(deltas, [1.0] * 4, drift_clip=drift_clip)
        torch.testing.assert_close(terms.drift.detach(), values)
        terms.drift.sum().backward()
        torch.testing.assert_close(log_probs.grad, torch.tensor([grads]))


@pytest.mark.parametrize("drift_clip", [2.0, None])
def test_drift_never_overflows_for_large_positive_log_ratios(drift_clip: float | None) -> None:
    # exp sees min(δ, 20): D = e^20 - 1 - δ stays finite; the gradient weight is c = 2, or
    # e^20 - 1 = 4.8516518e8 without a bound.
    log_probs, terms = _terms([30.0, 100.0, 1000.0], [1.0, -1.0, 0.0], drift_clip=drift_clip)
    assert torch.isfinite(terms.drift).all()
    terms.drift.sum().backward()
    assert log_probs.grad is not None and torch.isfinite(log_probs.grad).all()
    expected = 2.0 if drift_clip is not None else math.expm1(20.0)
    torch.testing.assert_close(log_probs.grad, torch.full((1, 3), expected))


def test_cpgd_loss_with_the_drift_clip_by_hand() -> None:
    # One token, A = 1, δ = ln 4 = 1.3862944, α = 0.1, token-mean over 1 token:
    #   L^pg = -min(ln 4, ln 1.2) = -0.1823216 (clipped, no gradient)
    #   D = 4 - 1 - ln 4 = 1.6137056 -> loss = -0.1823216 + 0.16137056 = -0.0209510
    #   gradient α·min(3, c): 0.1·2 = 0.2 with c = 2; 0.1·3 = 0.3 without a bound.
    for drift_clip, grad in ((2.0, 0.2), (None, 0.3)):
        old = torch.tensor([[-2.0]])
        log_probs = (old + math.log(4.0)).requires_grad_(True)
        batch = PolicyLossInput(
            log_probs=log_probs,
            old_log_probs=old,
            advantages=torch.tensor([[1.0]]),
            action_mask=torch.tensor([[True]]),
            scale=LossScale(num_tokens=1, num_sequences=1),
        )
        config = CPGD.Config(policy_drift_coef=0.1, policy_drift_clip=drift_clip)
        out = CPGD(config).policy_loss(batch)
        assert out.loss.item() == pytest.approx(-0.0209510, abs=1e-6)
        out.loss.backward()
        assert log_probs.grad is not None and log_probs.grad.item() == pytest.approx(grad)


def test_drift_clip_option() -> None:
    assert CPGD.Config().policy_drift_clip == DEFAULT_DRIFT_CLIP == 2.0
    assert CPGD.Config(policy_drift_clip=None).policy_drift_clip is None
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="policy_drift_clip must be > 0"):
            CPGD.Config(policy_drift_clip=bad)
