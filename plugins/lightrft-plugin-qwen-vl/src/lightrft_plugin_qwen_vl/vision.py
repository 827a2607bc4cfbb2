"""The vision tower on every forward pass, images or not.

Sharded strategies gather each shard unit's parameters with a collective as the unit runs
(FSDP2's vision blocks) and reduce gradients in the order backward produces them (FSDP's
units, ZeRO-2's buckets): every rank must run the same modules in the same order. A
micro-batch of text-only rows would skip the vision tower on its rank while another rank
runs it -- a collective mismatch (a crash, a hang, or gradients summed out of place).

So a forward without images runs the tower on one blank image and adds its output times zero
to the token embeddings, where image features would go: the result is unchanged
(``x + 0.0 == x``), the tower's parameters get zero gradients, and the autograd graph has
the shape of an image forward (embeddings, then the tower, merged into the embeddings), so
backward reaches the parameters in the same order on every rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def blank_image(vision_config: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """The smallest image the tower takes: the patches of one merged token (grid
    ``1 x m x m``, ``m`` the spatial merge size), all zero."""
    m = vision_config.spatial_merge_size
    width = (
        vision_config.in_channels * vision_config.temporal_patch_size * vision_config.patch_size**2
    )
    return {
        "pixel_values": torch.zeros(m * m, width, device=device),
        "image_grid_thw": torch.tensor([[1, m, m]], device=device),
    }


def idle_vision_pass(model: Any, device: torch.device) -> torch.Tensor:
    """A zero scalar computed through every parameter of ``model``'s vision tower (``model``:
    the transformers ``*Model`` with ``get_image_features``) on a blank image."""
    blank = blank_image(model.config.vision_config, device)
    features = model.get_image_features(
        blank["pixel_values"], blank["image_grid_thw"], return_dict=True
    )
    return sum(t.float().sum() for t in _tensors(features.values())) * 0.0


def with_idle_vision_pass(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` of a text-only forward of ``model`` with ``input_ids`` replaced by their
    embeddings plus the idle vision pass (zero)."""
    rest = dict(inputs)
    ids = rest.pop("input_ids")
    embeddings = model.get_input_embeddings()(ids)  # [B, T, H]
    zero = idle_vision_pass(model, ids.device).to(embeddings.dtype)
    return {**rest, "input_ids": None, "inputs_embeds": embeddings + zero}


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested tuples and lists (pooled features, Qwen3-VL's deepstack)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _tensors(value)
