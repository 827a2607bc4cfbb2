"""pytest fixtures and batch helpers of this plugin. pytest loads this module wherever the
plugin is installed (its ``pytest11`` entry point ``lightrft_qwen_vl``); tests request the
fixtures by name:

- ``tiny_qwen_vl_dir`` (session): a tiny random-weight Qwen2-VL with its processor
  (``tiny.build_tiny_qwen_vl``).
- ``tiny_qwen2_5_vl_dir`` (session): the same for Qwen2.5-VL.
- ``tiny_qwen3_vl_dir`` (session): the same for Qwen3-VL.

``make_vl_batch(path, rows)`` builds right-padded rows with images (solid-colour pictures of
1 to 4 image tokens each) and random responses, for actor tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lightrft_core.testing.media import MediaBatch


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


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-VL folder (model, tokenizer, image processor, chat template)."""
    from .tiny import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen3-vl"), family="qwen3_vl")


COLOURS = ("red", "green", "blue", "yellow", "white", "purple")
#: Image sizes (w, h): 1 to 4 image tokens each with the tiny processor.
SIZES = ((56, 56), (28, 28), (42, 56), (30, 20), (56, 28), (50, 50))


@dataclass(frozen=True)
class VLRow:
    """A prompt with ``images`` images and a response of ``response`` random byte tokens."""

    images: int
    response: int


def make_vl_batch(path: str | Path, rows: list[VLRow], *, seed: int = 0) -> MediaBatch:
    """Rows ``<chat prompt with images><response>``, right-padded with the pad token, built
    with the folder's processor (image placeholders expanded)."""
    import torch
    from PIL import Image

    from lightrft_core.interfaces.multimodal import MultiModalInputs
    from lightrft_core.testing.media import padded_media_batch

    from .processing import load_processor

    processor = load_processor(path)
    g = torch.Generator().manual_seed(seed)
    ids, modal = [], []
    for i, row in enumerate(rows):
        content = [{"type": "image"}] * row.images + [{"type": "text", "text": f"row {i}?"}]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        images = [
            Image.new("RGB", SIZES[(i + k) % len(SIZES)], COLOURS[(i + 2 * k) % len(COLOURS)])
            for k in range(row.images)
        ]
        out = processor(text=[text], images=images or None, return_tensors="pt")
        response = torch.randint(0, 256, (row.response,), generator=g)
        ids.append(torch.cat([out["input_ids"][0], response]))
        tensors = {k: out[k] for k in ("pixel_values", "image_grid_thw") if k in out}
        modal.append(MultiModalInputs(images=images, tensors=tensors) if images else None)
    return padded_media_batch(ids, modal, processor.tokenizer.pad_token_id)
