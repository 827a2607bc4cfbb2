"""Packed rows for models with 3-D rotary positions (Qwen2-VL family, Qwen2.5-Omni): each
packed sequence gets the positions its model's ``get_rope_index`` gives it alone, and
attention stays inside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .packing import packed_causal_mask

#: ``rope_index(ids [S, W], mask [S, W]) -> [3, S, W]``: a model's 3-D positions of
#: right-padded rows whose media come in row order.
RopeIndex = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sequence_rope(
    rope_index: RopeIndex,
    sequences: torch.Tensor,
    mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    """The 3-D rotary positions ``[3, R, L]`` of packed rows (a sequence starts where
    ``position_ids`` is 0 on a real token): ``rope_index`` on the sequences as right-padded
    rows of their own, in the order they appear (row by row, left to right: the order of
    their media); 0 on padding."""
    segments = []  # (row, start, length)
    for row in range(sequences.shape[0]):
        starts = ((position_ids[row] == 0) & mask[row]).nonzero().flatten().tolist()
        ends = [*starts[1:], int(mask[row].sum())]
        segments += [(row, start, end - start) for start, end in zip(starts, ends, strict=True)]
    width = max(length for _, _, length in segments)
    ids = sequences.new_zeros((len(segments), width))
    own_mask = torch.zeros_like(ids)
    for index, (row, start, length) in enumerate(segments):
        ids[index, :length] = sequences[row, start : start + length]
        own_mask[index, :length] = 1
    own = rope_index(ids, own_mask)  # [3, S, width]
    out = position_ids.new_zeros((3, *sequences.shape))
    for index, (row, start, length) in enumerate(segments):
        out[:, row, start : start + length] = own[:, index, :length]
    return out


def packed_mrope_inputs(
    attn_implementation: str | None,
    tokens: tuple[str, torch.Tensor],
    mask: torch.Tensor,
    position_ids: torch.Tensor,
    rope: torch.Tensor,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """A Qwen-VL-style text model's inputs for packed rows: ``tokens`` (``("input_ids",
    [R, L])`` or ``("inputs_embeds", [R, L, H])``), the positions ``[4, R, L]`` (the 1-D
    ``position_ids``, from which transformers reads the sequence starts, then the 3-D
    ``rope``) and attention inside each sequence: flash-attention reads the rows as one row
    with no mask; otherwise a block-diagonal mask (boolean for ``sdpa``, additive of
    ``dtype`` for eager)."""
    name, values = tokens
    positions = torch.cat([position_ids[None], rope])  # [4, R, L]
    impl = attn_implementation or ""
    if impl.startswith("flash_attention"):
        return {
            name: values.reshape(1, -1, *values.shape[2:]),
            "attention_mask": None,
            "position_ids": positions.reshape(4, 1, -1),
        }
    mask_dtype = torch.bool if impl == "sdpa" else dtype
    return {
        name: values,
        "attention_mask": packed_causal_mask(position_ids, mask.long(), dtype=mask_dtype),
        "position_ids": positions,
    }
