"""How a batch of rows is cut into micro-batches (forward/backward passes): a fixed number of
rows (``micro_batch_size``), or a token budget (``trainer.max_tokens_per_micro_batch``).

A token budget bounds what one pass computes: the rows' real tokens when packing is on,
rows × the longest row when it is off (padding is computed too). Rows are taken longest
first; with packing they are spread over the micro-batches so that each holds about the
same number of tokens, without packing rows of similar length stay together (less padding).
A row longer than the budget is a micro-batch of its own. Under data parallel every rank
must run the same number of passes (fsdp and deepspeed gather weights in each): the ranks
agree on the largest count and a rank with fewer micro-batches splits its largest ones.
Which rows form a micro-batch does not change the loss: its scale is the optimizer batch's
(``LossScale``), so the gradient is the same however the batch is cut.

``actor_forward`` runs one micro-batch through the actor, packed when ``trainer.packing``
is on (``lightrft_core/actors/packing.py``); rows with media are packed in their order, the
media passed as collated (``Actor.packs_media``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from ..actors.options import forward_attention
from ..actors.packing import packed_actor_forward, packs_into_one_row
from ..interfaces import Actor, ActorModality, ActorOutput, StrategyBase

#: The largest count over the ranks (``StrategyBase.all_reduce`` with ``op="max"``).
AgreeFn = Callable[[int], int]


def plan_micro_batches(
    lengths: torch.Tensor,
    *,
    micro_batch_size: int,
    max_tokens: int | None = None,
    packing: bool = False,
    agree: AgreeFn | None = None,
) -> list[torch.Tensor]:
    """Positions into ``lengths`` (``[n]`` real tokens per row) of each micro-batch.

    ``max_tokens=None``: consecutive runs of ``micro_batch_size`` rows (ranks with equal row
    counts agree already). Otherwise the token budget of the module docstring, ``agree``
    turning this rank's count into the count every rank uses (``None``: one process)."""
    n = int(lengths.numel())
    if max_tokens is None:
        return list(torch.arange(n).split(micro_batch_size))
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    sizes = [int(v) for v in lengths.tolist()]
    order = sorted(range(n), key=lambda i: -sizes[i])  # longest first, ties in input order
    groups = (
        _packed_groups(order, sizes, max_tokens)
        if packing
        else _padded_groups(order, sizes, max_tokens)
    )
    count = len(groups) if agree is None else agree(len(groups))
    groups = _split_to(groups, count, sizes, packing)
    return [torch.tensor(group, dtype=torch.long) for group in groups]


def agree_over_ranks(strategy: StrategyBase) -> AgreeFn | None:
    """The ``agree`` of ``plan_micro_batches`` for ``strategy``'s ranks (a collective)."""
    if strategy.world_size == 1:
        return None

    def agree(count: int) -> int:
        return int(strategy.all_reduce(torch.tensor([float(count)]), op="max"))

    return agree


def resolve_packing(packing: bool | Literal["auto"], actor: Actor) -> bool:
    """``trainer.packing`` for a loop around ``actor``: ``true`` and ``false`` as set (``true``
    checked by ``check_packing``); ``auto`` packs a text-only actor whose attention reads all
    the packed sequences of a pass from one row without a mask (SDPA, flash-attention:
    ``packs_into_one_row``; sequences split over ranks or not), not an actor with media, nor
    eager attention (a block-diagonal mask)."""
    if packing == "auto":
        text_only = actor.modality == ActorModality.LANGUAGE_ONLY
        return text_only and packs_into_one_row(actor.hf_model())
    check_packing(packing, actor)
    return packing


def check_packing(packing: bool, actor: Actor) -> None:
    """Packing needs an actor that reads packed rows: a text-only one, or one that
    declares ``Actor.packs_media`` (e.g. ``qwen_vl``: 3-D positions per sequence)."""
    if packing and actor.modality != ActorModality.LANGUAGE_ONLY and not actor.packs_media:
        raise ValueError(
            f"trainer.packing is on, but actor {actor.name!r} ({actor.modality.value}) does "
            "not read packed rows with media (Actor.packs_media); set trainer.packing=false"
        )


