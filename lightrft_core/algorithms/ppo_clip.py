"""The PPO clipped surrogate as a per-token loss, shared by every algorithm plugin.

PPO clip (Schulman et al. 2017, arXiv 1707.06347), with separate lower and upper bounds
("clip-higher", DAPO arXiv 2503.14476); ``ρ_t = exp(lp_t − lp_old_t)``::

    L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)
        =  max(−ρ_t A_t, −clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)

Dual clip (Ye et al. 2020, arXiv 1912.09729, eq. 5), a constant ``c > 1``: their objective
for ``A < 0`` is ``max(min(ρA, clip(ρ)A), c·A)``; negated, as a loss::

    L_t ← min(L_t, −c·A_t)   where A_t < 0   (unchanged where A_t >= 0)

so a negative-advantage token whose ratio has run far above 1 costs at most ``c·|A_t|`` and
stops pushing (zero gradient) instead of growing without bound.

Numerical guard: the log-ratio is clamped to ``±LOG_RATIO_CLAMP`` before ``exp`` (beyond
the clamp the gradient is zero), so one wild token cannot produce ``inf``.

``clipped_surrogate`` applies the same formulas to any log-ratio (GSPO's sequence-level
ratio); ``ppo_clip_loss`` is it with ``log ρ_t = lp_t − lp_old_t``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: ``lp − lp_old`` is clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` before ``exp``.
LOG_RATIO_CLAMP = 20.0


class PPOClipLoss(NamedTuple):
    """The pieces of the PPO-clip loss, all of the inputs' shape (``[B, T]`` per token).

    ``loss``: per-token loss, not masked (aggregate it with ``aggregate_loss`` and the mask).
    ``clipped``: bool, the clip is active (``A > 0`` and ``ρ > 1 + ε_high``, or ``A < 0`` and
    ``ρ < 1 − ε_low``), so the token gives no gradient. ``dual_clipped``: bool, the dual clip
    is active (``A < 0`` and ``−c·A`` is below the clipped loss). ``ratio``: ``ρ`` with its
    gradient.
    """

    loss: torch.Tensor
    clipped: torch.Tensor
    dual_clipped: torch.Tensor
    ratio: torch.Tensor


def check_clip_parameters(
    clip_eps_low: float, clip_eps_high: float, dual_clip: float | None = None
) -> None:
    """Raise ``ValueError`` unless ``0 <= ε_low < 1``, ``ε_high >= 0`` and ``c > 1`` (or None).

    Algorithm configs call it from ``__post_init__`` so bad values fail at config loading.
    """
    if not 0.0 <= clip_eps_low < 1.0:
        raise ValueError(f"clip_eps_low must be in [0, 1), got {clip_eps_low}")
    if clip_eps_high < 0.0:
        raise ValueError(f"clip_eps_high must be >= 0, got {clip_eps_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or null to disable it), got {dual_clip}")


def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> PPOClipLoss:
    """Per-token PPO-clip loss (formulas in the module docstring).

    ``log_probs``: ``[B, T]`` current policy, with gradients. ``old_log_probs``: ``[B, T]``
    behaviour policy. ``advantages``: ``[B, T]`` (no gradient flows into them).
    """
    return clipped_surrogate(
        log_probs - old_log_probs,
        advantages,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        dual_clip=dual_clip,
    )


def clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> PPOClipLoss:
    """The clipped surrogate of the module docstring for any ``ρ = exp(log_ratio)``.

    ``log_ratio`` and ``advantages`` have the same shape: ``[B, T]`` per token (PPO, GRPO,
    GSPO-token) or ``[B, 1]`` per sequence (GSPO's ``log s_i``). The log-ratio is clamped to
    ``±LOG_RATIO_CLAMP`` before ``exp``; no gradient flows into ``advantages``.
    """
    check_clip_parameters(clip_eps_low, clip_eps_high, dual_clip)
    advantages = advantages.detach()
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    bounded_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    surrogate_loss = -advantages * ratio
    bounded_loss = -advantages * bounded_ratio
    loss = torch.maximum(surrogate_loss, bounded_loss)
    clipped = bounded_loss > surrogate_loss  # bool, the clip is active

    negative = advantages < 0
    if dual_clip is None:
        dual_clipped = torch.zeros_like(clipped)
    else:
        cap = -dual_clip * advantages  # = c·|A| where A < 0
        dual_clipped = negative & (cap < loss)
        loss = torch.where(negative, torch.minimum(loss, cap), loss)
    return PPOClipLoss(loss=loss, clipped=clipped, dual_clipped=dual_clipped, ratio=ratio)
