"""The PPO clipped surrogate loss per token, with asymmetric ("clip-higher") bounds and an
optional dual clip.

* PPO clip (Schulman et al. 2017, arXiv 1707.06347), with separate lower/upper ε
  (clip-higher, DAPO arXiv 2503.14476)::

      L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t) = max(−ρ_t A_t, −clip(ρ_t) A_t)

* Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
  Reinforcement Learning", arXiv 1912.09729, eq. 5). Their objective for ``A < 0`` is
  ``max(min(ρA, clip(ρ)A), c·A)`` with ``c > 1``; as a loss (negated) that is::

      L_t = min(L_t^clip, −c·A_t)   if A_t < 0,      L_t = L_t^clip   otherwise

  i.e. when the ratio of a negative-advantage token has run far above 1, its loss is capped
  at ``c·|A|`` and it stops pushing (zero gradient), instead of growing without bound.

``clipped_surrogate`` applies the same formulas to any log-ratio (a sequence-level one for
GSPO); ``ppo_clip_loss`` is it with ``log ρ_t = lp_t − lp_old_t``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: The log-ratio ``lp − lp_old`` is clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` before
#: ``exp`` so that one wild token cannot give ``inf``; beyond it the gradient is zero.
LOG_RATIO_CLAMP = 20.0


class PPOClipLoss(NamedTuple):
    """All the shape of the inputs (``[B, T]`` per token). ``loss``: per-token loss
    (unmasked; aggregate it with the mask).
    ``clipped``: the clip is active (``A > 0`` and ``ρ > 1 + ε_high``, or ``A < 0`` and
    ``ρ < 1 − ε_low``), the token gives no gradient. ``dual_clipped``: the dual clip is
    active (``A < 0`` and ``ρ > c``). ``ratio``: ``ρ`` (with gradients)."""

    loss: torch.Tensor
    clipped: torch.Tensor
    dual_clipped: torch.Tensor
    ratio: torch.Tensor


def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> PPOClipLoss:
    """Per-token PPO-clip loss. ``log_probs`` (with gradients), ``old_log_probs`` (behaviour
    policy) and ``advantages`` are ``[B, T]``; see the module docstring for the formulas."""
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
    """The clipped surrogate of the module docstring with ``ρ = exp(log_ratio)``.

    ``log_ratio`` and ``advantages`` have the same shape: ``[B, T]`` per token (PPO, GRPO,
    GSPO-token) or ``[B, 1]`` per sequence (GSPO's ``log s_i``). The log-ratio is clamped to
    ``±LOG_RATIO_CLAMP`` before ``exp``.
    """
    if not 0.0 <= clip_eps_low < 1.0:
        raise ValueError(f"clip_eps_low must be in [0, 1), got {clip_eps_low}")
    if clip_eps_high < 0.0:
        raise ValueError(f"clip_eps_high must be >= 0, got {clip_eps_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None to disable it), got {dual_clip}")

    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    clipped_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * clipped_ratio
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped  # bool, the clip is active

    if dual_clip is not None:
        loss_dual = -advantages * dual_clip  # = c·|A| where A < 0
        dual_clipped = (advantages < 0) & (loss_dual < loss)
        loss = torch.where(advantages < 0, torch.minimum(loss, loss_dual), loss)
    else:
        dual_clipped = torch.zeros_like(clipped)
    return PPOClipLoss(loss, clipped, dual_clipped, ratio)
