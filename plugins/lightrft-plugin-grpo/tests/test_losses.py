"""The per-token PPO-clip loss, checked token by token against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from lightrft_plugin_grpo.losses import ppo_clip_loss


def _run(
    ratios: list[float], advantages: list[float], **kwargs: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, clipped mask, dual-clipped mask and d(sum loss)/d log_probs for one row."""
    old = torch.full((1, len(ratios)), -1.0)
    log_probs = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    out = ppo_clip_loss(log_probs, old, torch.tensor([advantages]), **kwargs)  # type: ignore[arg-type]
    out.loss.sum().backward()
    assert log_probs.grad is not None
    return out.loss.detach()[0], out.clipped[0], out.dual_clipped[0], log_probs.grad[0]


def test_clip_both_sides_and_unclipped_middle() -> None:
    # ε = 0.2: clip range [0.8, 1.2]. Per token, L = max(-ρA, -clip(ρ)A):
    #   A=2,  ρ=1.5: max(-3.0, -2.4) = -2.4  clipped above, gradient 0
    #   A=-1, ρ=0.5: max(0.5, 0.8)   =  0.8  clipped below, gradient 0
    #   A=2,  ρ=1.1: max(-2.2, -2.2) = -2.2  inside, dL/dlp = -ρA = -2.2
    #   A=2,  ρ=0.5: max(-1.0, -1.6) = -1.0  A>0 below the range is NOT clipped, dL/dlp = -1.0
    #   A=-1, ρ=1.5: max(1.5, 1.2)   =  1.5  A<0 above the range is NOT clipped, dL/dlp = 1.5
    loss, clipped, dual, grad = _run([1.5, 0.5, 1.1, 0.5, 1.5], [2.0, -1.0, 2.0, 2.0, -1.0])
    torch.testing.assert_close(loss, torch.tensor([-2.4, 0.8, -2.2, -1.0, 1.5]))
    assert clipped.tolist() == [True, True, False, False, False]
    assert not dual.any()
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, -2.2, -1.0, 1.5]))


def test_clip_higher_is_asymmetric() -> None:
    # ε_low = 0.2, ε_high = 0.28: range [0.8, 1.28].
    #   A=1,  ρ=1.25: inside -> -1.25 (symmetric ε=0.2 would clip it to -1.2)
    #   A=1,  ρ=1.3:  clipped -> -1.28
    #   A=-1, ρ=0.75: clipped below -> 0.8
    loss, clipped, _, _ = _run(
        [1.25, 1.3, 0.75], [1.0, 1.0, -1.0], clip_eps_low=0.2, clip_eps_high=0.28
    )
    torch.testing.assert_close(loss, torch.tensor([-1.25, -1.28, 0.8]))
    assert clipped.tolist() == [False, True, True]
    loss, clipped, _, _ = _run([1.25], [1.0])
    torch.testing.assert_close(loss, torch.tensor([-1.2]))
    assert clipped.tolist() == [True]


def test_dual_clip() -> None:
    # c = 3. For A < 0: L = min(L_clip, -c·A) = min(L_clip, 3|A|).
    #   A=-1, ρ=5:   L_clip = max(5, 1.2) = 5 -> min(5, 3) = 3, dual-clipped, gradient 0
    #   A=-1, ρ=2:   L_clip = 2 < 3 -> 2, dL/dlp = -ρA = 2
    #   A=1,  ρ=5:   A > 0 untouched: max(-5, -1.2) = -1.2 (clipped)
    #   A=-2, ρ=0.5: L_clip = max(1.0, 1.6) = 1.6 < 6 -> 1.6 (clipped below)
    loss, clipped, dual, grad = _run([5.0, 2.0, 5.0, 0.5], [-1.0, -1.0, 1.0, -2.0], dual_clip=3.0)
    torch.testing.assert_close(loss, torch.tensor([3.0, 2.0, -1.2, 1.6]))
    assert dual.tolist() == [True, False, False, False]
    assert clipped.tolist() == [False, False, True, True]
    torch.testing.assert_close(grad, torch.tensor([0.0, 2.0, 0.0, 0.0]))
    # Without the dual clip the first token costs ρ|A| = 5.
    loss, _, _, _ = _run([5.0], [-1.0])
    torch.testing.assert_close(loss, torch.tensor([5.0]))


def test_zero_advantage_gives_zero_loss() -> None:
    loss, clipped, _, grad = _run([1.5, 0.5], [0.0, 0.0])
    torch.testing.assert_close(loss, torch.zeros(2))
    assert not clipped.any()
    torch.testing.assert_close(grad, torch.zeros(2))


def test_log_ratio_is_clamped_before_exp() -> None:
    # lp - lp_old = 100 is clamped to 20: ρ = exp(20), finite; A = -1 -> L = exp(20).
    log_probs = torch.tensor([[100.0, -100.0]])
    out = ppo_clip_loss(log_probs, torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]))
    assert torch.isfinite(out.loss).all()
    assert out.ratio[0, 0].item() == pytest.approx(math.exp(20), rel=1e-6)
    assert out.ratio[0, 1].item() == pytest.approx(math.exp(-20), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_eps_low": -0.1}, "clip_eps_low"),
        ({"clip_eps_low": 1.0}, "clip_eps_low"),
        ({"clip_eps_high": -0.1}, "clip_eps_high"),
        ({"dual_clip": 1.0}, "dual_clip"),
    ],
)
def test_bad_parameters(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), **kwargs)  # type: ignore[arg-type]
