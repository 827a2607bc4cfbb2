"""pytest fixtures of this plugin, loaded wherever it is installed (its ``pytest11`` entry
point ``lightrft_qwen_vl``); tests request them by name:

- ``tiny_qwen_vl_dir`` (session): a tiny random-weight Qwen2-VL with its processor
  (``tiny.build_tiny_qwen_vl``).
- ``tiny_qwen2_5_vl_dir`` (session): the same for Qwen2.5-VL.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_qwen_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-VL folder (model, tokenizer, image processor, chat template)."""
    from .tiny import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"), family="qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL folder (model, tokenizer, image processor, chat template)."""
    from .tiny import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), family="qwen2_5_vl")
