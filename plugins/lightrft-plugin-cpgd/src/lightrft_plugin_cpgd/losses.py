"""CPGD's per-token loss: a policy gradient on a clipped log-ratio, plus the policy drift.

With ``δ_t = lp_t − lp_old_t`` (the log of the ratio ``ρ_t``) and the advantage ``A_t``,
the paper's clipped objective per token is ``min(δ_t A_t, clip(δ_t, ln(1 − ε), ln(1 + ε))
A_t)``. Because ``min(x, clip(x, lo, hi)) = min(x, hi)`` and ``max(x, clip(x, lo, hi)) =
max(x, lo)``, the bound that applies depends on the sign of ``A``::

    A_t > 0:  L^pg_t = −A_t · min(δ_t, ln(1 + ε_high))
    A_t < 0:  L^pg_t = −A_t · max(δ_t, ln(1 − ε_low))
    A_t = 0:  L^pg_t = 0

Its gradient is the plain policy gradient ``−A_t ∇lp_t`` until the log-ratio has moved past
the bound in the direction the advantage pushes, and 0 from there on (no ratio multiplies
the gradient, unlike PPO).

Policy drift: ``KL(π_old ‖ π_θ)``, estimated per token on the rollout samples (drawn from
``π_old``) with the non-negative, unbiased ``k3`` estimator, and its gradient weight bounded
above by ``c`` (``drift_clip``, as the authors' code does; ``None``: no bound)::

    value     D_t = ρ_t − 1 − δ_t
    gradient  ∇D_t = min(ρ_t − 1, c) · ∇lp_t     (pulls ρ back towards 1)

Without the bound (or while ``ρ_t − 1 <= c``) the gradient is exactly that of ``k3``, for
any ``δ_t <= 20``: far below (``δ_t → −∞``) it tends to ``−1``, it never freezes. Only the
overflow side is guarded: ``exp`` sees ``min(δ_t, 20)``.

The token loss is ``L_t = L^pg_t + α · D_t``; the algorithm aggregates it over the batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lightrft_core.algorithms.kl import KL_LOG_RATIO_CLAMP

#: The authors' default bound of the drift's gradient weight ``ρ − 1``.
DEFAULT_DRIFT_CLIP = 2.0


class CPGDTokenLoss(NamedTuple):
    """All ``[B, T]``, not masked. ``policy_gradient``: ``L^pg``. ``drift``: ``D``.
    ``clipped``: bool, the log-ratio is past the bound that applies (no gradient from
    ``L^pg``). ``log_ratio``: ``δ`` with its gradient."""

    policy_gradient: torch.Tensor
    drift: torch.Tensor
    clipped: torch.Tensor
    log_ratio: torch.Tensor


def log_ratio_bounds(clip_eps_low: float, clip_eps_high: float) -> tuple[float, float]:
    """``(ln(1 − ε_low), ln(1 + ε_high))``; ``ε_low`` in ``[0, 1)``, ``ε_high >= 0``."""
    if not 0.0 <= clip_eps_low < 1.0:
        raise ValueError(f"clip_eps_low must be in [0, 1), got {clip_eps_low}")
    if clip_eps_high < 0.0:
        raise ValueError(f"clip_eps_high must be >= 0, got {clip_eps_high}")
    return math.log1p(-clip_eps_low), math.log1p(clip_eps_high)


def check_drift_clip(drift_clip: float | None) -> None:
    """Raise unless ``drift_clip`` is ``None`` or ``> 0``."""
    if drift_clip is not None and not drift_clip > 0.0:
        raise ValueError(f"policy_drift_clip must be > 0 or null, got {drift_clip}")


def policy_drift(log_ratio: torch.Tensor, drift_clip: float | None) -> torch.Tensor:
    """``[B, T]`` drift: value ``ρ − 1 − δ``, gradient ``min(ρ − 1, c)·∇δ`` (module
    docstring). ``log_ratio`` ``δ`` carries the gradient."""
    check_drift_clip(drift_clip)
    delta = log_ratio.detach()
    ratio_minus_one = torch.expm1(delta.clamp(max=KL_LOG_RATIO_CLAMP))  # [B, T]
    weight = ratio_minus_one if drift_clip is None else ratio_minus_one.clamp(max=drift_clip)
    # Value of the first term, gradient of the second (which is 0 in value).
    return (ratio_minus_one - delta) + weight * (log_ratio - delta)


def cpgd_token_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    drift_clip: float | None = DEFAULT_DRIFT_CLIP,
) -> CPGDTokenLoss:
    """The two per-token terms of the module docstring. ``log_probs`` ``[B, T]`` carries the
    gradient; ``old_log_probs`` and ``advantages`` ``[B, T]`` are constants."""
    lower, upper = log_ratio_bounds(clip_eps_low, clip_eps_high)
    advantages = advantages.detach()
    log_ratio = log_probs - old_log_probs.detach()  # [B, T]
    positive, negative = advantages > 0, advantages < 0  # [B, T] bool
    bounded = torch.where(
        positive, log_ratio.clamp(max=upper), log_ratio.clamp(min=lower)
    )  # [B, T]
    policy_gradient = -advantages * bounded  # [B, T]; exactly 0 where A = 0
    clipped = (positive & (log_ratio > upper)) | (negative & (log_ratio < lower))
    drift = policy_drift(log_ratio, drift_clip)  # [B, T]
    return CPGDTokenLoss(policy_gradient, drift, clipped, log_ratio)
