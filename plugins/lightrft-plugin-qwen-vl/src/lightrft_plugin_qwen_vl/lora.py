"""LoRA for Qwen-VL models: which linear layers get adapters, and weights with them merged.

The language model's linear layers are adapted; the vision tower (``model.visual``, its
patch merger included) is left out unless asked for, because the vision MLP of Qwen2.5-VL
shares its short names (``gate_proj`` ...) with the decoder's. Targets are therefore given to
peft as full module names.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor (an all-gather); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def merged_state(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.state_dict()`` of a peft-wrapped model's base under the plain HF names, each
    adapted weight with its active adapters' delta added (the model is not modified); on a
    model without adapters, its state dict as it is. Sharded tensors are gathered one by one."""
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    for key, tensor in model.state_dict().items():
        if any(part.startswith("lora_") for part in key.split(".")):
            continue
        name = key.replace(".base_layer.", ".")
        module_name, _, leaf = name.rpartition(".")
        layer = layers.get(module_name)
        tensor = full_tensor(tensor)
        if layer is not None and leaf == "weight" and not layer.merged:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    delta = full_tensor(layer.get_delta_weight(adapter))
                    tensor = tensor + delta.to(tensor.dtype)
        yield name, tensor.detach()
