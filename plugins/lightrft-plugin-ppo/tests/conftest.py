"""Fixtures of this plugin's tests: a tiny real model folder and a local strategy."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightrft_core.strategies.local import LocalStrategy
from lightrft_core.testing.training import build_fast_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer tiny Qwen2 (hidden 64) with the byte tokenizer, saved as a Hugging Face
    causal LM folder: fast enough for the learning test on 2 CPU cores."""
    return build_fast_tiny_model(tmp_path_factory.mktemp("tiny-ppo-model"))


@pytest.fixture
def strategy() -> LocalStrategy:
    """The built-in one-process strategy on the CPU."""
    s = LocalStrategy(LocalStrategy.Config(device="cpu", seed=0))
    s.setup_distributed()
    return s
