"""``lightrft_core.algorithms.ppo_clip_loss``: the PPO-clip token loss, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightrft_core.algorithms import (
    LOG_RATIO_CLAMP,
    aggregate_loss,
    check_clip_parameters,
    ppo_clip_loss,
)
from lightrft_core.interfaces import LossScale


def _run(
    ratios: list[float], advantages: list[float], **kwargs: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, clipped mask, dual-clipped mask and d(Σ loss)/d log_probs for one row."""
    old = torch.full((1, len(ratios)), -1.5)
    log_probs = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    out = ppo_clip_loss(log_probs, old, torch.tensor([advantages]), **kwargs)  # type: ignore[arg-type]
    out.loss.sum().backward()
    assert log_probs.grad is not None
    return out.loss.detach()[0], out.clipped[0], out.dual_clipped[0], log_probs.grad[0]


def test_clip_both_sides_value_and_gradient() -> None:
    # ε = 0.2, range [0.8, 1.2]; L = max(-ρA, -clip(ρ)A); dL/dlp = -ρA when unclipped, else 0.
    #   A=3,    ρ=1.4: max(-4.2, -3.6)   = -3.6  clipped above           grad 0
    #   A=-2,   ρ=0.6: max(1.2, 1.6)     =  1.6  clipped below           grad 0
    #   A=3,    ρ=0.9: max(-2.7, -2.7)   = -2.7  inside                  grad -2.7
    #   A=3,    ρ=0.5: max(-1.5, -2.4)   = -1.5  A>0 below: not clipped  grad -1.5
    #   A=-2,   ρ=1.5: max(3.0, 2.4)     =  3.0  A<0 above: not clipped  grad 3.0
    #   A=-0.5, ρ=1.2: max(0.6, 0.6)     =  0.6  on the bound: not clipped, grad 0.6
    loss, clipped, dual, grad = _run(
        [1.4, 0.6, 0.9, 0.5, 1.5, 1.2], [3.0, -2.0, 3.0, 3.0, -2.0, -0.5]
    )
    torch.testing.assert_close(loss, torch.tensor([-3.6, 1.6, -2.7, -1.5, 3.0, 0.6]))
    assert clipped.tolist() == [True, True, False, False, False, False]
    assert not dual.any()
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, -2.7, -1.5, 3.0, 0.6]))


def test_asymmetric_clip_higher() -> None:
    # ε_low = 0.1, ε_high = 0.3: range [0.9, 1.3].
    #   A=1,  ρ=1.25: inside -> -1.25 (a symmetric ε = 0.1 would give -1.1)
    #   A=1,  ρ=1.5:  clipped above at 1.3 -> -1.3
    #   A=-1, ρ=0.85: clipped below at 0.9 -> 0.9
    #   A=-1, ρ=0.95: inside -> 0.95
    loss, clipped, _, grad = _run(
        [1.25, 1.5, 0.85, 0.95], [1.0, 1.0, -1.0, -1.0], clip_eps_low=0.1, clip_eps_high=0.3
    )
    torch.testing.assert_close(loss, torch.tensor([-1.25, -1.3, 0.9, 0.95]))
    assert clipped.tolist() == [False, True, True, False]
    torch.testing.assert_close(grad, torch.tensor([-1.25, 0.0, 0.0, 0.95]))


def test_dual_clip_caps_negative_advantages() -> None:
    # c = 2.5: for A < 0, L = min(L_clip, -c·A) = min(L_clip, 2.5·|A|).
    #   A=-1, ρ=4:   L_clip = max(4, 1.2) = 4 -> min(4, 2.5) = 2.5, dual-clipped, grad 0
    #   A=-1, ρ=2:   L_clip = 2 < 2.5 -> 2, grad -ρA = 2
    #   A=2,  ρ=4:   A > 0 untouched: max(-8, -2.4) = -2.4 (clipped), grad 0
    #   A=-2, ρ=0.5: L_clip = max(1.0, 1.6) = 1.6 < 5 -> 1.6 (clipped below), grad 0
    loss, clipped, dual, grad = _run([4.0, 2.0, 4.0, 0.5], [-1.0, -1.0, 2.0, -2.0], dual_clip=2.5)
    torch.testing.assert_close(loss, torch.tensor([2.5, 2.0, -2.4, 1.6]))
    assert dual.tolist() == [True, False, False, False]
    assert clipped.tolist() == [False, False, True, True]
    torch.testing.assert_close(grad, torch.tensor([0.0, 2.0, 0.0, 0.0]))
    # Without the dual clip the first token costs ρ|A| = 4 and keeps its gradient 4.
    loss, _, dual, grad = _run([4.0], [-1.0])
    torch.testing.assert_close(loss, torch.tensor([4.0]))
    torch.testing.assert_close(grad, torch.tensor([4.0]))
    assert not dual.any()


