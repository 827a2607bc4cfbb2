"""Which parameters are the audio encoder's, and which linear layers LoRA adapts.

"The audio encoder" is the Whisper-style tower (``model.audio_tower``: convolutions,
positions, layers) and the projector into the text width (``model.multi_modal_projector``).
LoRA adapts the language model's linear layers and leaves the audio encoder out unless asked
for; the encoder's attention uses the decoder's short names (``q_proj`` ...), so targets are
given to peft as full module names.
"""

from __future__ import annotations

import torch

#: Name prefixes of the audio encoder's parameters in ``Qwen2AudioForConditionalGeneration``.
AUDIO_PREFIXES = ("model.audio_tower.", "model.multi_modal_projector.")


def is_audio_name(name: str) -> bool:
    """Whether a module or parameter name of the HF model belongs to the audio encoder."""
    return f"{name}.".startswith(AUDIO_PREFIXES)


def lora_target_names(
    model: torch.nn.Module, short_names: list[str] | None, *, include_audio: bool
) -> list[str]:
    """Full names of the linear layers LoRA adapts (sorted): those whose last name part is in
    ``short_names`` (every one when ``None``), never the output head, the audio encoder's
    only with ``include_audio``."""
    head = model.get_output_embeddings()
    return sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and (include_audio or not is_audio_name(name))
        and (short_names is None or name.rsplit(".", 1)[-1] in short_names)
    )
