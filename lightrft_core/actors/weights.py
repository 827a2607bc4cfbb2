"""The full weights of a (possibly sharded, possibly LoRA-adapted) Hugging Face model under
its plain names: what an actor's ``named_weights_for_sync`` gives an inference engine."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor (an all-gather); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _lora_layers(model: torch.nn.Module) -> dict[str, Any]:
    """``model``'s peft LoRA layers by module name (none when peft was never imported: a
    model with adapters has imported it)."""
    if "peft" not in sys.modules:
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.state_dict()`` under the plain Hugging Face names, each adapted weight with its
    active adapters' deltas added (the model is not modified; adapter tensors are not
    listed). Sharded tensors are gathered one at a time: a collective, every rank iterates
    to the end. ``model``: the transformers model (inside peft's wrapper: its base model)."""
    layers = _lora_layers(model)
    for key, tensor in model.state_dict().items():
        if any(part.startswith("lora_") for part in key.split(".")):
            continue
        name = key.replace(".base_layer.", ".")
        module_name, _, leaf = name.rpartition(".")
        layer = layers.get(module_name)
        tensor = full_tensor(tensor)
        if layer is not None and leaf == "weight" and not layer.merged:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A or adapter in layer.lora_embedding_A:
                    delta = full_tensor(layer.get_delta_weight(adapter))
                    tensor = tensor + delta.to(tensor.dtype)
        yield name, tensor.detach()
