"""Fixtures of the plugin's tests: the tiny model the core's tests use, built locally."""

from __future__ import annotations

import pytest

from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer tiny Qwen2 checkpoint with the byte tokenizer (as ``tests/conftest.py``)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model("5m", vocab_size=len(tokenizer), seed=0, num_hidden_layers=2)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
