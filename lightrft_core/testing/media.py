"""Right-padded rows with media, for media actor tests (the plugins' ``make_*_batch``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..interfaces.multimodal import MultiModalInputs, collate_modal_inputs


@dataclass
class MediaBatch:
    """Right-padded rows and each row's media (``None`` for a text-only row)."""

    sequences: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor  # [B, T]
    modal: list[MultiModalInputs | None]

    def modal_inputs(self, rows: slice = slice(None)) -> dict[str, Any]:
        """The collated media inputs of ``rows`` (empty when none has media)."""
        return collate_modal_inputs(self.modal[rows])


def padded_media_batch(
    rows: list[torch.Tensor], modal: list[MultiModalInputs | None], pad_id: int
) -> MediaBatch:
    """``rows`` (1-D token ids) right-padded with ``pad_id``, with their media."""
    length = max(len(x) for x in rows)
    sequences = torch.full((len(rows), length), pad_id)
    mask = torch.zeros_like(sequences)
    for r, x in enumerate(rows):
        sequences[r, : len(x)] = x
        mask[r, : len(x)] = 1
    return MediaBatch(sequences, mask, modal)
