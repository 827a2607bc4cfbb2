"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP) and full Hugging Face
exports, both written atomically (``lightrft_core.distributed.atomic_directory_of_all_ranks``,
``lightrft_core.export``). Every function here is collective: all ranks call it.

A checkpoint is a folder::

    dcp/                  model and optimizer, each rank writing its own shards (DCP format)
    training_state.pt     scheduler, client_state (step, data position) -- written by rank 0
    rng_rank<R>.pt        the RNG states of rank R
    world.json            {"world_size": N}: resuming needs the same number of ranks
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist

from lightrft_core.checkpoint import damaged, does_not_fit, recover_directory
from lightrft_core.distributed import atomic_directory_of_all_ranks
from lightrft_core.export import write_hf_folder
from lightrft_core.rng import load_rank_states, rank_states_file, save_rank_states

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

DCP_DIR = "dcp"
STATE_FILE = "training_state.pt"
WORLD_FILE = "world.json"


def _state_dicts(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save_sharded(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    client_state: Mapping[str, Any] | None,
) -> None:
    """Every rank writes its part into one temporary folder beside ``path``, which rank 0
    then swaps in. A crash or an error on any rank leaves the previous checkpoint intact."""
    import torch.distributed.checkpoint as dcp

    rank = dist.get_rank()
    with atomic_directory_of_all_ranks(path) as tmp:
        dcp.save(_state_dicts(model, optimizer), checkpoint_id=str(tmp / DCP_DIR))
        save_rank_states(tmp, rank)
        if rank == 0:
            state = {
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "client_state": dict(client_state or {}),
            }
            torch.save(state, tmp / STATE_FILE)
            (tmp / WORLD_FILE).write_text(json.dumps({"world_size": dist.get_world_size()}))


def load_sharded(
    path: str | Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG states in place; returns
    ``client_state``. The world size must be the one the checkpoint was written with."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    if dist.get_rank() == 0:
        recover_directory(path)
    dist.barrier()
    _check_world_size(path)
    wanted = _state_dicts(model, optimizer)
    _read_shards(path, wanted)
    set_state_dict(
        model,
        optimizer if optimizer is not None else [],
        model_state_dict=wanted["model"],
        optim_state_dict=wanted.get("optimizer", {}),
    )
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise damaged(path, STATE_FILE, exc) from None
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError(f"checkpoint {path} has no scheduler state to restore")
        scheduler.load_state_dict(state["scheduler"])
    try:
        load_rank_states(path, dist.get_rank())
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise damaged(path, rank_states_file(dist.get_rank()), exc) from None
    return dict(state["client_state"])


def _read_shards(path: Path, wanted: dict[str, Any]) -> None:
    """``dcp.load`` into ``wanted``, its errors told as a damaged checkpoint or one written
    for another model."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader = dcp.FileSystemReader(str(path / DCP_DIR))
    try:
        reader.read_metadata()  # read first: DCP would log its failure as a traceback
        dcp.load(wanted, storage_reader=reader)
    except CheckpointException as exc:  # a BaseException holding every rank's error
        cause = next(iter(exc.failures.values()))[0]
        if _missing_or_misshaped(cause):
            raise does_not_fit(path, cause) from None
        raise damaged(path, DCP_DIR, cause) from None
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise damaged(path, DCP_DIR, exc) from None


def _missing_or_misshaped(exc: BaseException) -> bool:
    """Whether DCP's error says the checkpoint lacks a key of the model or holds a tensor of
    another shape (a checkpoint of another model), rather than unreadable files."""
    text = str(exc)
    return "Missing key in checkpoint state_dict" in text or "Size mismatch" in text


def _check_world_size(path: Path) -> None:
    for name in (DCP_DIR, STATE_FILE, WORLD_FILE):
        if not (path / name).exists():
            raise FileNotFoundError(f"no fsdp checkpoint at {path}: {name} is missing")
    try:
        saved = json.loads((path / WORLD_FILE).read_text())["world_size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(path, WORLD_FILE, exc) from None
    if saved != dist.get_world_size():
        raise ValueError(
            f"checkpoint {path} was written by {saved} ranks but this job has "
            f"{dist.get_world_size()}; resume with --nproc-per-node/--nnodes giving {saved} "
            "ranks (or export it with lightrft and start a new run from the export)"
        )


# ---------------------------------------------------------------------- Hugging Face export
def full_state_dict(root: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The unsharded weights of the submodule at ``prefix`` of ``root``, on CPU, on rank 0
    (an empty dict on the others). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    # a module's state dict holds tensors only (torch types its values as any state value)
    state = cast(dict[str, torch.Tensor], get_model_state_dict(root, options=options))
    start = f"{prefix}." if prefix else ""
    return {k[len(start) :]: v for k, v in state.items() if k.startswith(start)}


def plain_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain (unsharded, CPU) transformers model with ``model``'s class and config holding
    ``state``; a peft model is rebuilt with its adapters and merged. Rank 0 only."""
    peft_config = getattr(model, "peft_config", None)
    base = cast("PeftModel", model).get_base_model() if peft_config else model
    base_cls = cast("type[PreTrainedModel]", _original_class(base))
    with torch.device("meta"):
        copy = base_cls._from_config(base.config, dtype=base.dtype)
    if peft_config:
        from peft import get_peft_model

        copy = get_peft_model(copy, peft_config["default"])
    copy.load_state_dict(state, strict=False, assign=True)
    if hasattr(copy, "tie_weights"):
        copy.tie_weights()
    missing = [n for n, p in copy.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"export: no gathered weights for {missing[:5]}")
    if getattr(base, "generation_config", None) is not None:
        copy.generation_config = base.generation_config
    if peft_config:
        copy = copy.merge_and_unload()
    return copy


def _original_class(module: torch.nn.Module) -> type:
    """The user's class of a module that ``fully_shard`` may have re-classed."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    if issubclass(cls, FSDPModule):
        return next(b for b in cls.__mro__[1:] if not issubclass(b, FSDPModule))
    return cls


def export_hf(
    root: torch.nn.Module, prefix: str, model: torch.nn.Module, path: Path, tokenizer: Any
) -> None:
    """Gather the full weights of ``model`` (the submodule ``prefix`` of the prepared
    ``root``) and write a Hugging Face folder on rank 0, atomically."""
    state = full_state_dict(root, prefix)
    if dist.get_rank() == 0:
        write_hf_folder(plain_copy(model, state), path, tokenizer)
    dist.barrier()
