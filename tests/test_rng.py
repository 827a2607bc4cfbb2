"""``lightrft_core.rng``: seeding, and a capture/restore round trip of every generator."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lightrft_core.rng import (
    load_rank_states,
    rng_states,
    save_rank_states,
    seed_everything,
    set_rng_states,
)


def draws() -> tuple[float, float, list[float], float]:
    """One draw from each generator (``np.random.randn`` exercises NumPy's cached gauss)."""
    return random.random(), float(np.random.randn()), torch.rand(3).tolist(), random.gauss(0, 1)


def test_the_same_seed_gives_the_same_draws() -> None:
    seed_everything(3)
    first = draws()
    seed_everything(3)
    assert draws() == first
    seed_everything(4)
    assert draws() != first
    seed_everything(2**32 + 3)  # numpy takes the seed modulo 2**32
    assert np.random.rand() == np.random.RandomState(3).rand()


def test_states_round_trip_in_memory() -> None:
    seed_everything(0)
    np.random.randn()  # NumPy now holds a cached gaussian, part of its state
    states = rng_states()
    expected = [draws() for _ in range(3)]
    seed_everything(99)
    draws()
    set_rng_states(states)
    assert [draws() for _ in range(3)] == expected


def test_states_round_trip_through_a_checkpoint_file(tmp_path: Path) -> None:
    seed_everything(1)
    draws()
    save_rank_states(tmp_path, rank=1)
    assert [p.name for p in tmp_path.iterdir()] == ["rng_rank1.pt"]
    expected = draws()
    seed_everything(5)
    load_rank_states(tmp_path, rank=1)  # read with weights_only=True
    assert draws() == expected
    with pytest.raises(FileNotFoundError, match="no RNG states for rank 0"):
        load_rank_states(tmp_path, rank=0)
