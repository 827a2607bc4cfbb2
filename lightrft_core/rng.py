"""The random generators a process draws from (Python's, NumPy's, torch's on the CPU and on
every CUDA device): seeding them, and capturing and restoring their states so that a
resumed run draws exactly what the uninterrupted one would have.

A sharded checkpoint keeps one file of states per rank (``rank_states_file``), written by
``save_rank_states`` and read by ``load_rank_states``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every device's) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Every generator's state (``cuda`` only when CUDA is available); tensors and plain
    values only, so that ``torch.load(..., weights_only=True)`` reads it back."""
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, gauss = legacy
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what ``rng_states`` returned."""
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def rank_states_file(rank: int) -> str:
    """The name of rank ``rank``'s states in a checkpoint folder."""
    return f"rng_rank{rank}.pt"


def save_rank_states(folder: str | Path, rank: int) -> None:
    """Write this process's generator states as rank ``rank``'s file in ``folder``."""
    torch.save(rng_states(), Path(folder) / rank_states_file(rank))


def load_rank_states(folder: str | Path, rank: int) -> None:
    """Restore this process's generators from rank ``rank``'s file in ``folder``."""
    path = Path(folder) / rank_states_file(rank)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {folder} has no RNG states for rank {rank}")
    set_rng_states(torch.load(path, map_location="cpu", weights_only=True))
