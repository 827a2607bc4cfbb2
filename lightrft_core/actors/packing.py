"""Sample packing: several sequences in one row, attention kept inside each sequence.

A packed row holds sequences back to back; ``position_ids`` restart at 0 where a new
sequence starts and padding at the end of a row has ``attention_mask == 0``. Per-token
outputs follow the actor alignment (``out[:, t]`` predicts token ``t + 1``), so a sequence
of ``n`` tokens starting at column ``s`` owns ``out[row, s : s + n - 1]``; the column
``s + n - 1`` predicts the first token of the next sequence and belongs to none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..interfaces import ActorOutput
from .varlen_attention import check_segments_read, packed_text_inputs


@dataclass(frozen=True)
class PackedSpan:
    """Where one sequence lies in a packed batch: ``row``, first column ``start``, ``length``."""

    row: int
    start: int
    length: int


@dataclass
class PackedBatch:
    """The tensors ``Actor.forward`` takes, plus where each input sequence went."""

    sequences: torch.Tensor  # [R, L] int64
    attention_mask: torch.Tensor  # [R, L] int64, 0 on row-end padding
    position_ids: torch.Tensor  # [R, L] int64, restart at 0 per sequence, 0 on padding
    spans: list[PackedSpan]  # one per input sequence, in input order


def pack_sequences(
    sequences: Sequence[torch.Tensor],
    max_tokens_per_row: int | None = None,
    *,
    pad_token_id: int = 0,
    next_fit: bool = False,
) -> PackedBatch:
    """Pack 1-D token tensors into rows of at most ``max_tokens_per_row`` tokens.

    First-fit in input order (a sequence goes into the first row with room), or with
    ``next_fit`` into the last row or a new one (the sequences then appear row by row in
    input order); ``None`` puts everything in one row. Rows are right-padded to the longest.
    """
    if not sequences:
        raise ValueError("pack_sequences needs at least one sequence")
    lengths = [int(s.numel()) for s in sequences]
    if any(n == 0 for n in lengths):
        raise ValueError("pack_sequences got an empty sequence")
    capacity = sum(lengths) if max_tokens_per_row is None else max_tokens_per_row
    if max(lengths) > capacity:
        raise ValueError(
            f"a sequence of {max(lengths)} tokens does not fit max_tokens_per_row={capacity}"
        )
    row_used: list[int] = []
    spans: list[PackedSpan] = []
    for n in lengths:
        open_rows = range(max(len(row_used) - 1, 0) if next_fit else 0, len(row_used))
        row = next((r for r in open_rows if row_used[r] + n <= capacity), None)
        if row is None:
            row = len(row_used)
            row_used.append(0)
        spans.append(PackedSpan(row, row_used[row], n))
        row_used[row] += n

    rows, width = len(row_used), max(row_used)
    device = sequences[0].device
    tokens = torch.full((rows, width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    positions = torch.zeros((rows, width), dtype=torch.long, device=device)
    # every token placed at once: one index per token, not a few tensor ops per sequence
    row_index, col_index, offset = span_token_index(spans, lengths, device)
    flat = torch.cat([seq.reshape(-1) for seq in sequences]).to(device=device, dtype=torch.long)
    tokens[row_index, col_index] = flat
    mask[row_index, col_index] = 1
    positions[row_index, col_index] = offset
    return PackedBatch(tokens, mask, positions, spans)


def span_token_index(
    spans: Sequence[PackedSpan], counts: Sequence[int], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed ``(row, column)`` of the first ``counts[i]`` tokens of each span, spans one
    after the other, and each token's offset in its span (``[sum(counts)]`` each)."""
    count = torch.tensor(counts, dtype=torch.long)
    span_rows = torch.tensor([s.row for s in spans], dtype=torch.long)
    span_starts = torch.tensor([s.start for s in spans], dtype=torch.long)
    first = count.cumsum(0) - count  # where each span's tokens begin in the flat order
    offset = torch.arange(int(count.sum())) - first.repeat_interleave(count)
    rows = span_rows.repeat_interleave(count)
    cols = span_starts.repeat_interleave(count) + offset
    return rows.to(device), cols.to(device), offset.to(device)


