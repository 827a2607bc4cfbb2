"""Group-relative advantages (GRPO, Dr.GRPO): pure functions of tensors.

Samples of one prompt are contiguous: rows ``[g * G, (g + 1) * G)`` form group ``g``.
"""

from __future__ import annotations

import torch


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rewards`` ``[B]`` viewed as ``[B // G, G]``, after checking the sizes."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [B], got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"group-relative advantages need group_size >= 2 samples per prompt, got "
            f"{group_size!r}; set n_samples_per_prompt to 2 or more"
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


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B // G]`` bool: True for groups whose rewards are all equal (no learning signal)."""
    grouped = _grouped(rewards, group_size)  # [B/G, G]
    return (grouped == grouped[:, :1]).all(dim=1)


def group_normalized_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> torch.Tensor:
    """``[B]`` advantages ``(r_i − mean_G r) / (std_G r + eps)``; ``std`` is unbiased (N−1).

    ``scale_by_std=False`` gives Dr.GRPO's ``r_i − mean_G r``. A group whose rewards are all
    equal gets exactly 0 (not a rounding residue divided by ``eps``, never NaN).
    """
    grouped = _grouped(rewards, group_size)  # [B/G, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [B/G, G]
    if scale_by_std:
        std = grouped.std(dim=1, correction=1, keepdim=True)  # [B/G, 1]
        centered = centered / (std + eps)
    equal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # [B/G, 1]
    advantages = torch.where(equal, torch.zeros_like(centered), centered)
    return advantages.reshape(-1)  # [B]


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


def overlong_length_penalty(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    """``[B]`` float32 in ``[−1, 0]``: DAPO's soft overlong punishment (arXiv 2503.14476,
    eq. 13) of responses of ``lengths`` tokens, ``L_max = max_length``, ``L_buf = buffer``::

        0                              if L <= L_max − L_buf
        ((L_max − L_buf) − L) / L_buf  if L_max − L_buf < L <= L_max
        −1                             if L > L_max

    i.e. ``clamp(−(L − (L_max − L_buf)) / L_buf, −1, 0)``. The caller multiplies it by the
    penalty factor and adds it to the reward.
    """
    if max_length < 1 or not 1 <= buffer <= max_length:
        raise ValueError(
            f"overlong shaping needs max_length >= 1 and 1 <= buffer <= max_length; got "
            f"max_length={max_length}, buffer={buffer}"
        )
    excess = lengths.float() - (max_length - buffer)  # [B]
    return (-excess / buffer).clamp(min=-1.0, max=0.0)
