"""What the loops need to run the same way on one process and on N (``torchrun``).

Every rank runs the same program on its share of the data (SPMD). Sizes that define the
optimization (``prompts_per_step``, ``optimizer_batch_size``, the loss scale) are global;
metrics are reduced over ranks so that rank 0 logs the numbers of the whole batch.

Strategy contexts: ``StrategyBase`` has ``model_init_context()``, ``no_sync(model)`` and
``generation_context(model)``, no-ops by default (``local``); ``fsdp`` and ``deepspeed``
override them (see docs/distributed.md). The functions below are the loop's names for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

import torch

from ..config.errors import ConfigError, ConfigIssue
from ..interfaces import StrategyBase


# ---------------------------------------------------------------------- strategy contexts
def model_init_context(strategy: StrategyBase) -> AbstractContextManager:
    """Where models are built (``fsdp`` with ``meta_init``: structure only on ranks > 0)."""
    return strategy.model_init_context()


def no_sync(strategy: StrategyBase, model: torch.nn.Module) -> AbstractContextManager:
    """Backward passes inside accumulate gradients without communication (every micro-batch
    of an optimizer batch but the last)."""
    return strategy.no_sync(model)


def generation_context(strategy: StrategyBase, model: torch.nn.Module) -> AbstractContextManager:
    """The whole model present on every rank (generation with the training module): no
    collective runs inside, so ranks may generate different numbers of tokens."""
    return strategy.generation_context(model)


# ---------------------------------------------------------------------- global sizes
def check_divisible(world_size: int, sizes: Mapping[str, int | None]) -> None:
    """Refuse global sizes (``{"trainer.prompts_per_step": 6}``) that ranks cannot share."""
    issues = [
        ConfigIssue(
            key,
            f"{value} is a global size (over all ranks); it must be divisible by the "
            f"{world_size} ranks of this job so that each rank takes an equal share",
        )
        for key, value in sizes.items()
        if value is not None and value % world_size
    ]
    if issues:
        raise ConfigError(issues)


# ---------------------------------------------------------------------- metric reduction
def reduce_means(
    strategy: StrategyBase, sums: Mapping[str, float], weight: float
) -> dict[str, float]:
    """Weighted means over all ranks: ``Σ_ranks sums[k] / Σ_ranks weight``. Every rank
    must pass the same keys. One collective."""
    keys = sorted(sums)
    local = torch.tensor([*(float(sums[k]) for k in keys), float(weight)], dtype=torch.float64)
    total = strategy.all_reduce(local, op="sum")
    denominator = max(float(total[-1]), 1e-12)
    return {key: float(total[i]) / denominator for i, key in enumerate(keys)}


def reduce_values(strategy: StrategyBase, values: Mapping[str, float], op: str) -> dict[str, float]:
    """``op`` (``sum``, ``max`` ...) of each value over all ranks. One collective."""
    keys = sorted(values)
    local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    total = strategy.all_reduce(local, op=op)  # type: ignore[arg-type]
    return {key: float(total[i]) for i, key in enumerate(keys)}


def gather_columns(
    strategy: StrategyBase, columns: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-sample values ``[B]`` of every rank, concatenated in rank order. One collective."""
    keys = sorted(columns)
    local = torch.stack([columns[k].detach().float().reshape(-1) for k in keys], dim=1)
    every = strategy.all_gather(local)  # [sum of B over ranks, K]
    return {key: every[:, i] for i, key in enumerate(keys)}
