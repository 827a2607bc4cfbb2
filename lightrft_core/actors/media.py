"""Media features in the token embeddings, for actors that merge them themselves.

A media actor's trunk reads ``inputs_embeds``: the token embeddings with each encoder's
features (one row per media token) put at the rows' placeholder tokens
(``features_at_placeholders``: the counts are checked, with an error naming both).

A forward without media still runs every encoder, on a stand-in input (``blank_grid_image``,
``silent_clip``), and adds its output times zero (``with_idle_pass``): sharded strategies
gather each shard unit's parameters with a collective as it runs and reduce gradients in the
order backward produces them, so every rank must run the same modules in the same order -- a
text-only micro-batch on one rank while another rank has media would otherwise be a
collective mismatch (a crash, a hang, or gradients summed out of place). The result is
unchanged (``x + 0.0 == x``), the encoder's parameters get zero gradients, and the autograd
graph has the shape of a forward with media.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


def features_at_placeholders(
    embeddings: torch.Tensor,
    slots: torch.Tensor,
    features: torch.Tensor,
    *,
    what: str,
    source: str,
    note: Callable[[], str] | None = None,
) -> torch.Tensor:
    """``embeddings`` ``[B, T, H]`` with ``features`` ``[N, H]`` at the ``slots`` ``[B, T]``
    (the rows' real ``what`` placeholder tokens, in order), which must be exactly N; the
    error says ``source`` (e.g. "the 2 clip(s)") made N tokens, then ``note()``."""
    placeholders = int(slots.sum())
    if placeholders != len(features):
        raise ValueError(
            f"the rows hold {placeholders} {what} placeholder tokens but {source} make "
            f"{len(features)} {what} tokens{note() if note else ''}: the ids must be the "
            "processor's ids for this media"
        )
    return embeddings.masked_scatter(slots[..., None], features.to(embeddings.dtype))


def with_idle_pass(embeddings: torch.Tensor, outputs: Iterable[Any]) -> torch.Tensor:
    """``embeddings`` plus every tensor of an encoder's ``outputs`` (nested in tuples and
    lists) times zero: the same values, reached by the encoder's autograd graph (module
    docstring)."""
    zero = torch.stack([t.float().sum() for t in _tensors(outputs)]).sum() * 0.0
    return embeddings + zero.to(embeddings.dtype)


def blank_grid_image(vision_config: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """The smallest image a patch-grid vision tower takes (``pixel_values`` as flattened
    patches, ``image_grid_thw``): the patches of one merged token (grid ``1 x m x m``, ``m``
    the spatial merge size), all zero."""
    m = vision_config.spatial_merge_size
    width = (
        vision_config.in_channels * vision_config.temporal_patch_size * vision_config.patch_size**2
    )
    return {
        "pixel_values": torch.zeros(m * m, width, device=device),
        "image_grid_thw": torch.tensor([[1, m, m]], device=device),
    }


def silent_clip(mel_bins: int, frames: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One all-zero clip of ``frames`` mel frames (``input_features [1, mel_bins, frames]``),
    every frame marked real (``feature_attention_mask``)."""
    return {
        "input_features": torch.zeros(1, mel_bins, frames, device=device),
        "feature_attention_mask": torch.ones(1, frames, dtype=torch.long, device=device),
    }


def _tensors(values: Iterable[Any]) -> Iterator[torch.Tensor]:
    """Every tensor in nested tuples and lists (e.g. pooled features beside per-layer ones)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _tensors(value)
