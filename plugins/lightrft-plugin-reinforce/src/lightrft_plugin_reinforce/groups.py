"""Per-group reward baselines: pure functions of tensors.

Samples of one prompt are contiguous: rows ``[g * G, (g + 1) * G)`` form group ``g``. A
group whose rewards are all equal always gets exactly 0 (not a rounding residue).
"""

from __future__ import annotations

import torch


def check_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """``rewards`` as a finite float ``[B]`` tensor, or a ``ValueError`` saying what is wrong."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [B], got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise ValueError(f"rewards must be finite; NaN or inf at sample indices {bad}")
    return rewards


def grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rewards`` ``[B]`` viewed as ``[B // G, G]``, after checking the sizes."""
    rewards = check_rewards(rewards)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"a group baseline needs group_size >= 2 samples per prompt, got {group_size!r}; "
            "set engine.n_samples_per_prompt to 2 or more"
        )
    num = rewards.shape[0]
    if num == 0 or num % group_size != 0:
        raise ValueError(
            f"the number of rewards ({num}) must be a positive multiple of group_size "
            f"({group_size}): each prompt needs exactly group_size contiguous samples"
        )
    return rewards.view(num // group_size, group_size)


def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B // G]`` bool: True where every reward of the group is the same."""
    groups = grouped(rewards, group_size)  # [B/G, G]
    return (groups == groups[:, :1]).all(dim=1)


def group_centered(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B]``: ``r_i − mean_G r`` (REINFORCE++-baseline's first step)."""
    groups = grouped(rewards, group_size)  # [B/G, G]
    centered = groups - groups.mean(dim=1, keepdim=True)
    return _zero_equal_groups(groups, centered).reshape(-1)


def leave_one_out(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B]``: RLOO's ``r_i − (Σ_G r − r_i) / (G − 1)``, the reward minus the mean of the
    other samples of its group (equal to ``G/(G−1)·(r_i − mean_G r)``)."""
    groups = grouped(rewards, group_size)  # [B/G, G]
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # [B/G, G]
    return _zero_equal_groups(groups, groups - others).reshape(-1)


def broadcast_to_tokens(values: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample ``values`` ``[B]`` copied to every response token: ``[B, T]``, 0 outside
    ``action_mask``."""
    if values.dim() != 1 or action_mask.dim() != 2 or values.shape[0] != action_mask.shape[0]:
        raise ValueError(
            f"expected values [B] and action_mask [B, T], got {tuple(values.shape)} and "
            f"{tuple(action_mask.shape)}"
        )
    expanded = values.unsqueeze(1).expand(action_mask.shape)  # [B, T]
    return torch.where(action_mask.bool(), expanded, torch.zeros_like(expanded))


def _zero_equal_groups(groups: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    equal = (groups == groups[:, :1]).all(dim=1, keepdim=True)  # [B/G, 1]
    return torch.where(equal, torch.zeros_like(values), values)
