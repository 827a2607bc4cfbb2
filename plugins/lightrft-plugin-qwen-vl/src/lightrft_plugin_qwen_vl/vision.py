"""The vision tower on every forward pass, images or not.

A micro-batch of text-only rows runs the tower on one blank image and adds its output times
zero to the token embeddings (``lightrft_core/actors/media.py``: every rank of a sharded
strategy must run the same modules in the same order; the log-probs are unchanged and the
tower's parameters get zero gradients).
"""

from __future__ import annotations

from typing import Any

from lightrft_core.actors.media import blank_grid_image, with_idle_pass


def with_idle_vision_pass(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` of a text-only forward of ``model`` (the transformers ``*Model`` with
    ``get_image_features``) with ``input_ids`` replaced by their embeddings plus the vision
    tower's output on a blank image times zero."""
    rest = dict(inputs)
    ids = rest.pop("input_ids")
    embeddings = model.get_input_embeddings()(ids)  # [B, T, H]
    blank = blank_grid_image(model.config.vision_config, ids.device)
    features = model.get_image_features(
        blank["pixel_values"], blank["image_grid_thw"], return_dict=True
    )
    return {
        **rest,
        "input_ids": None,
        "inputs_embeds": with_idle_pass(embeddings, features.values()),
    }