def unpack_per_token(values: torch.Tensor, spans: Sequence[PackedSpan]) -> list[torch.Tensor]:
    """Per-sequence slices ``[length - 1]`` of packed per-token outputs ``values [R, L-1]``."""
    return [values[s.row, s.start : s.start + s.length - 1] for s in spans]


def packed_causal_mask(
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    dtype: torch.dtype = torch.bool,
) -> torch.Tensor:
    """A block-diagonal causal mask ``[B, 1, T, T]`` for packed rows.

    A new sequence starts wherever ``position_ids`` is 0. Query ``i`` may see key ``j`` when
    ``j <= i``, both lie in the same sequence, and key ``j`` is a real token; a padding query
    sees itself, so no row of the mask is empty. ``dtype=torch.bool`` gives True = attend
    (SDPA); a floating dtype gives an additive mask of 0 and the dtype's minimum (eager).
    """
    real = attention_mask.bool()  # [B, T]
    segment = (position_ids == 0).long().cumsum(-1)  # [B, T], one id per sequence
    length = position_ids.shape[-1]
    idx = torch.arange(length, device=position_ids.device)
    causal = idx[None, :] <= idx[:, None]  # [T, T]: key j <= query i
    same = segment[:, :, None] == segment[:, None, :]  # [B, T, T]
    allowed = causal & same & real[:, None, :]  # [B, T, T]
    allowed |= torch.eye(length, dtype=torch.bool, device=idx.device)
    allowed = allowed[:, None]  # [B, 1, T, T]
    if dtype == torch.bool:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=idx.device)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=idx.device)
    return torch.where(allowed, zero, blocked)


def pack_padded_rows(
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    one_row: bool = False,
    keep_order: bool = False,
    pad_token_id: int = 0,
) -> PackedBatch:
    """Pack the real tokens of right-padded rows ``[B, T]``: longest first, first fit, into
    rows as wide as the longest sequence, or all into ``one_row`` (flash-attention's
    variable-length path needs no padding at all). ``keep_order``: in input order, next
    fit, so the sequences appear row by row in input order (media collated by rows stay in
    step). ``spans`` follow the input rows."""
    lengths = attention_mask.sum(-1).tolist()  # [B]
    order = list(range(len(lengths)))
    if not keep_order:
        order.sort(key=lambda i: -lengths[i])
    packed = pack_sequences(
        [sequences[i, : lengths[i]] for i in order],
        None if one_row else max(lengths),
        pad_token_id=pad_token_id,
        next_fit=keep_order,
    )
    spans: list[PackedSpan | None] = [None] * len(order)
    for i, span in zip(order, packed.spans, strict=True):
        spans[i] = span
    packed.spans = [s for s in spans if s is not None]
    return packed


def unpack_to_padded(values: torch.Tensor, spans: Sequence[PackedSpan], width: int) -> torch.Tensor:
    """Packed per-token outputs ``[R, L-1]`` back in the right-padded layout ``[B, width]``
    (row ``i`` holds its sequence's ``length - 1`` outputs from column 0, zeros after);
    differentiable."""
    outputs = [span.length - 1 for span in spans]
    rows, cols, target_cols = span_token_index(spans, outputs, values.device)
    targets = torch.arange(len(spans)).repeat_interleave(torch.tensor(outputs, dtype=torch.long))
    out = values.new_zeros((len(spans), width))
    return out.index_put((targets.to(values.device), target_cols), values[rows, cols])


