"""Per-group reward statistics shared by the group estimators (GRPO, RLOO, CPGD,
REINFORCE++-baseline): pure functions of tensors.

Samples of one prompt are contiguous: rows ``[g * G, (g + 1) * G)`` form group ``g`` of
``G = group_size`` samples. A group whose rewards are all equal has no learning signal: it
always gets exactly 0 (not a rounding residue divided by ``eps``, never NaN)::

    group_centered          A_i = r_i − mean_G r
    group_normalized        A_i = (r_i − mean_G r) / (std_G r + ε)     std unbiased (N − 1)
    leave_one_out           A_i = r_i − (Σ_G r − r_i) / (G − 1)         (= G/(G−1)·(r_i − mean_G r))
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


def grouped_rewards(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rewards`` ``[B]`` viewed as ``[B // G, G]``, after checking values and sizes."""
    rewards = check_rewards(rewards)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"group estimators need group_size >= 2 samples per prompt, got {group_size!r}; "
            "set engine.n_samples_per_prompt to 2 or more"
        )
    num = rewards.shape[0]
    if num == 0 or num % group_size != 0:
        raise ValueError(
            f"the number of rewards ({num}) must be a positive multiple of group_size "
            f"({group_size}): each prompt needs exactly group_size contiguous samples"
        )
    return rewards.view(num // group_size, group_size)


def equal_groups(groups: torch.Tensor) -> torch.Tensor:
    """``[B // G, 1]`` bool for grouped rewards ``[B // G, G]``: all rewards equal."""
    return (groups == groups[:, :1]).all(dim=1, keepdim=True)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B // G]`` bool: True for groups whose rewards are all equal (no learning signal)."""
    return equal_groups(grouped_rewards(rewards, group_size)).squeeze(1)


def zero_equal_groups(groups: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (``[B // G, G]``, per sample of ``groups``) set to exactly 0 in every group
    whose rewards are all equal."""
    return torch.where(equal_groups(groups), torch.zeros_like(values), values)


def group_centered(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B]``: ``r_i − mean_G r`` (Dr.GRPO's advantage, REINFORCE++-baseline's first step)."""
    groups = grouped_rewards(rewards, group_size)  # [B/G, G]
    centered = groups - groups.mean(dim=1, keepdim=True)
    return zero_equal_groups(groups, centered).reshape(-1)


def group_normalized_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> torch.Tensor:
    """``[B]``: ``(r_i − mean_G r) / (std_G r + eps)`` with the unbiased (N−1) std (GRPO);
    ``scale_by_std=False`` gives ``r_i − mean_G r`` (Dr.GRPO)."""
    groups = grouped_rewards(rewards, group_size)  # [B/G, G]
    centered = groups - groups.mean(dim=1, keepdim=True)  # [B/G, G]
    if scale_by_std:
        centered = centered / (groups.std(dim=1, correction=1, keepdim=True) + eps)
    return zero_equal_groups(groups, centered).reshape(-1)


def leave_one_out(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B]``: RLOO's ``r_i − (Σ_G r − r_i) / (G − 1)``, the reward minus the mean of the
    other samples of its group."""
    groups = grouped_rewards(rewards, group_size)  # [B/G, G]
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # [B/G, G]
    return zero_equal_groups(groups, groups - others).reshape(-1)


def broadcast_to_tokens(values: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample ``values`` ``[B]`` copied to every response token: ``[B, T]``, 0 outside
    ``action_mask`` (``[B, T]`` bool)."""
    if values.dim() != 1 or action_mask.dim() != 2 or values.shape[0] != action_mask.shape[0]:
        raise ValueError(
            f"expected values [B] and action_mask [B, T], got {tuple(values.shape)} and "
            f"{tuple(action_mask.shape)}"
        )
    expanded = values.unsqueeze(1).expand(action_mask.shape)  # [B, T]
    return torch.where(action_mask.bool(), expanded, torch.zeros_like(expanded))
