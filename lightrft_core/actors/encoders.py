"""A model's media encoders (vision tower, audio encoder, their projectors), found by the
name prefixes of their parameters: freezing them, and leaving them out of LoRA.

An actor declares its encoders' prefixes in the Hugging Face model's names (e.g.
``("model.audio_tower.", "model.multi_modal_projector.")``); targets are given to peft as
full module names, since an encoder's layers often share their short names (``q_proj``,
``gate_proj`` ...) with the decoder's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def is_under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether a module or parameter name lies under one of ``prefixes`` (each ending in a
    dot: ``"model.visual."`` holds ``model.visual`` and ``model.visual.blocks.0``)."""
    return f"{name}.".startswith(tuple(prefixes))


def freeze_under(model: torch.nn.Module, prefixes: Sequence[str]) -> None:
    """Train no parameter of ``model`` under ``prefixes``."""
    for name, parameter in model.named_parameters():
        if is_under(name, prefixes):
            parameter.requires_grad_(False)


def lora_linear_names(
    model: Any, short_names: list[str] | None, *, exclude: Sequence[str] = ()
) -> list[str]:
    """Full names of the linear layers LoRA adapts (sorted): those whose last name part is in
    ``short_names`` (every one when ``None``), never the output head nor a layer under the
    prefixes ``exclude``. A ``ValueError`` when none is left."""
    head = model.get_output_embeddings()
    names = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and not is_under(name, exclude)
        and (short_names is None or name.rsplit(".", 1)[-1] in short_names)
    )
    if not names:
        raise ValueError(f"no linear layer matches lora_target_modules={short_names!r}")
    return names
