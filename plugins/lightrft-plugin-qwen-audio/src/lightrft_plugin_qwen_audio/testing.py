"""pytest fixtures and batch helpers of this plugin. pytest loads this module wherever the
plugin is installed (its ``pytest11`` entry point ``lightrft_qwen_audio``); tests request the
fixtures by name:

- ``tiny_qwen_audio_dir`` (session): a tiny random-weight Qwen2-Audio with its processor
  (``tiny.build_tiny_qwen2_audio``).
- ``tiny_qwen_omni_dir`` (session): a tiny random-weight Qwen2.5-Omni thinker with its
  processor (``tiny_omni.build_tiny_qwen_omni``).

``tone(seconds, hz)`` makes a test clip; ``make_audio_batch(path, rows)`` builds right-padded
rows with clips and random responses, for actor tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from lightrft_core.testing.media import MediaBatch


@pytest.fixture(scope="session")
def tiny_qwen_audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-Audio folder (model, tokenizer, feature extractor, chat template)."""
    from .tiny import build_tiny_qwen2_audio

    return build_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny-qwen2-audio"))


@pytest.fixture(scope="session")
def tiny_qwen_omni_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-Omni thinker folder (model, tokenizer, image processor, feature
    extractor, chat template)."""
    from .tiny_omni import build_tiny_qwen_omni

    return build_tiny_qwen_omni(tmp_path_factory.mktemp("tiny-qwen-omni"))


def tone(seconds: float, hz: float, *, sampling_rate: int = 16_000) -> Any:
    """A sine clip of ``seconds`` at ``hz``, amplitude 0.5: float32 ``[samples]``."""
    import numpy as np

    t = np.arange(round(seconds * sampling_rate)) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


#: Clip lengths (seconds) and pitches (Hz) the rows cycle through: 13 to 50 audio tokens.
SECONDS = (1.0, 0.5, 1.5, 2.0, 0.75)
PITCHES = (220.0, 440.0, 330.0, 660.0, 880.0)


@dataclass(frozen=True)
class AudioRow:
    """A prompt with ``audios`` clips and a response of ``response`` random byte tokens."""

    audios: int
    response: int


def make_audio_batch(path: str | Path, rows: list[AudioRow], *, seed: int = 0) -> MediaBatch:
    """Rows ``<chat prompt with clips><response>``, right-padded with the pad token, built
    with the folder's processor (``<|AUDIO|>`` placeholders expanded)."""
    import torch
    from transformers import AutoProcessor

    from lightrft_core.interfaces.multimodal import MultiModalInputs
    from lightrft_core.testing.media import padded_media_batch

    processor = AutoProcessor.from_pretrained(path)
    rate = processor.feature_extractor.sampling_rate
    g = torch.Generator().manual_seed(seed)
    ids, modal = [], []
    for i, row in enumerate(rows):
        content = [{"type": "audio"}] * row.audios + [{"type": "text", "text": f"row {i}?"}]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        clips = [
            tone(SECONDS[(i + k) % len(SECONDS)], PITCHES[(i + 2 * k) % len(PITCHES)])
            for k in range(row.audios)
        ]
        out = processor(text=[text], audio=clips or None, sampling_rate=rate, return_tensors="pt")
        response = torch.randint(0, 256, (row.response,), generator=g)
        ids.append(torch.cat([out["input_ids"][0], response]))
        tensors = {k: out[k] for k in ("input_features", "feature_attention_mask") if k in out}
        modal.append(MultiModalInputs(tensors=tensors, audios=clips) if clips else None)
    return padded_media_batch(ids, modal, processor.tokenizer.pad_token_id)