def packed_model_inputs(
    attn_implementation: str | None, packed: PackedBatch, dtype: torch.dtype
) -> dict[str, Any]:
    """A transformers text model's inputs (``input_ids``, ``attention_mask``,
    ``position_ids`` ...) for ``packed`` with attention confined to each sequence.
    Flash-attention (one row only: transformers reads the sequence starts from
    ``position_ids`` when there is no mask and the batch has one row) gets no mask; ``sdpa``
    on one row the variable-length path (``varlen_attention.py``: no mask, one SDPA call per
    run of equal-length sequences), on several rows a boolean block-diagonal mask; other
    kernels (eager) an additive one of ``dtype``."""
    impl = attn_implementation or ""
    rows = packed.sequences.shape[0]
    if impl == "sdpa" and rows == 1:
        return packed_text_inputs(packed.sequences, packed.attention_mask, packed.position_ids)
    inputs: dict[str, Any] = {
        "input_ids": packed.sequences,
        "position_ids": packed.position_ids,
    }
    if impl.startswith("flash_attention"):
        if rows != 1:
            raise ValueError("flash-attention reads packed sequences from a single row")
        inputs["attention_mask"] = None
        return inputs
    mask_dtype = torch.bool if impl == "sdpa" else dtype
    inputs["attention_mask"] = packed_causal_mask(
        packed.position_ids, packed.attention_mask, dtype=mask_dtype
    )
    return inputs


def packs_into_one_row(hf_model: Any, *, text_only: bool = True) -> bool:
    """Whether packed sequences go into one row (no padding at all) for a transformers model:
    with flash-attention, and with SDPA for a text-only model (the variable-length path,
    ``varlen_attention.py``). Otherwise (eager, or SDPA on a model with media, whose packed
    attention is a block-diagonal mask, quadratic in the row width) rows are as wide as the
    longest sequence."""
    impl = str(hf_model.config._attn_implementation or "")
    return impl.startswith("flash_attention") or (impl == "sdpa" and text_only)


def packed_actor_forward(
    actor: Callable[..., ActorOutput],
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    one_row: bool = False,
    return_entropy: bool = False,
    **modal_inputs: Any,
) -> ActorOutput:
    """``actor(sequences, attention_mask, **modal_inputs)`` computed on packed rows
    (``pack_padded_rows``; in input order when there are media, collated by rows),
    returned in the right-padded layout ``[B, T-1]`` the caller gave: the same log-probs
    and entropies, less padding to compute."""
    packed = pack_padded_rows(
        sequences, attention_mask, one_row=one_row, keep_order=bool(modal_inputs)
    )
    out = actor(
        packed.sequences,
        packed.attention_mask,
        position_ids=packed.position_ids,
        return_entropy=return_entropy,
        **modal_inputs,
    )
    width = sequences.shape[1] - 1
    entropy = None if out.entropy is None else unpack_to_padded(out.entropy, packed.spans, width)
    return ActorOutput(unpack_to_padded(out.log_probs, packed.spans, width), entropy)


def packed_classifier_scores(
    prepared: torch.nn.Module,
    classifier: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    one_row: bool = False,
) -> torch.Tensor:
    """A transformers sequence classifier's scores ``[B, H]`` of right-padded rows, computed
    on packed rows. ``prepared`` is the strategy's module around ``classifier`` (called, so
    sharded weights are gathered as in any forward); the score layer (``classifier.score``)
    applies to every position and its output is read, as the classifier pools, at each
    sequence's last token that is not ``config.pad_token_id`` (its first token when every
    token is)."""
    pad_token_id = classifier.config.pad_token_id
    if pad_token_id is None:
        raise ValueError("a packed sequence classifier needs config.pad_token_id (its pooling)")
    packed = pack_padded_rows(input_ids, attention_mask, one_row=one_row, pad_token_id=pad_token_id)
    inputs = packed_model_inputs(classifier.config._attn_implementation, packed, classifier.dtype)
    captured: list[torch.Tensor] = []
    hook = classifier.score.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        prepared(**inputs)
    finally:
        hook.remove()
    check_segments_read(inputs, classifier)
    per_token = captured[0]  # [R, L, H]
    rows, cols = [], []
    for span in packed.spans:
        tokens = packed.sequences[span.row, span.start : span.start + span.length]
        kept = (tokens != pad_token_id).nonzero()
        rows.append(span.row)
        cols.append(span.start + (int(kept[-1]) if len(kept) else 0))
    device = per_token.device
    return per_token[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
