"""``MultiModalInputs``: the media of one prompt as they travel through the core.

The core never knows a model family: a prompt's media are carried twice, as the user gave
them (``images``: decoded PIL images, ``audios``: mono float32 waveforms at the processor's
sampling rate, each in placeholder order, for engines that run their own processor, e.g.
vLLM) and as the model's processor turned them into tensors (``tensors``:
the processor's outputs besides ``input_ids``/``attention_mask``, e.g. ``pixel_values``
``[patches, D]`` and ``image_grid_thw`` ``[images, 3]`` for Qwen2-VL). Every tensor is
per prompt and concatenable with other prompts' along dim 0 (``collate_modal_inputs``), so
a micro-batch of any rows -- text-only rows included -- is one call of the actor with the
keys it declares (``Actor.get_supported_parameters``).

The prompt's token ids that go with these inputs are the processor's, image placeholders
already expanded: the ids the engine generates from are the ids the trainer scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MultiModalInputs:
    """The media of one prompt (module docstring). ``images``: decoded images in the order
    of their placeholders; ``audios``: 1-D float32 numpy waveforms at the processor's
    sampling rate, in the order of their placeholders. ``tensors``: processor outputs, each
    with the prompt's items along dim 0."""

    images: list[Any] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    audios: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key, value in self.tensors.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                raise ValueError(
                    f"MultiModalInputs.tensors[{key!r}] must be a tensor with the prompt's "
                    f"items along dim 0, got {type(value).__name__}"
                )

    def to(self, device: torch.device | str) -> MultiModalInputs:
        """The same inputs with every tensor on ``device``."""
        moved = {k: v.to(device) for k, v in self.tensors.items()}
        return MultiModalInputs(images=self.images, audios=self.audios, tensors=moved)


def collate_modal_inputs(
    inputs: Sequence[MultiModalInputs | None], keys: frozenset[str] | None = None
) -> dict[str, torch.Tensor]:
    """The model inputs of several prompts (rows in order): each tensor concatenated along
    dim 0 over the rows that have it, trailing dims that differ between rows (e.g. the
    frames of ``input_features``) padded with zeros at the end; rows without media
    (``None``) add nothing. Only ``keys`` when given (the actor's supported parameters).
    Empty when no row has media."""
    parts: dict[str, list[torch.Tensor]] = {}
    for item in inputs:
        if item is None:
            continue
        for key, value in item.tensors.items():
            if keys is None or key in keys:
                parts.setdefault(key, []).append(value)
    return {key: _concatenated(key, values) for key, values in parts.items()}


def _concatenated(key: str, values: list[torch.Tensor]) -> torch.Tensor:
    """``values`` along dim 0, each zero-padded at the end of its trailing dims to the
    largest."""
    if len({value.dim() for value in values}) > 1:
        shapes = ", ".join(str(list(value.shape)) for value in values)
        raise ValueError(f"cannot collate {key!r}: the rows' tensors differ in rank ({shapes})")
    trailing = [max(value.shape[d] for value in values) for d in range(1, values[0].dim())]
    padded = []
    for value in values:
        # F.pad takes (before, after) pairs from the last dim backwards
        widths = [(0, size - value.shape[d + 1]) for d, size in enumerate(trailing)]
        pad = [width for pair in reversed(widths) for width in pair]
        padded.append(torch.nn.functional.pad(value, pad) if any(pad) else value)
    return torch.cat(padded, dim=0)


def modal_summary(inputs: Mapping[str, torch.Tensor]) -> str:
    """``key[shape], ...`` of collated inputs, for error messages."""
    return ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items()) or "none"
