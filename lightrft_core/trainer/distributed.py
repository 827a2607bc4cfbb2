"""What the loops need to run the same way on one process and on N (``torchrun``).

Every rank runs the same program on its share of the data (SPMD). Sizes that define the
optimization (``prompts_per_step``, ``optimizer_batch_size``, the loss scale) are global;
metrics are reduced over ranks so that rank 0 logs the numbers of the whole batch.

Sequence parallelism (``strategy.sequence_parallel_size`` P > 1): the P ranks of a group
hold the same rows and split each sequence in the actor's forward. The loop hands what
concerns rows (the data share, the sampling seed, sizes and counts, reductions and gathers
of per-sample values) ``data_ranks(strategy)``: the strategy as one rank per group sees it,
so every group is counted once; gradients, checkpoints and the loss scale's ``world_size``
stay over every rank.

Strategy contexts: ``StrategyBase`` has ``model_init_context()``, ``no_sync(model)`` and
``generation_context(model)``, no-ops by default (``local``); ``fsdp`` and ``deepspeed``
override them (see docs/distributed.md). The functions below are the loop's names for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

import torch

from .. import distributed
from ..config.errors import ConfigError, ConfigIssue
from ..interfaces import StrategyBase
from ..interfaces.strategy import ReduceOp


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


# ---------------------------------------------------------------------- sequence parallelism
class RowRanks(Protocol):
    """What the code that shares, counts, reduces or gathers rows needs of the ranks: a
    ``StrategyBase`` has all of it, and so does its ``DataRanks`` view."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_rank_0(self) -> bool: ...

    def all_reduce(self, value: torch.Tensor | float, op: ReduceOp = "mean") -> torch.Tensor: ...

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor: ...


class DataRanks:
    """``strategy`` as the rows see it when its sequence-parallel groups hold the same rows:
    ``rank`` and ``world_size`` are the data-parallel ones, ``all_reduce`` and
    ``all_gather`` run over the ranks at this rank's place in every group (so each group
    counts once); ``is_rank_0`` is the strategy's own."""

    def __init__(self, strategy: StrategyBase) -> None:
        self.strategy = strategy

    @property
    def rank(self) -> int:
        return self.strategy.data_parallel_rank

    @property
    def world_size(self) -> int:
        return self.strategy.data_parallel_size

    @property
    def is_rank_0(self) -> bool:
        return self.strategy.is_rank_0

    def all_reduce(self, value: torch.Tensor | float, op: ReduceOp = "mean") -> torch.Tensor:
        return distributed.all_reduce(value, op, group=self.strategy.data_parallel_group)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return distributed.all_gather(tensor, group=self.strategy.data_parallel_group)


def data_ranks(strategy: StrategyBase) -> RowRanks:
    """What the loop hands the code that shares, counts, reduces or gathers rows:
    ``strategy`` itself, or its ``DataRanks`` when it splits sequences."""
    return strategy if strategy.sequence_parallel_size == 1 else DataRanks(strategy)


def check_group_agrees(strategy: StrategyBase, values: Mapping[str, torch.Tensor]) -> None:
    """Refuse rows that differ between the ranks of a sequence-parallel group (they must
    hold the same rollout: the same prompts, seeds and weights): each of ``values`` (e.g.
    the rollout's tokens and rewards) compared over the group by its size and its sum
    weighted by position. Two collectives; nothing without sequence parallelism."""
    if strategy.sequence_parallel_size == 1:
        return
    keys = sorted(values)
    prints = []
    for key in keys:
        flat = values[key].detach().reshape(-1).cpu().double()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
        prints += [float(flat.numel()), float((flat * weights).sum())]
    local = torch.tensor(prints, dtype=torch.float64)
    group = strategy.sequence_parallel_group
    high = distributed.all_reduce(local, "max", group=group)
    low = distributed.all_reduce(local, "min", group=group)
    differ = [
        k
        for i, k in enumerate(keys)
        if not torch.equal(high[2 * i : 2 * i + 2], low[2 * i : 2 * i + 2])
    ]
    if differ:
        raise RuntimeError(
            f"the ranks of a sequence-parallel group hold different rollouts ({', '.join(differ)}"
            " differ): their generation must be deterministic given the prompts and the seed"
        )


def check_splittable(
    strategy: StrategyBase,
    *,
    shared_critic: bool,
    media: bool,
    engine: str | None = None,
) -> None:
    """Refuse, with one line, what sequence parallelism does not take yet: a critic on the
    actor's trunk (a separate critic's forward is split like the actor's), media inputs, and
    engines other than ``hf`` (whose rollouts are not shown identical over a group;
    ``None``: a loop that generates nothing, ``lightrft sft`` and ``rm``). Packed rows are
    split like padded ones. Nothing when the strategy does not split sequences."""
    size = strategy.sequence_parallel_size
    if size == 1:
        return
    refused = [
        what
        for what, used in (
            ("a shared critic (a value head on the actor's trunk)", shared_critic),
            ("media inputs", media),
            (f"engine {engine!r} (only 'hf')", engine not in (None, "hf")),
        )
        if used
    ]
    if refused:
        raise ValueError(
            f"strategy.sequence_parallel_size is {size}, but sequence parallelism does not "
            f"take {', '.join(refused)} yet: set strategy.sequence_parallel_size: 1"
        )


# ---------------------------------------------------------------------- global sizes
def check_divisible(
    world_size: int, sizes: Mapping[str, int | None], *, ranks: str = "ranks"
) -> None:
    """Refuse global sizes (``{"trainer.prompts_per_step": 6}``) that the ``world_size``
    data-parallel ``ranks`` (``ranks``: what they are called) cannot share."""
    issues = [
        ConfigIssue(
            key,
            f"{value} is a global size (over all ranks); it must be divisible by the "
            f"{world_size} {ranks} of this job so that each takes an equal share",
        )
        for key, value in sizes.items()
        if value is not None and value % world_size
    ]
    if issues:
        raise ConfigError(issues)


# ---------------------------------------------------------------------- metric reduction
def reduce_means(strategy: RowRanks, sums: Mapping[str, float], weight: float) -> dict[str, float]:
    """Weighted means over all ranks: ``Σ_ranks sums[k] / Σ_ranks weight``. Every rank
    must pass the same keys. One collective."""
    keys = sorted(sums)
    local = torch.tensor([*(float(sums[k]) for k in keys), float(weight)], dtype=torch.float64)
    total = strategy.all_reduce(local, op="sum")
    denominator = max(float(total[-1]), 1e-12)
    return {key: float(total[i]) / denominator for i, key in enumerate(keys)}


def reduce_values(strategy: RowRanks, values: Mapping[str, float], op: str) -> dict[str, float]:
    """``op`` (``sum``, ``max`` ...) of each value over all ranks. One collective."""
    keys = sorted(values)
    local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    total = strategy.all_reduce(local, op=op)  # type: ignore[arg-type]
    return {key: float(total[i]) for i, key in enumerate(keys)}


def gather_columns(
    strategy: RowRanks, columns: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-sample values ``[B]`` of every rank, concatenated in rank order. One collective."""
    keys = sorted(columns)
    local = torch.stack([columns[k].detach().float().reshape(-1) for k in keys], dim=1)
    every = strategy.all_gather(local)  # [sum of B over ranks, K]
    return {key: every[:, i] for i, key in enumerate(keys)}
