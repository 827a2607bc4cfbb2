"""Discounted returns of token-level rewards (REINFORCE++): pure functions of tensors.
The token rewards themselves are the core's ``lightrft_core.algorithms.token_rewards``.

For a response with valid tokens ``t`` (``mask`` True) and outcome reward ``r``::

    R_t = −β·kl_t + r·[t is the last valid token]
    G_t = Σ_{k ≥ t, k valid} γ^{(number of valid tokens from t to k) − 1} R_k

i.e. ``G_t = R_t + γ·G_{next valid token}``. For the usual contiguous response this is the
textbook ``G_t = Σ_{k≥t} γ^{k−t} R_k``; masked positions (prompt, padding) get 0 and do not
count as steps.
"""

from __future__ import annotations

import torch


def discounted_returns(
    token_rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``[B, T]``: ``G_t = R_t + γ·G_{next valid}`` on valid tokens, 0 elsewhere."""
    if token_rewards.shape != action_mask.shape or token_rewards.dim() != 2:
        raise ValueError(
            f"token_rewards and action_mask must both be [B, T]; got "
            f"{tuple(token_rewards.shape)} and {tuple(action_mask.shape)}"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    mask = action_mask.bool()
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])  # [B]
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        step = token_rewards[:, t] + gamma * running
        running = torch.where(mask[:, t], step, running)
        returns[:, t] = torch.where(mask[:, t], running, 0.0)
    return returns
