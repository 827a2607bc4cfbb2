"""Token-level rewards of an outcome-rewarded response (REINFORCE++, PPO): pure functions
of tensors.

For a response with response tokens ``t`` (``action_mask`` True), outcome reward ``r`` and
an optional per-token KL estimate ``kl_t``::

    R_t = −β·kl_t + r·[t is the last response token]

Positions outside the mask (prompt, padding) get 0. The discounted returns (REINFORCE++) and
GAE (PPO) are computed from ``R_t`` by each plugin.
"""

from __future__ import annotations

import torch


def last_token_mask(action_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: True at the last True position of each row (none in an empty row)."""
    mask = action_mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)  # [B, T]
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values  # [B]
    return (positions == last.unsqueeze(1)) & mask


def token_level_rewards(
    rewards: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """``[B, T]`` float32: ``R_t = −β·kl_t + r_i·[t is last]`` on response tokens, 0 elsewhere.

    ``rewards``: ``[B]`` outcome rewards. ``kl``: ``[B, T]`` per-token KL estimate, or
    ``None`` for no penalty. ``kl_coef``: ``β``.
    """
    if rewards.dim() != 1 or action_mask.dim() != 2 or rewards.shape[0] != action_mask.shape[0]:
        raise ValueError(
            f"expected rewards [B] and action_mask [B, T], got {tuple(rewards.shape)} and "
            f"{tuple(action_mask.shape)}"
        )
    mask = action_mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    outcome = torch.where(last_token_mask(mask), rewards.float().unsqueeze(1), zero)  # [B, T]
    if kl is not None and kl_coef != 0.0:
        outcome = outcome - kl_coef * torch.where(mask, kl.float(), zero)
    return torch.where(mask, outcome, zero)
