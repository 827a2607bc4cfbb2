"""Token-level rewards and discounted returns (REINFORCE++): pure functions of tensors.

For a response with valid tokens ``t`` (``mask`` True) and outcome reward ``r``::

    R_t = −β·kl_t + r·[t is the last valid token]
    G_t = Σ_{k ≥ t, k valid} γ^{(number of valid tokens from t to k) − 1} R_k

i.e. ``G_t = R_t + γ·G_{next valid token}``. For the usual contiguous response this is the
textbook ``G_t = Σ_{k≥t} γ^{k−t} R_k``; masked positions (prompt, padding) get 0 and do not
count as steps.
"""

from __future__ import annotations

import torch


def last_token_mask(action_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: True at the last True position of each row of ``action_mask``
    (a row without any True position has none)."""
    mask = action_mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)  # [B, T]
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values
    return (positions == last.unsqueeze(1)) & mask


def token_level_rewards(
    rewards: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """``[B, T]``: ``R_t = −β·kl_t + r_i·[t is last]`` on valid tokens, 0 elsewhere.

    ``rewards``: ``[B]``. ``kl``: ``[B, T]`` per-token KL estimate (or ``None`` for no
    penalty). ``kl_coef``: ``β``.
    """
    if rewards.dim() != 1 or rewards.shape[0] != action_mask.shape[0]:
        raise ValueError(
            f"expected rewards [B] and action_mask [B, T], got {tuple(rewards.shape)} and "
            f"{tuple(action_mask.shape)}"
        )
    mask = action_mask.bool()
    outcome = torch.where(last_token_mask(mask), rewards.unsqueeze(1), 0.0)  # [B, T]
    if kl is not None and kl_coef != 0.0:
        outcome = outcome - kl_coef * torch.where(mask, kl, 0.0)
    return torch.where(mask, outcome, 0.0).to(torch.float32)


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
