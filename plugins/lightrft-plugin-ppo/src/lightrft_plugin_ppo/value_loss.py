"""The critic's clipped value loss per token (``PPO.value_loss`` aggregates it).

Clipped value loss (the value-function clipping of OpenAI's PPO implementation, "baselines"
``ppo2``; the PPO paper, arXiv 1707.06347, uses the plain squared error)::

    V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
    L_t    = 0.5 · max((V_t − G_t)², (V_clip,t − G_t)²)

``V``: current values (with gradients), ``V_old``: the values of the rollout (before this
step's updates), ``G``: the GAE returns. Without a clip (``ε_v = None``):
``L_t = 0.5·(V_t − G_t)²``. The clipped branch is active, and the token gives no gradient,
when ``V`` has moved more than ``ε_v`` from ``V_old`` in the direction away from ``G``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ClippedValueLoss(NamedTuple):
    """``loss``: ``[B, T]`` per-token loss, not masked (aggregate it with the mask).
    ``clipped``: ``[B, T]`` bool, the clipped branch is strictly larger (no gradient)."""

    loss: torch.Tensor
    clipped: torch.Tensor


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    *,
    clip: float | None,
) -> ClippedValueLoss:
    """Per-token value loss of the module docstring. ``values`` (with gradients),
    ``old_values`` and ``returns``: ``[B, T]``; no gradient flows into the last two."""
    if not values.shape == old_values.shape == returns.shape:
        raise ValueError(
            f"values, old_values and returns must have the same shape; got "
            f"{tuple(values.shape)}, {tuple(old_values.shape)} and {tuple(returns.shape)}"
        )
    returns = returns.detach()
    unclipped = (values - returns).square()  # [B, T]
    if clip is None:
        return ClippedValueLoss(0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool))
    if clip <= 0.0:
        raise ValueError(f"the value clip must be > 0 (or None to disable it), got {clip}")
    old_values = old_values.detach()
    bounded = old_values + (values - old_values).clamp(-clip, clip)  # [B, T]
    clipped_sq = (bounded - returns).square()  # [B, T]
    loss = 0.5 * torch.maximum(unclipped, clipped_sq)
    return ClippedValueLoss(loss, clipped_sq > unclipped)
