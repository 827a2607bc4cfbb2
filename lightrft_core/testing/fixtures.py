"""pytest fixtures for the tests of LightRFT and its plugins.

pytest loads this module wherever lightrft-core is installed (its ``pytest11`` entry point
``lightrft``), so a plugin's tests request these fixtures by name with no import and no
``conftest.py``:

- ``tiny_model_dir`` (session): a 2-layer tiny Qwen2 with the byte tokenizer, saved as a
  Hugging Face causal LM folder (the ``5m`` size of ``lightrft_core.models.tiny``).
- ``fast_tiny_model_dir`` (session): the same with one layer and hidden size 64, for
  learning tests of a few seconds on 2 CPU cores.
- ``letter_prompts``: a JSONL file of 32 prompts ``say a<i>:`` for ``LetterReward``
  (``lightrft_core.testing.training``), the easy graded task of the learning tests.

With pytest's plugin autoloading off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), load it with
``-p lightrft`` or ``pytest_plugins = ["lightrft_core.testing.fixtures"]`` in the root
``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .training import TINY_MODEL_SHAPE, build_fast_tiny_model, write_letter_prompts


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer tiny Qwen2 checkpoint with the byte tokenizer (built once per session)."""
    from ..models.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model"), **TINY_MODEL_SHAPE)


@pytest.fixture(scope="session")
def fast_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer tiny Qwen2 checkpoint (hidden 64) with the byte tokenizer."""
    return build_fast_tiny_model(tmp_path_factory.mktemp("fast-tiny-model"))


@pytest.fixture
def letter_prompts(tmp_path: Path) -> Path:
    """32 prompts of the letter task as ``tmp_path / "prompts.jsonl"``."""
    return write_letter_prompts(tmp_path / "prompts.jsonl")