def actor_forward(
    prepared: torch.nn.Module,
    actor: Actor,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    packing: bool,
    return_entropy: bool = False,
    **modal_inputs: Any,
) -> ActorOutput:
    """``prepared`` (the strategy's module around ``actor``) on right-padded rows; with
    ``packing`` on packed rows (one row for flash-attention and for SDPA on a text model,
    ``packs_into_one_row``), returned padded. The SDPA
    kernels are ``forward_attention``'s (the math one for 16-bit on the CPU)."""
    with forward_attention(sequences.device, next(actor.parameters()).dtype):
        if not packing:
            return prepared(
                sequences, attention_mask, return_entropy=return_entropy, **modal_inputs
            )
        check_packing(True, actor)
        return packed_actor_forward(
            prepared,
            sequences,
            attention_mask,
            one_row=packs_into_one_row(
                actor.hf_model(), text_only=actor.modality == ActorModality.LANGUAGE_ONLY
            ),
            return_entropy=return_entropy,
            **modal_inputs,
        )


def micro_batch_tokens(group: list[int], sizes: list[int], packing: bool) -> int:
    """What one pass over ``group`` computes: its tokens (packing) or rows × longest row."""
    if not group:
        return 0
    return sum(sizes[i] for i in group) if packing else len(group) * max(sizes[i] for i in group)


def _packed_groups(order: list[int], sizes: list[int], budget: int) -> list[list[int]]:
    """Longest first into as few groups as first fit needs, then the same number of groups
    balanced (each row to the group with the fewest tokens) when that keeps the budget."""
    first_fit: list[list[int]] = []
    used: list[int] = []
    for i in order:
        slot = next((g for g, u in enumerate(used) if u + sizes[i] <= budget), None)
        if slot is None:
            first_fit.append([])
            used.append(0)
            slot = len(used) - 1
        first_fit[slot].append(i)
        used[slot] += sizes[i]
    balanced = _balanced(order, sizes, len(first_fit))
    over = any(len(g) > 1 and micro_batch_tokens(g, sizes, True) > budget for g in balanced)
    return first_fit if over else balanced


def _balanced(order: list[int], sizes: list[int], count: int) -> list[list[int]]:
    """Rows (longest first) each into the group holding the fewest tokens so far."""
    groups: list[list[int]] = [[] for _ in range(count)]
    totals = [0] * count
    for i in order:
        slot = min(range(count), key=lambda g: totals[g])
        groups[slot].append(i)
        totals[slot] += sizes[i]
    return groups


def _padded_groups(order: list[int], sizes: list[int], budget: int) -> list[list[int]]:
    """Consecutive runs of the longest-first order, each as long as rows × its first (the
    longest) row's length keeps within the budget."""
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * sizes[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _split_to(
    groups: list[list[int]], count: int, sizes: list[int], packing: bool
) -> list[list[int]]:
    """Split the costliest groups in two until there are ``count`` of them."""
    groups = [list(g) for g in groups]
    while len(groups) < count:
        splittable = [g for g in groups if len(g) > 1]
        if not splittable:
            raise RuntimeError(
                f"cannot make {count} micro-batches of {sum(map(len, groups))} rows: every "
                "rank must hold as many rows as the rank with the most micro-batches"
            )
        largest = max(splittable, key=lambda g: micro_batch_tokens(g, sizes, packing))
        groups.remove(largest)
        if packing:  # alternate the longest-first rows: two halves of about equal tokens
            groups += [largest[0::2], largest[1::2]]
        else:  # keep similar lengths together
            half = len(largest) // 2
            groups += [largest[:half], largest[half:]]
    return groups
