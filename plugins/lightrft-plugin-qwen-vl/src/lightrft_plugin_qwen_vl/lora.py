"""LoRA for Qwen-VL models: which linear layers get adapters, and weights with them merged.

The language model's linear layers are adapted; the vision tower (``model.visual``, its
patch merger included) is left out unless asked for, because the vision MLP of Qwen2.5-VL
shares its short names (``gate_proj`` ...) with the decoder's. Targets are therefore given to
peft as full module names.
"""

from __future__ import annotations

import torch

#: The prefix of every vision tower parameter (patch embedding, blocks, merger) in the
#: ``*ForConditionalGeneration`` models of Qwen2-VL, Qwen2.5-VL and Qwen3-VL.
VISION_PREFIX = "model.visual."


def is_vision_name(name: str) -> bool:
    """Whether a module or parameter name of the HF model belongs to the vision tower."""
    return f"{name}.".startswith(VISION_PREFIX)


def lora_target_names(
    model: torch.nn.Module, short_names: list[str] | None, *, include_vision: bool
) -> list[str]:
    """Full names of the linear layers LoRA adapts (sorted): those whose last name part is in
    ``short_names`` (every one when ``None``), never the output head, the vision tower's
    only with ``include_vision``."""
    head = model.get_output_embeddings()
    return sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and (include_vision or not is_vision_name(name))
        and (short_names is None or name.rsplit(".", 1)[-1] in short_names)
    )
