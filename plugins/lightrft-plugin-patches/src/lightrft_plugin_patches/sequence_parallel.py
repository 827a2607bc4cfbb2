"""Log-probs of whole sequences computed with Ulysses sequence parallelism.

``sequence_parallel_forward(actor, sequences, attention_mask, group=...)`` is the
``language`` actor's forward with every sequence split over the ``P`` ranks of ``group``:
each rank embeds and runs the decoder on its contiguous slice of ``ceil(T/P)`` positions
(rotary embeddings from the slice's global positions; the ``ulysses_attention`` patch
exchanges heads and positions around the attention), scores the tokens its slice
predicts, and the slices' log-probs are gathered, so every rank of the group returns the
``[B, T-1]`` log-probs of the unsplit model.

Packed rows (``position_ids`` restarting at 0 where a sequence starts, as
``lightrft_core/actors/packing.py`` builds them) are split the same way, a slice cutting
through sequences where it falls: the rotary embeddings read each token's position in its
own sequence, the attention over the whole row keeps every sequence to itself
(``packed_row_context``), and a token is scored only when its target belongs to the same
sequence -- the log-probs of the language actor's packed forward.

Gradients: each rank's parameters receive the gradient of its own positions only. Summed
over the group they are the unsplit model's gradient; a strategy that averages gradients
over all ``world_size`` ranks (fsdp) gets that sum when the loss carries
``LossScale.world_size`` counted over every rank and the tokens of each sample are counted
once (not once per rank of its group).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lightrft_core.actors.language import ActorLanguage, output_logits_fn
from lightrft_core.actors.logprobs import chunked_token_log_probs
from lightrft_core.actors.packing import packed_causal_mask
from lightrft_core.actors.varlen_attention import (
    SEGMENTS_KWARG,
    check_segments_read,
    install,
    segment_runs,
)
from lightrft_core.interfaces import ActorOutput

from .collectives import gather_sequence
from .ulysses import CONTEXT_KWARG, UlyssesAttention, UlyssesContext, family_of, is_patched


def whole_sequence_mask(
    valid: torch.Tensor, implementation: str, dtype: torch.dtype
) -> torch.Tensor | None:
    """The attention mask of whole sequences ``valid`` ``[B, T]`` (bool) in the format of
    the kernel ``implementation``: ``None`` (causal only) when nothing is padding; else a
    ``[B, 1, T, T]`` mask (bool for sdpa, additive for eager: causal, padding keys hidden, a
    padding query sees itself so that no row is empty) or the ``[B, T]`` mask for
    flash-attention."""
    if implementation.startswith("flash_attention"):
        return None if bool(valid.all()) else valid.long()
    if implementation == "sdpa" and bool(valid.all()):
        return None
    check_kernel(implementation)
    length = valid.shape[1]
    position = torch.arange(length, device=valid.device)
    causal = position[:, None] >= position[None, :]  # [T, T]
    allowed = (causal & valid[:, None, None, :]) | torch.eye(
        length, dtype=torch.bool, device=valid.device
    )  # [B, 1, T, T]
    if implementation == "sdpa":
        return allowed
    hidden = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=valid.device)
    return torch.zeros((), dtype=dtype, device=valid.device).where(allowed, hidden)


def packed_row_context(
    group: Any,
    valid: torch.Tensor,
    positions: torch.Tensor,
    implementation: str,
    dtype: torch.dtype,
) -> UlyssesContext:
    """The attention over whole packed rows ``[B, W]`` (``valid`` bool, ``positions`` 0
    where a sequence starts and on padding), every sequence seeing only itself, in the
    format of the kernel ``implementation``: flash-attention finds the sequences in the
    row's ``position_ids`` (one row only); SDPA on one row runs per sequence
    (``packed_segments``, ``varlen_attention.py``); SDPA on several rows and eager get the
    block-diagonal causal mask ``[B, 1, W, W]`` (``packed_causal_mask``: bool for sdpa,
    additive of ``dtype`` for eager)."""
    rows = valid.shape[0]
    if implementation.startswith("flash_attention"):
        if rows != 1:
            raise ValueError("flash-attention reads packed sequences from a single row")
        return UlyssesContext(group, None, {"position_ids": positions})
    check_kernel(implementation)
    if implementation == "sdpa" and rows == 1:
        install()  # the sdpa kernel that reads packed_segments
        return UlyssesContext(group, None, {SEGMENTS_KWARG: segment_runs(positions, valid)})
    mask_dtype = torch.bool if implementation == "sdpa" else dtype
    return UlyssesContext(group, packed_causal_mask(positions, valid, dtype=mask_dtype))


def check_kernel(implementation: str) -> None:
    """Refuse an attention kernel other than eager, sdpa and flash-attention."""
    if implementation not in ("sdpa", "eager") and not implementation.startswith("flash_attention"):
        raise ValueError(
            f"sequence parallelism supports the eager, sdpa and flash_attention kernels, "
            f"not {implementation!r}"
        )


def require_patched(model: Any, how: str) -> None:
    """Stop where the attention of ``model``'s family is not patched: it would silently
    attend over its own slice only (``how``: how to patch it, for the message)."""
    family = family_of(model)
    if not is_patched(family):
        raise RuntimeError(
            f"the {family} attention is not patched: apply the ulysses_attention patch ({how})"
        )


def rank_slice(group: Any, length: int) -> tuple[int, int, int]:
    """``(start, stop, padding)``: rows of ``length`` positions split over ``group``, each
    rank a contiguous slice of ``ceil(length / P)`` positions; this rank's slice is
    ``[start, stop)`` of the rows right-padded by ``padding`` positions to ``P`` slices."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    slice_length = -(-length // size)  # ceil(T / P)
    return rank * slice_length, (rank + 1) * slice_length, slice_length * size - length