def test_zero_advantage_gives_zero_loss_and_gradient() -> None:
    loss, clipped, _, grad = _run([1.7, 0.3], [0.0, 0.0], dual_clip=3.0)
    torch.testing.assert_close(loss, torch.zeros(2))
    assert not clipped.any()
    torch.testing.assert_close(grad, torch.zeros(2))


def test_ratio_is_one_on_policy() -> None:
    # lp = lp_old: ρ = 1, L = -A, dL/dlp = -A (the REINFORCE gradient).
    lp = torch.tensor([[-0.3, -2.0]], requires_grad=True)
    out = ppo_clip_loss(lp, lp.detach(), torch.tensor([[2.0, -0.5]]))
    torch.testing.assert_close(out.ratio.detach(), torch.ones(1, 2))
    out.loss.sum().backward()
    assert lp.grad is not None
    torch.testing.assert_close(out.loss.detach(), torch.tensor([[-2.0, 0.5]]))
    torch.testing.assert_close(lp.grad, torch.tensor([[-2.0, 0.5]]))


def test_log_ratio_is_clamped_before_exp() -> None:
    # lp - lp_old = ±100 is clamped to ±20: ρ = exp(±20), finite.
    out = ppo_clip_loss(
        torch.tensor([[100.0, -100.0]]), torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]])
    )
    assert torch.isfinite(out.loss).all()
    assert out.ratio[0, 0].item() == pytest.approx(math.exp(LOG_RATIO_CLAMP), rel=1e-6)
    assert out.ratio[0, 1].item() == pytest.approx(math.exp(-LOG_RATIO_CLAMP), rel=1e-6)


def test_advantages_get_no_gradient() -> None:
    advantages = torch.tensor([[1.0, -1.0]], requires_grad=True)
    lp = torch.zeros(1, 2, requires_grad=True)
    ppo_clip_loss(lp, torch.zeros(1, 2), advantages).loss.sum().backward()
    assert advantages.grad is None


def test_token_mean_of_the_loss_is_the_same_for_1_and_4_micro_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(8, 5, generator=gen) * 2
    new = old + 0.3 * torch.randn(8, 5, generator=gen)
    adv = torch.randn(8, 5, generator=gen)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 1, 3, 4, 2, 5, 3, 1])[:, None]
    scale = LossScale(num_tokens=int(mask.sum()), num_sequences=8)

    def grad(chunks: list[slice]) -> torch.Tensor:
        lp = new.clone().requires_grad_(True)
        for rows in chunks:
            per_token = ppo_clip_loss(lp[rows], old[rows], adv[rows], dual_clip=3.0).loss
            aggregate_loss(per_token, mask[rows], "token-mean", scale).backward()
        assert lp.grad is not None
        return lp.grad

    whole = grad([slice(0, 8)])
    assert whole.abs().sum() > 0
    torch.testing.assert_close(grad([slice(i, i + 2) for i in range(0, 8, 2)]), whole)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_eps_low": -0.1}, "clip_eps_low"),
        ({"clip_eps_low": 1.0}, "clip_eps_low"),
        ({"clip_eps_high": -0.1}, "clip_eps_high"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"dual_clip": 0.5}, "dual_clip"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), **kwargs)  # type: ignore[arg-type]
    low = kwargs.get("clip_eps_low", 0.2)
    high = kwargs.get("clip_eps_high", 0.2)
    with pytest.raises(ValueError, match=match):
        check_clip_parameters(low, high, kwargs.get("dual_clip"))
