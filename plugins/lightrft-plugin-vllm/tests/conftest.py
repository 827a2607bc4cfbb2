"""Fixtures of the plugin's tests besides the test kit's: tiny checkpoints built locally
(head_dim 64, which vLLM's CPU attention needs) with and without a tied ``lm_head``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightrft_core.models.tiny import build_tiny_checkpoint
from lightrft_core.testing.training import TINY_MODEL_SHAPE

# before any vllm import: in-process engine (≈3 s start) and a small CPU KV cache
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def untied_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test kit's ``tiny_model_dir`` model (2 layers, fp32) with its own ``lm_head``."""
    path = tmp_path_factory.mktemp("tiny-untied")
    return build_tiny_checkpoint(path, **TINY_MODEL_SHAPE, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tied_model_dir(tiny_model_dir: Path) -> Path:
    """The test kit's ``tiny_model_dir``: ``lm_head`` tied to the embedding (the default)."""
    return tiny_model_dir
