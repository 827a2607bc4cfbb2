"""Advantage whitening over a whole (global) batch, and advantage clipping.

Whitening, over the tokens where ``mask`` is True in the batch of *every* rank::

    μ = Σ m·x / N,   σ² = Σ m·(x − μ)² / N   (population variance, N = Σ m)
    x̂ = (x − μ) / (σ + ε)      (center=True)      or      x̂ = x / (σ + ε)   (center=False)

and 0 outside the mask. With several ranks the sums are all-reduced, so every rank gets
the statistics of the global batch and the result is the same as whitening the
concatenated batch in one process (the loop passes ``strategy.all_reduce``; with one
process pass nothing).

Guards: if every valid value in the global batch is the same (no spread at all, checked
exactly with the global max and min, not with a rounded σ), the result is 0 with
``center=True`` and the values unchanged with ``center=False`` -- never a rounding residue
divided by ε, never NaN. A batch without valid tokens gives zeros.

The statistics are computed in float64 and the result is cast back to the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..interfaces.strategy import ReduceOp


class AllReduce(Protocol):
    """The signature of ``StrategyBase.all_reduce``: reduce a tensor over every rank."""

    def __call__(self, value: torch.Tensor, op: ReduceOp = ...) -> torch.Tensor: ...


@dataclass(frozen=True)
class WhitenedValues:
    """``values``: ``[B, T]`` whitened (0 outside the mask). ``mean``/``std``: the global
    statistics used (Python floats, for metrics). ``count``: global number of valid
    entries."""

    values: torch.Tensor
    mean: float
    std: float
    count: int


def _reduce(value: torch.Tensor, op: ReduceOp, all_reduce: AllReduce | None) -> torch.Tensor:
    if all_reduce is None:
        return value
    return torch.as_tensor(all_reduce(value, op=op)).to(value.dtype)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    center: bool = True,
    eps: float = 1e-8,
    all_reduce: AllReduce | None = None,
) -> WhitenedValues:
    """Whiten ``values`` (any shape, e.g. ``[B, T]``) over the True entries of ``mask``.

    See the module docstring for the formula and guards. ``all_reduce``: a callable like
    ``strategy.all_reduce(tensor, op=...)`` (ops ``sum`` and ``max`` are used, three calls,
    in the same order on every rank); ``None`` for one process.
    """
    if values.shape != mask.shape:
        raise ValueError(
            f"values and mask must have the same shape, got {tuple(values.shape)} and "
            f"{tuple(mask.shape)}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    mask = mask.bool()
    x = values.detach().to(torch.float64)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    valid = torch.where(mask, x, zero)

    # 1. global count and sum -> mean
    sums = _reduce(torch.stack([mask.sum().to(torch.float64), valid.sum()]), "sum", all_reduce)
    count = round(float(sums[0]))
    if count == 0:
        return WhitenedValues(torch.zeros_like(values), 0.0, 0.0, 0)
    mean = sums[1] / sums[0]
    # 2. global max and min (as max of [max, -min]) -> exact "no spread" test
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
    local_max = torch.where(mask, x, -inf).max() if mask.any() else -inf
    local_min = torch.where(mask, x, inf).min() if mask.any() else inf
    extremes = _reduce(torch.stack([local_max, -local_min]), "max", all_reduce)
    # 3. global sum of squared deviations -> population std
    sq_dev = torch.where(mask, (x - mean).square(), zero).sum()
    std = torch.sqrt(_reduce(sq_dev, "sum", all_reduce) / count)

    if extremes[0] == -extremes[1]:  # every valid value is the same
        out = torch.zeros_like(x) if center else valid
        return WhitenedValues(out.to(values.dtype), float(mean), 0.0, count)
    shifted = x - mean if center else x
    out = torch.where(mask, shifted / (std + eps), zero)
    return WhitenedValues(out.to(values.dtype), float(mean), float(std), count)


def clip_advantages(advantages: torch.Tensor, clip: float | None) -> torch.Tensor:
    """``clamp(A, −clip, clip)``; ``clip=None`` returns ``advantages`` unchanged."""
    if clip is None:
        return advantages
    if clip <= 0:
        raise ValueError(f"the advantage clip must be > 0 (or None to disable it), got {clip}")
    return advantages.clamp(-clip, clip)
