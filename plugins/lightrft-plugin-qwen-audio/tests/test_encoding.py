"""The core's prompt encoding with the tiny Qwen2-Audio processor: a media output whose shape
happens to equal the token ids' is kept, and a clip longer than the feature extractor's window
(2 s here) is a row problem, not cut silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import soundfile

from lightrft_core.config.schema import DataConfig
from lightrft_core.data import DataError, PromptDataset
from lightrft_core.data.audio import AudioOptions, load_audio, processor_audio_options
from lightrft_core.data.encoding import PromptEncoder
from lightrft_core.data.media import RowProblem
from lightrft_plugin_qwen_audio.testing import tone
from lightrft_plugin_qwen_audio.tiny import FRAMES

RATE = 16_000


@pytest.fixture(scope="module")
def processor(tiny_qwen_audio_dir: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_qwen_audio_dir)


def test_a_feature_mask_as_long_as_the_prompt_is_kept(processor: Any) -> None:
    """One 1 s clip (25 audio tokens) and text making the prompt exactly 200 tokens: the
    ``feature_attention_mask`` ``[1, 200]`` has the shape of the ids and is still media."""
    encoder = PromptEncoder(processor.tokenizer, processor=processor)
    clip = tone(1.0, 440.0)
    base = len(encoder.encode({"prompt": "", "audios": [clip]}).ids)
    encoded = encoder.encode({"prompt": "a" * (FRAMES - base), "audios": [clip]})  # 1 byte each
    assert len(encoded.ids) == FRAMES
    assert encoded.multimodal is not None
    tensors = encoded.multimodal.tensors
    assert set(tensors) == {"input_features", "feature_attention_mask"}
    assert tuple(tensors["feature_attention_mask"].shape) == (1, FRAMES)
    assert tensors["feature_attention_mask"].sum().item() == 100  # 1 s of 10 ms frames


def test_the_window_comes_from_the_feature_extractor(processor: Any) -> None:
    # chunk_length 2 s at 16 kHz
    assert processor_audio_options(processor, 30.0) == AudioOptions(RATE, 30.0, 2 * RATE)
    assert processor_audio_options(processor.tokenizer, 30.0) is None


def test_a_clip_longer_than_the_window_is_refused(tmp_path: Path) -> None:
    options = AudioOptions(RATE, 30.0, 2 * RATE)
    # exactly the window passes, from 16 kHz and resampled from 22.05 kHz (44100 -> 32000)
    assert load_audio(tone(2.0, 440.0), options).shape == (2 * RATE,)
    soundfile.write(tmp_path / "two.wav", tone(2.0, 440.0, sampling_rate=22_050), 22_050)
    assert load_audio(tmp_path / "two.wav", options).shape == (2 * RATE,)
    with pytest.raises(ValueError) as info:
        load_audio(tone(2.5, 440.0), options)
    assert str(info.value) == (
        "the audio is 2.50 s long, over the 2 s window of the processor's feature extractor "
        "(its chunk_length), which would cut it; cut or split the clip"
    )
    # data.max_audio_seconds is checked first, on the length before resampling
    with pytest.raises(ValueError, match=r"over data\.max_audio_seconds=1;"):
        load_audio(tone(2.5, 440.0), AudioOptions(RATE, 1.0, 2 * RATE))


def _rows(folder: Path) -> str:
    for name, seconds in (("short", 1.0), ("long", 3.0)):
        soundfile.write(folder / f"{name}.wav", tone(seconds, 440.0), RATE)
    rows = [
        {"prompt": "a", "answer": "1", "audios": ["short.wav"]},
        {"prompt": "b", "answer": "2", "audios": ["short.wav", "long.wav"]},
        {"prompt": "c", "answer": "3", "audios": "short.wav"},
    ]
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_rows_with_a_clip_over_the_window_fail_or_are_skipped_and_counted(
    tmp_path: Path, processor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source = _rows(tmp_path)
    expected = f"{source}:2: audios[1]: the audio is 3.00 s long, over the 2 s window"
    with pytest.raises(DataError) as info:
        PromptDataset.from_source(source, processor.tokenizer, DataConfig(), processor=processor)
    assert str(info.value).startswith(expected)
    with caplog.at_level(logging.WARNING, logger="lightrft.data"):
        data = PromptDataset.from_source(
            source, processor.tokenizer, DataConfig(skip_malformed=True), processor=processor
        )
    assert [item.label for item in data] == ["1", "3"]
    assert data.num_skipped == 1
    assert expected in caplog.text


def test_the_row_problem_is_skippable(processor: Any) -> None:
    encoder = PromptEncoder(processor.tokenizer, processor=processor)
    with pytest.raises(RowProblem) as info:
        encoder.encode({"prompt": "x", "audios": [tone(2.01, 440.0)]})
    assert info.value.skippable
    assert str(info.value).startswith("audios[0]: the audio is 2.01 s long, over the 2 s")
