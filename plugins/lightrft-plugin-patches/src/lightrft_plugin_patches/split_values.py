"""A critic's per-token values computed with Ulysses sequence parallelism.

``sequence_parallel_values(critic, sequences, attention_mask, group=...)`` is
``CriticModel.forward`` with every row split over the ``P`` ranks of ``group``: each rank
runs the trunk on its contiguous slice of ``ceil(T/P)`` positions (the ``ulysses_attention``
patch exchanges heads and positions around the attention) and the value head on its slice;
the slices' values are gathered, so every rank of the group returns the ``[B, T-1]`` values
of the unsplit critic, like the log-probs (``sequence_parallel.py``).

Rows are read at the positions the critic's ``trunk_inputs`` gives (``position_ids``:
counting the real tokens of a padded row, or restarting at 0 where a packed row's next
sequence starts); the attention over the whole row keeps every sequence, and every padding
token, to itself (``packed_row_context``). Gradients: each rank's parameters receive the
gradient of its own positions; summed over the group they are the unsplit critic's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lightrft_core.actors.varlen_attention import SEGMENTS_KWARG, check_segments_read
from lightrft_core.interfaces.actor import text_trunk_inputs
from lightrft_core.models.critic import CriticModel

from .collectives import gather_sequence
from .sequence_parallel import packed_row_context, rank_slice, require_patched
from .ulysses import CONTEXT_KWARG, UlyssesAttention, family_of


def enable_split_values(critic: CriticModel, group: Any) -> None:
    """From now on ``critic(...)`` splits every row over ``group``
    (``sequence_parallel_values``), inside the critic's own call (a strategy's hooks run as
    before). Applies the ``ulysses_attention`` patch to its trunk's model family."""
    UlyssesAttention(UlyssesAttention.Config(models=[family_of(critic.trunk)])).apply()
    vars(critic)["forward"] = functools.partial(sequence_parallel_values, critic, group=group)


def sequence_parallel_values(
    critic: CriticModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    group: Any,
    trunk_inputs: Callable[[Any], Mapping[str, Any]] | None = None,
    trunk_gradients: bool = True,
    last_token: bool = False,
) -> torch.Tensor:
    """``CriticModel.forward`` with each row split over ``group``: ``[B, T-1]`` float32
    values, 0 where a token is padding, on every rank of the group. Text rows only (the
    trunk reads ``input_ids`` and ``position_ids``); needs the ``ulysses_attention`` patch."""
    trunk = critic.trunk
    require_patched(trunk, "enable_split_values(critic, group)")
    if last_token:
        raise ValueError("a split critic returns per-token values, not last_token scores")
    inputs = (
        trunk_inputs(trunk)
        if trunk_inputs is not None
        else text_trunk_inputs(sequences, attention_mask)
    )
    length = sequences.shape[1]
    start, stop, padding = rank_slice(group, length)
    mask = attention_mask.to(sequences.device).bool()
    tokens = F.pad(sequences, (0, padding))  # [B, P*L]
    valid = F.pad(mask, (0, padding))
    # 0 where a sequence starts and on padding: each padding token is a sequence of its own
    starts = inputs["position_ids"].reshape(sequences.shape).masked_fill(~mask, 0)
    positions = F.pad(starts, (0, padding))
    context = packed_row_context(
        group, valid, positions, trunk.config._attn_implementation, trunk.dtype
    )
    with torch.set_grad_enabled(torch.is_grad_enabled() and trunk_gradients):
        states = trunk(
            input_ids=tokens[:, start:stop],
            position_ids=positions[:, start:stop],
            use_cache=False,
            **{CONTEXT_KWARG: context},
        ).last_hidden_state  # [B, L, H]
    check_segments_read(context.kernel_kwargs, trunk)
    given = inputs.get(SEGMENTS_KWARG)
    if given is not None:  # the packed sequences of the trunk inputs: read, split (context)
        given.read = True
    values = gather_sequence(critic.value_head(states), group, dim=1)[:, : length - 1]
    scored = mask[:, 1:] & mask[:, :-1]  # [B, T-1]
    return torch.where(scored, values, torch.zeros_like(values))
