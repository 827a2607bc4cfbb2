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
The group helpers are the core's ``lightrft_core.algorithms.groups``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch

from lightrft_core.algorithms.groups import equal_groups, grouped_rewards, zero_equal_groups

AdvantageWeighting = Literal["std", "clip-filter-like", "none"]
ADVANTAGE_WEIGHTINGS: tuple[str, ...] = get_args(AdvantageWeighting)


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
    equal = equal_groups(groups)  # [B/G, 1]
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
    return zero_equal_groups(groups, centered).reshape(-1), weight
