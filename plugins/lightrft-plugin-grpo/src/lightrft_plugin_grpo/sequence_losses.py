"""Sequence-level importance ratios: GSPO, GSPO-token and GMPO (pure tensor functions).

Shapes: ``log_probs`` (with gradients), ``old_log_probs``, ``advantages`` and ``mask`` are
``[B, T]``; ``mask`` is True on the tokens that enter the ratio (the response tokens, or
the selected high-entropy ones). ``n_i = Σ_t m_{i,t}``.

* **GSPO** (C. Zheng et al., *Group Sequence Policy Optimization*, arXiv 2507.18071, eq. 5
  and 7): the sequence ratio ``s_i = (π(y_i)/π_old(y_i))^{1/|y_i|} = exp(mean_t(lp − lp_old))``
  is clipped like PPO's token ratio, per sequence::

      L_i = −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i)

* **GSPO-token** (eq. 13): per token ``s_{i,t} = sg[s_i] · π(y_t)/sg[π(y_t)]``, whose value is
  ``s_i`` and whose gradient is ``s_i ∇ lp_t``; ``L_{i,t} = −min(s_{i,t} A_{i,t},
  clip(s_{i,t}) A_{i,t})``. With ``A_{i,t} = A_i`` its sequence mean has the value and the
  gradient of GSPO's ``L_i``.

* **GMPO** (Y. Zhao et al., *Geometric-Mean Policy Optimization*, arXiv 2507.20673, eq. 4):
  the geometric mean of the token terms, clipped token by token in log space and
  sign-aware::

      L_i = −sgn(A_i) · (Π_t |min(ρ_t A_i, clip(ρ_t, e^{−ε_low}, e^{ε_high}) A_i)|)^{1/n_i}
          = −A_i · exp(mean_t δ'_t),
      δ_t = lp_t − lp_old_t,  δ'_t = min(δ_t, clip(δ_t, −ε_low, ε_high))  if A_i ≥ 0
                               max(δ_t, clip(δ_t, −ε_low, ε_high))  if A_i < 0

  so a token whose log-ratio left the range on the side that would raise the objective is
  held at the bound (no gradient), as PPO's clip does per token.

A row without tokens in ``mask`` gets ``log s_i = 0`` (ratio 1) and a zero advantage.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lightrft_core.algorithms.ppo_clip import LOG_RATIO_CLAMP, PPOClipLoss, clipped_surrogate


def sequence_log_ratio(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``[B]``: ``log s_i = Σ_t m (lp − lp_old) / n_i`` (0 for a row without tokens)."""
    mask = mask.bool()
    delta = torch.where(mask, log_probs - old_log_probs, torch.zeros_like(log_probs))  # [B, T]
    count = mask.sum(dim=-1).clamp(min=1).to(delta.dtype)  # [B]
    return delta.sum(dim=-1) / count


def sequence_advantage(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: the mean advantage over each row's ``mask`` (``A_i`` for outcome advantages,
    which are the same on every token); 0 for a row without tokens."""
    mask = mask.bool()
    total = torch.where(mask, advantages, torch.zeros_like(advantages)).sum(dim=-1)
    return total / mask.sum(dim=-1).clamp(min=1).to(total.dtype)


def gspo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip: float | None = None,
) -> PPOClipLoss:
    """GSPO per sequence: every field is ``[B, 1]`` (``ratio`` is ``s_i``, with gradients).

    ``A_i`` is ``sequence_advantage(advantages, mask)``. The optional dual clip caps the loss
    of a sequence with ``A_i < 0`` at ``c·|A_i|`` (an extension; the paper has none).
    """
    log_s = sequence_log_ratio(log_probs, old_log_probs, mask).unsqueeze(1)  # [B, 1]
    adv = sequence_advantage(advantages, mask).unsqueeze(1)  # [B, 1]
    return clipped_surrogate(
        log_s, adv, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, dual_clip=dual_clip
    )


def gspo_token_log_ratio(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``[B, T]``: ``log s_{i,t} = sg[log s_i] + lp_t − sg[lp_t]`` -- the value of ``log s_i``
    on every token, the gradient of ``lp_t`` alone."""
    log_s = sequence_log_ratio(log_probs, old_log_probs, mask).detach()  # [B]
    return log_s.unsqueeze(1) + log_probs - log_probs.detach()


def gspo_token_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip: float | None = None,
) -> PPOClipLoss:
    """GSPO-token per token: every field is ``[B, T]`` (unmasked; aggregate with the mask)."""
    log_ratio = gspo_token_log_ratio(log_probs, old_log_probs, mask)  # [B, T]
    return clipped_surrogate(
        log_ratio,
        advantages,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        dual_clip=dual_clip,
    )


class GMPOLoss(NamedTuple):
    """``loss``: ``[B, 1]`` per-sequence loss ``−A_i · exp(mean_t δ'_t)``. ``ratio``: ``[B,
    1]`` the clipped geometric-mean ratio (with gradients). ``clipped``: ``[B, T]`` bool,
    the tokens held at a clip bound (no gradient)."""

    loss: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor


def gmpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    log_clip_low: float = 0.4,
    log_clip_high: float = 0.4,
) -> GMPOLoss:
    """GMPO (module docstring) with the log-space clip range ``[−log_clip_low,
    log_clip_high]`` (the paper: ``ε = 0.4`` on both sides, i.e. ``ρ ∈ [e^−0.4, e^0.4]``).

    ``A_i`` is ``sequence_advantage(advantages, mask)``; the mean of ``δ'`` is clamped to
    ``±LOG_RATIO_CLAMP`` before ``exp``.
    """
    if log_clip_low < 0.0 or log_clip_high < 0.0:
        raise ValueError(
            f"GMPO's log-space clip bounds must be >= 0, got {log_clip_low} and {log_clip_high}"
        )
    mask = mask.bool()
    adv = sequence_advantage(advantages, mask).unsqueeze(1)  # [B, 1]
    delta = log_probs - old_log_probs  # [B, T]
    bounded = delta.clamp(-log_clip_low, log_clip_high)  # [B, T]
    positive = adv >= 0  # [B, 1]
    # The pessimistic side: the smaller log-ratio when raising it raises the objective.
    pessimistic = torch.where(
        positive, torch.minimum(delta, bounded), torch.maximum(delta, bounded)
    )  # [B, T]
    clipped = mask & (pessimistic != delta)  # [B, T]
    log_gm = torch.where(mask, pessimistic, torch.zeros_like(pessimistic)).sum(dim=-1)
    log_gm = log_gm / mask.sum(dim=-1).clamp(min=1).to(log_gm.dtype)  # [B]
    ratio = torch.exp(log_gm.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).unsqueeze(1)  # [B, 1]
    return GMPOLoss(loss=-adv * ratio, ratio=ratio, clipped=clipped)
