"""Fixtures of this plugin's tests: a tiny real model folder and a local strategy."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model
from lightrft_core.strategies.local import LocalStrategy


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer tiny Qwen2 (hidden 64) with the byte tokenizer, saved as a Hugging Face
    causal LM folder: fast enough for the learning test on 2 CPU cores."""
    path = tmp_path_factory.mktemp("tiny-ppo-model")
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(
        "5m",
        vocab_size=len(tokenizer),
        seed=0,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def strategy() -> LocalStrategy:
    """The built-in one-process strategy on the CPU."""
    s = LocalStrategy(LocalStrategy.Config(device="cpu", seed=0))
    s.setup_distributed()
    return s