def enable_sequence_parallel(actor: ActorLanguage, group: Any) -> None:
    """From now on ``actor(...)`` splits every sequence over ``group``
    (``sequence_parallel_forward``). The forward still runs inside the actor's own call, so
    a strategy's hooks on the actor (fsdp's gathering and gradient reduction) run as before.
    Applies the ``ulysses_attention`` patch to the actor's model family."""
    UlyssesAttention(UlyssesAttention.Config(models=[family_of(actor.base_model)])).apply()
    vars(actor)["forward"] = functools.partial(sequence_parallel_forward, actor, group=group)


def disable_sequence_parallel(actor: ActorLanguage) -> None:
    """Undo ``enable_sequence_parallel``: the actor's own forward again (the patch stays)."""
    vars(actor).pop("forward", None)


def sequence_parallel_forward(
    actor: ActorLanguage,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    group: Any,
    position_ids: torch.Tensor | None = None,
    return_entropy: bool = False,
) -> ActorOutput:
    """``ActorLanguage.forward`` with each sequence split over ``group``: per-token
    log-probs ``[B, T-1]`` fp32 (0 where a token is padding, and with ``position_ids``
    where the next token starts another sequence) on every rank of the group.
    Needs the ``ulysses_attention`` patch applied (``enable_sequence_parallel`` does)."""
    base = actor.base_model
    require_patched(
        base, "model.patches: [ulysses_attention], or enable_sequence_parallel(actor, group)"
    )
    length = sequences.shape[1]
    start, stop, padding = rank_slice(group, length)
    # One column more than the P slices: the target of the last slice's last position.
    tokens = F.pad(sequences, (0, padding + 1))  # [B, P*L + 1]
    mask = attention_mask.to(sequences.device).bool()
    valid = F.pad(mask, (0, padding + 1))
    implementation, dtype = base.config._attn_implementation, base.dtype
    if position_ids is None:
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        context = UlyssesContext(group, whole_sequence_mask(valid[:, :-1], implementation, dtype))
    else:
        packed = position_ids.to(sequences.device).masked_fill(~mask, 0)
        positions = F.pad(packed, (0, padding + 1))  # [B, P*L + 1], 0 on padding
        context = packed_row_context(group, valid[:, :-1], positions[:, :-1], implementation, dtype)
    states = base.get_decoder()(
        input_ids=tokens[:, start:stop],
        position_ids=positions[:, start:stop],
        use_cache=False,
        **{CONTEXT_KWARG: context},
    ).last_hidden_state  # [B, L, H]
    check_segments_read(context.kernel_kwargs, base)
    scored = valid[:, start:stop] & valid[:, start + 1 : stop + 1]  # [B, L]: both tokens real
    if position_ids is not None:
        scored &= positions[:, start + 1 : stop + 1] != 0  # the target starts a sequence
    log_probs, entropy = chunked_token_log_probs(
        states[scored],  # [N, H]
        tokens[:, start + 1 : stop + 1][scored],  # [N]
        output_logits_fn(base),
        chunk_size=actor.config.logprob_chunk_size,
        return_entropy=return_entropy,
    )
    zeros = torch.zeros(scored.shape, dtype=torch.float32, device=sequences.device)

    def whole(values: torch.Tensor) -> torch.Tensor:  # the slices' [B, L] -> [B, T-1]
        local = zeros.masked_scatter(scored, values)
        return gather_sequence(local, group, dim=1)[:, : length - 1]

    return ActorOutput(
        log_probs=whole(log_probs), entropy=whole(entropy) if entropy is not None else None
    )
