"""DeepSpeed checkpoints, swapped in atomically, plus what DeepSpeed does not save.

A checkpoint is a folder written by every rank together::

    deepspeed/mp_rank_00_model_states.pt        module, scheduler, client state (rank 0)
    deepspeed/*zero_pp_rank_<r>*_optim_states.pt  rank r's ZeRO shard (fp32 master weights,
                                                optimizer states)
    rng_rank<r>.pt                              rank r's RNG states (python, numpy, torch)
    lightrft_deepspeed.json                     world size, ZeRO stage, precision

Every rank writes into one temporary folder beside the target, which rank 0 swaps in if
every rank wrote its part (``lightrft_core.distributed.atomic_directory_of_all_ranks``): a
crash or an exception anywhere before the swap leaves the previous checkpoint untouched.
The folders must be on a file system every rank sees (as DeepSpeed's own checkpoints need).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from lightrft_core.checkpoint import damaged, does_not_fit, recover_directory
from lightrft_core.distributed import atomic_directory_of_all_ranks
from lightrft_core.rng import load_rank_states, rank_states_file, save_rank_states

ENGINE_DIR = "deepspeed"
META_FILE = "lightrft_deepspeed.json"
CLIENT_KEY = "lightrft_client_state"  # DeepSpeed's own keys never collide with it
FORMAT_VERSION = 1


def save(
    path: str | Path,
    *,
    engine: Any,
    rank: int,
    world_size: int,
    meta: Mapping[str, Any],
    client_state: Mapping[str, Any] | None,
) -> None:
    """Write a checkpoint of ``engine`` (model, optimizer, scheduler) plus RNG states and
    ``client_state`` to ``path``. Collective. If any rank fails to write its part, every
    rank raises and nothing replaces the previous checkpoint."""
    with atomic_directory_of_all_ranks(path) as tmp:
        engine.save_checkpoint(
            str(tmp),
            tag=ENGINE_DIR,
            client_state={CLIENT_KEY: dict(client_state or {})},
            save_latest=False,
        )
        save_rank_states(tmp, rank)
        if rank == 0:
            info = {"format_version": FORMAT_VERSION, "world_size": world_size, **meta}
            (tmp / META_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no deepspeed checkpoint at {path}: {META_FILE} is missing (a checkpoint of "
            "another strategy cannot be resumed by the deepspeed strategy)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise damaged(path, META_FILE, exc) from None
    if not isinstance(meta, dict):
        raise damaged(path, META_FILE, "not a JSON object")
    return meta


def load(
    path: str | Path,
    *,
    engine: Any,
    rank: int,
    world_size: int,
    load_optimizer: bool,
    load_scheduler: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore ``engine`` (in place) and this rank's RNG states; returns ``(client_state,
    meta)``. Collective."""
    path = Path(path)
    if rank == 0:
        recover_directory(path)
    dist.barrier()
    meta = read_meta(path)
    if meta.get("world_size") != world_size:
        raise ValueError(
            f"checkpoint {path} was saved by {meta.get('world_size')} ranks and this job has "
            f"{world_size}; resume with the same number of processes (torchrun --nproc-per-node)"
        )
    try:
        load_path, client = engine.load_checkpoint(
            str(path),
            tag=ENGINE_DIR,
            load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=load_scheduler,
        )
    except RuntimeError as exc:
        if "Error(s) in loading state_dict" in str(exc):
            raise does_not_fit(path, exc) from None
        raise damaged(path, ENGINE_DIR, exc) from None
    except (EOFError, OSError, pickle.UnpicklingError) as exc:
        raise damaged(path, ENGINE_DIR, exc) from None
    if load_path is None:
        raise damaged(path, ENGINE_DIR, "DeepSpeed found no checkpoint in it")
    try:
        load_rank_states(path, rank)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise damaged(path, rank_states_file(rank), exc) from None
    return dict((client or {}).get(CLIENT_KEY, {})), meta
