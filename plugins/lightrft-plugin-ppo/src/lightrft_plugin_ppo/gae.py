"""Generalized advantage estimation (GAE) from token-level rewards: pure tensor functions
(the token rewards are the core's ``lightrft_core.algorithms.token_rewards``).

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation", arXiv 1506.02438, eq. 16), over the response tokens of one sample::

    R_t = −β·kl_t + r·[t is the last response token]          (token reward)
    δ_t = R_t + γ·V_{t+1} − V_t                                 (TD residual)
    A_t = δ_t + γλ·A_{t+1}       = Σ_{k≥t} (γλ)^{k−t} δ_k       (advantage)
    G_t = A_t + V_t                                             (return, the critic's target)

``V_t`` is the critic's value at the position of action ``t`` (the state before it). The
episode ends with the last response token: the value after it, and ``A`` after it, are 0.

Masks: positions where ``action_mask`` is False (prompt, right padding) get 0 and are not
steps; a masked gap inside a response is skipped, so ``t + 1`` means "the next response
token" (for the usual contiguous response this is the textbook recursion).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class GAEResult(NamedTuple):
    """``advantages`` and ``returns``: ``[B, T]`` float32, 0 outside the mask."""

    advantages: torch.Tensor
    returns: torch.Tensor


def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> GAEResult:
    """Advantages ``A_t`` and returns ``A_t + V_t`` of the module docstring.

    ``token_rewards``: ``[B, T]`` (``token_level_rewards``). ``values``: ``[B, T]`` the
    critic's values at the action positions (read only where the mask is True).
    ``action_mask``: ``[B, T]``. ``gamma``, ``lam``: in ``[0, 1]``. Computed in float32, in
    one backward pass over the positions.
    """
    if token_rewards.shape != action_mask.shape or values.shape != action_mask.shape:
        raise ValueError(
            f"token_rewards, values and action_mask must all be [B, T]; got "
            f"{tuple(token_rewards.shape)}, {tuple(values.shape)} and {tuple(action_mask.shape)}"
        )
    if action_mask.dim() != 2:
        raise ValueError(f"expected [B, T] tensors, got {action_mask.dim()} dimensions")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    mask = action_mask.bool()
    rewards = token_rewards.float()
    values = values.detach().float()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # [B]: V after the last token is 0
    next_advantage = torch.zeros_like(rewards[:, 0])  # [B]
    for t in range(rewards.shape[1] - 1, -1, -1):
        valid = mask[:, t]  # [B]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_advantage = torch.where(valid, advantage, next_advantage)
        next_value = torch.where(valid, values[:, t], next_value)
        advantages[:, t] = torch.where(valid, advantage, 0.0)
    returns = torch.where(mask, advantages + values, 0.0)
    return GAEResult(advantages=advantages, returns=returns)
