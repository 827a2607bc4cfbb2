"""Fixtures of the plugin's tests: tiny checkpoints built locally (head_dim 64, which vLLM's
CPU attention needs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model

# before any vllm import: in-process engine (≈3 s start) and a small CPU KV cache
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def write_tiny_checkpoint(path: Path, *, tied: bool, seed: int = 0) -> Path:
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(
        "5m", vocab_size=len(tokenizer), seed=seed, num_hidden_layers=2, tie_word_embeddings=tied
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def untied_model_dir(tmp_path_factory) -> Path:
    """A 2-layer tiny Qwen2 with its own ``lm_head`` (fp32)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-untied"), tied=False)


@pytest.fixture(scope="session")
def tied_model_dir(tmp_path_factory) -> Path:
    """The same with ``lm_head`` tied to the embedding (the tiny models' default)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-tied"), tied=True)
