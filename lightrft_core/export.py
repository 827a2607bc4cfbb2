"""Writing a trained model as a Hugging Face folder, the last step of every strategy's
``export_hf`` (a sharded strategy gathers the full weights first)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_directory


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model to export: peft adapters merged into a deep copy (the
    training model is never touched); any other model is returned as it is."""
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        peft_model: Any = copy.deepcopy(model)
        return peft_model.merge_and_unload()
    return model


def check_exportable(model: torch.nn.Module) -> None:
    """Refuse a model that is not a transformers model (one with ``save_pretrained``); a
    sharded strategy calls it on every rank before gathering anything."""
    if not hasattr(model, "save_pretrained"):
        raise TypeError(
            f"export_hf needs a transformers model (with save_pretrained), "
            f"got {type(model).__name__}"
        )


def write_hf_folder(
    model: torch.nn.Module,
    path: str | Path,
    tokenizer: Any = None,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """``model.save_pretrained`` (with ``state_dict`` when given) and the tokenizer's, into
    a folder swapped in atomically. ``model`` must be a transformers model."""
    check_exportable(model)
    pretrained: Any = model
    with atomic_directory(path) as tmp:
        if state_dict is None:
            pretrained.save_pretrained(tmp)
        else:
            pretrained.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
