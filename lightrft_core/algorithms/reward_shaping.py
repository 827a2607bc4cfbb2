"""Reward normalisation with running statistics, and reward clipping.

``RunningMeanStd`` keeps the count, mean and sum of squared deviations (``M2``) of every
reward seen so far and merges each new batch exactly (Chan, Golub and LeVeque's parallel
update), so after batches ``b_1 … b_k`` its statistics equal those of their concatenation::

    n = n_a + n_b,  δ = μ_b − μ_a,  μ = μ_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n
    var = M2 / n  (population),  std = sqrt(var)

``normalize_rewards``: ``(r − μ) / (std + ε)`` (``center=False``: ``r / (std + ε)``), with
the running statistics *after* this batch was added (the first batch is normalised by its
own statistics). ``clip_rewards``: ``clamp(r, −c, c)``. The loop applies normalisation,
then clipping, to the rewards before the algorithm sees them.

With several ranks, ``update`` all-reduces the batch count, sum and squared deviations, so
every rank holds the statistics of the global batch. Statistics are kept in float64;
``state_dict()``/``load_state_dict()`` carry them through checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .whitening import AllReduce


class RunningMeanStd:
    """Running count / mean / M2 of a stream of scalars (see the module docstring)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def var(self) -> float:
        """Population variance of everything seen (0 before any data)."""
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, values: torch.Tensor, *, all_reduce: AllReduce | None = None) -> None:
        """Merge a batch of values (any shape, flattened; must be finite)."""
        x = values.detach().reshape(-1).to(torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError("RunningMeanStd.update: the values must be finite (NaN or inf seen)")
        sums = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64), x.sum()])
        if all_reduce is not None:
            sums = torch.as_tensor(all_reduce(sums, op="sum")).to(torch.float64)
        n_b = round(float(sums[0]))
        if n_b == 0:
            return
        mean_b = float(sums[1]) / n_b
        sq_dev = (x - mean_b).square().sum()
        if all_reduce is not None:
            sq_dev = torch.as_tensor(all_reduce(sq_dev, op="sum"))
        m2_b = float(sq_dev)

        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


def normalize_rewards(
    rewards: torch.Tensor,
    stats: RunningMeanStd,
    *,
    center: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """``(r − μ) / (std + ε)`` with the running statistics (``center=False``: no ``− μ``).

    Call ``stats.update(rewards)`` first. Same shape and dtype as ``rewards``.
    """
    if stats.count == 0:
        raise ValueError("normalize_rewards: the running statistics are empty; update them first")
    shifted = rewards.to(torch.float64) - (stats.mean if center else 0.0)
    return (shifted / (stats.std + eps)).to(rewards.dtype)


def clip_rewards(rewards: torch.Tensor, clip: float | None) -> torch.Tensor:
    """``clamp(r, −clip, clip)``; ``clip=None`` returns ``rewards`` unchanged."""
    if clip is None:
        return rewards
    if clip <= 0:
        raise ValueError(f"the reward clip must be > 0 (or None to disable it), got {clip}")
    return rewards.clamp(-clip, clip)


class RewardNormalizer:
    """Running normalisation then clipping, in one object the loop can own and checkpoint.

    ``__call__(rewards)`` updates the statistics with the batch (global with
    ``all_reduce``), normalises (if ``normalize``) and clips (if ``clip``).
    """

    def __init__(
        self,
        *,
        normalize: bool = True,
        center: bool = True,
        clip: float | None = None,
        eps: float = 1e-8,
    ) -> None:
        if clip is not None and clip <= 0:
            raise ValueError(f"the reward clip must be > 0 (or None to disable it), got {clip}")
        self.normalize = normalize
        self.center = center
        self.clip = clip
        self.eps = eps
        self.stats = RunningMeanStd()

    def __call__(
        self, rewards: torch.Tensor, *, all_reduce: AllReduce | None = None
    ) -> torch.Tensor:
        out = rewards
        if self.normalize:
            self.stats.update(rewards, all_reduce=all_reduce)
            out = normalize_rewards(out, self.stats, center=self.center, eps=self.eps)
        return clip_rewards(out, self.clip)

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state["stats"])
