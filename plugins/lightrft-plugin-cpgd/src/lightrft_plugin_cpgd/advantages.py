"""CPGD's group advantages: the group-centred reward times a weighting factor.

Samples of one prompt are contiguous: rows ``[g * G, (g + 1) * G)`` form group ``g``::

    A_i = w · (r_i − mean_G r)

with the weighting ``w`` (``advantage_weighting``):

* ``std``: ``w = 1 / (std_G r + ε)``, unbiased (N − 1) std: GRPO's normalised advantage;
* ``clip-filter-like``: ``w = min(N_groups / N_groups_with_signal, w_max)`` over the whole
  (global) batch: when all-equal groups carry no signal, the others are scaled up as if
  those groups had been filtered out of the batch, at most by ``w_max``;
* ``none``: ``w = 1``.

A group whose rewards are all equal gets exactly 0 (never a rounding residue, never NaN).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch

AdvantageWeighting = Literal["std", "clip-filter-like", "none"]
ADVANTAGE_WEIGHTINGS: tuple[str, ...] = get_args(AdvantageWeighting)


def grouped_rewards(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rewards`` ``[B]`` as a finite float ``[B // G, G]`` tensor, after checking sizes."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [B], got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"CPGD's group advantages need group_size >= 2 samples per prompt, got "
            f"{group_size!r}; set engine.n_samples_per_prompt to 2 or more"
        )
    num = rewards.shape[0]
    if num == 0 or num % group_size != 0:
        raise ValueError(
            f"the number of rewards ({num}) must be a positive multiple of group_size "
            f"({group_size}): each prompt needs exactly group_size contiguous samples"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise ValueError(f"rewards must be finite; NaN or inf at sample indices {bad}")
    return rewards.view(num // group_size, group_size)


def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B // G]`` bool: True where every reward of the group is the same."""
    groups = grouped_rewards(rewards, group_size)
    return (groups == groups[:, :1]).all(dim=1)


def cpgd_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    weighting: AdvantageWeighting = "std",
    eps: float = 1e-6,
    max_weight: float = 3.0,
    all_reduce: Any = None,
) -> tuple[torch.Tensor, float]:
    """``([B] advantages, w)`` (module docstring); ``w`` is reported for ``clip-filter-like``
    and 1.0 otherwise. ``all_reduce`` (``strategy.all_reduce``) makes the group counts of
    ``clip-filter-like`` global over ranks."""
    if weighting not in ADVANTAGE_WEIGHTINGS:
        raise ValueError(
            f"unknown advantage weighting {weighting!r}; valid: {', '.join(ADVANTAGE_WEIGHTINGS)}"
        )
    groups = grouped_rewards(rewards, group_size)  # [B/G, G]
    centered = groups - groups.mean(dim=1, keepdim=True)  # [B/G, G]
    equal = (groups == groups[:, :1]).all(dim=1, keepdim=True)  # [B/G, 1]
    weight = 1.0
    if weighting == "std":
        centered = centered / (groups.std(dim=1, correction=1, keepdim=True) + eps)
    elif weighting == "clip-filter-like":
        counts = torch.tensor([float(equal.numel()), float((~equal).sum())], dtype=torch.float64)
        if all_reduce is not None:
            counts = torch.as_tensor(all_reduce(counts, op="sum")).to(torch.float64)
        total, with_signal = float(counts[0]), float(counts[1])
        weight = min(total / with_signal, max_weight) if with_signal > 0 else 1.0
        centered = centered * weight
    advantages = torch.where(equal, torch.zeros_like(centered), centered)
    return advantages.reshape(-1), weight


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
