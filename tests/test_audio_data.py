"""Rows with audio: reading each audio source (wav, flac, ogg, bytes, datasets values,
arrays) as mono float32 at the feature extractor's rate, finding audio in a row (column and
message parts), the errors that name file, line and key, skipping, the processor encoding,
collation, SFT and preference rows, and ``lightrft generate --audio``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from typer.testing import CliRunner

from lightrft_core.config.schema import DataConfig
from lightrft_core.data import DataError, PromptDataset, SFTDataset
from lightrft_core.data.audio import (
    AudioOptions,
    AudioSupportMissing,
    load_audio,
    processor_sampling_rate,
)
from lightrft_core.data.encoding import PromptEncoder
from lightrft_core.data.media import RowProblem, has_audio, prompt_media
from lightrft_core.data.preferences import PreferenceDataset
from lightrft_core.interfaces.multimodal import MultiModalInputs, collate_modal_inputs
from lightrft_core.models.tiny import build_byte_tokenizer

RATE = 16_000
AT_16K = AudioOptions(RATE)


def sine(seconds: float, hz: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(spectrum.argmax())])


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def write_clip(path: Path, seconds: float = 0.5, hz: float = 440.0, rate: int = RATE) -> Path:
    soundfile.write(path, sine(seconds, hz, rate), rate)
    return path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def processor(tiny_qwen_audio_dir: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_qwen_audio_dir)


# ---------------------------------------------------------------------- audio sources
@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg"])
def test_files_are_read_mixed_down_and_resampled(tmp_path: Path, suffix: str) -> None:
    # 0.5 s of a 440 Hz sine at 22050 Hz in both channels: 11025 samples -> 8000 at 16 kHz
    clip = sine(0.5, 440.0, 22_050)
    soundfile.write(tmp_path / f"a.{suffix}", np.stack([clip, clip], axis=1), 22_050)
    audio = load_audio(f"a.{suffix}", AT_16K, base_dir=tmp_path)
    assert audio.dtype == np.float32 and audio.shape == (8000,)
    assert peak_hz(audio, RATE) == 440.0  # 2 Hz bins over 0.5 s
    assert 0.4 < float(np.abs(audio).max()) < 0.6


def test_every_audio_source(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "a.wav", 0.25, 1000.0, 8000)  # 2000 samples at 8 kHz
    at_16k = sine(0.25, 1000.0, RATE)
    sources = {
        "path": str(path),
        "bytes": path.read_bytes(),
        "datasets bytes": {"bytes": path.read_bytes(), "path": None},
        "datasets path": {"bytes": None, "path": "a.wav"},
        "datasets array": {"array": sine(0.25, 1000.0, 8000), "sampling_rate": 8000},
    }
    for name, value in sources.items():
        audio = load_audio(value, AT_16K, base_dir=tmp_path)
        assert audio.shape == (4000,), name
        assert peak_hz(audio, RATE) == 1000.0, name
    # an array is at the feature extractor's rate already: kept as it is
    np.testing.assert_array_equal(load_audio(at_16k, AT_16K), at_16k)
    # channels [samples, channels] are averaged; integers scaled to [-1, 1]
    stereo = np.array([[0.5, 0.1], [-0.2, 0.0]], dtype=np.float64)
    np.testing.assert_allclose(load_audio(stereo, AT_16K), [0.3, -0.1], rtol=1e-6)
    ints = np.array([16384, -32768], dtype=np.int16)
    np.testing.assert_array_equal(load_audio(ints, AT_16K), [0.5, -1.0])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bad.wav", "cannot read 'bad.wav': not an audio file soundfile can decode"),
        ("missing.wav", "cannot read 'missing.wav': no such file"),
        ("https://x.org/a.wav", "cannot read 'https://x.org/a.wav': URLs are not fetched"),
        (b"RIFF1234", "cannot decode 8 bytes: not an audio file soundfile can decode"),
        (np.zeros(0, np.float32), "empty audio (0 samples)"),
        (np.array([0.1, np.nan], np.float32), "the audio holds NaN or infinite samples"),
        (np.zeros((2, 2, 2)), "an audio array must be 1-D or [samples, channels]"),
        ({"array": [0.1], "sampling_rate": 0}, "cannot convert the sampling rate 0"),
        ({"array": [0.1], "sampling_rate": "fast"}, "cannot convert the sampling rate 'fast'"),
        ({"array": [0.1]}, "the datasets Audio value has an array but no sampling_rate"),
        ({"path": None}, "the datasets Audio value has no array, bytes or path"),
        (3, "expected a local file path (wav, flac, ogg)"),
    ],
)
def test_unreadable_audio_says_why(tmp_path: Path, value: Any, message: str) -> None:
    (tmp_path / "bad.wav").write_bytes(b"RIFF but not a wave file")
    with pytest.raises(ValueError) as info:
        load_audio(value, AT_16K, base_dir=tmp_path)
    assert str(info.value).startswith(message)


def test_empty_file_and_too_long_audio(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    with pytest.raises(ValueError, match=r"^empty audio \(0 samples\)$"):
        load_audio(tmp_path / "empty.wav", AT_16K)
    long = write_clip(tmp_path / "long.wav", 2.5)
    with pytest.raises(ValueError) as info:
        load_audio(long, AudioOptions(RATE, max_seconds=2.0))
    assert str(info.value) == (
        "the audio is 2.5 s long, over data.max_audio_seconds=2; cut it or raise the limit"
    )
    assert load_audio(long, AudioOptions(RATE, max_seconds=None)).shape == (40_000,)


def test_missing_libraries_name_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "soxr", None)  # import soxr raises ImportError
    with pytest.raises(AudioSupportMissing) as info:
        load_audio({"array": [0.1, 0.2], "sampling_rate": 8000}, AT_16K)
    assert str(info.value) == (
        "reading audio needs soundfile and soxr (soxr is missing): "
        "pip install 'lightrft-core[audio]'"
    )
    row = {"prompt": "x", "audios": "a.wav"}
    with pytest.raises(RowProblem) as problem:  # not the row's fault: never skipped
        prompt_media(row, input_key="prompt", image_key="images", audio=AT_16K)
    assert problem.value.key == "audios[0]" and not problem.value.skippable


# ---------------------------------------------------------------------- audio in a row
def test_column_audio_leads_the_first_user_message_after_images(tmp_path: Path) -> None:
    write_clip(tmp_path / "a.wav")
    Image.new("RGB", (4, 4)).save(tmp_path / "p.png")
    row = {"prompt": "what?", "audios": ["a.wav", "a.wav"], "images": "p.png"}
    media = prompt_media(
        row, input_key="prompt", image_key="images", audio=AT_16K, base_dir=tmp_path
    )
    assert media.prompt == [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "audio"},
                {"type": "audio"},
                {"type": "text", "text": "what?"},
            ],
        }
    ]
    assert len(media.images) == 1 and [a.shape for a in media.audios] == [(8000,), (8000,)]


def test_message_parts_hold_audio_or_take_it_from_the_column(tmp_path: Path) -> None:
    write_clip(tmp_path / "low.wav", hz=220.0)
    write_clip(tmp_path / "high.wav", hz=880.0)
    prompt = [
        {"role": "system", "content": "listen"},
        {
            "role": "user",
            "content": [
                {"type": "audio"},
                {"type": "text", "text": "then"},
                {"type": "audio", "audio": "high.wav"},
                {"type": "audio"},
            ],
        },
    ]
    row = {"prompt": prompt, "sounds": ["low.wav", np.zeros(RATE // 4, np.float32)]}
    media = prompt_media(
        row,
        input_key="prompt",
        image_key="images",
        audio_key="sounds",
        audio=AT_16K,
        base_dir=tmp_path,
    )
    assert media.prompt[1]["content"] == [
        {"type": "audio"},
        {"type": "text", "text": "then"},
        {"type": "audio"},
        {"type": "audio"},
    ]
    assert [peak_hz(a, RATE) for a in media.audios[:2]] == [220.0, 880.0]
    assert media.audios[2].shape == (4000,) and not media.audios[2].any()
    assert has_audio(row, input_key="prompt", audio_key="none") == "prompt[1].content[0]"
    assert has_audio({"prompt": "x"}, input_key="prompt", audio_key="audios") is None


@pytest.mark.parametrize(
    ("row", "key", "message", "skippable"),
    [
        (
            {"prompt": [{"role": "user", "content": [{"type": "audio"}]}], "audios": []},
            "prompt[0].content[0]",
            "0 audio(s) in 'audios' but the prompt has 1 audio placeholder(s) "
            "({'type': 'audio'} parts without an 'audio'); give one audio per placeholder",
            True,
        ),
        (
            {"prompt": [{"role": "system", "content": "s"}], "audios": [np.ones(4)]},
            "prompt",
            "the row has audio but the prompt has no user message",
            True,
        ),
        ({"prompt": "x", "audios": "gone.wav"}, "audios[0]", "cannot read 'gone.wav'", True),
    ],
)
def test_row_problems_name_the_key(
    row: dict[str, Any], key: str, message: str, skippable: bool
) -> None:
    with pytest.raises(RowProblem) as info:
        prompt_media(row, input_key="prompt", image_key="images", audio=AT_16K)
    assert info.value.key == key and str(info.value).startswith(f"{key}: {message}")
    assert info.value.skippable is skippable


# ---------------------------------------------------------------------- datasets and errors
def audio_rows(tmp_path: Path) -> str:
    write_clip(tmp_path / "ok.wav")
    write_clip(tmp_path / "long.wav", 3.0)
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC and then garbage")
    return write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"prompt": "a", "answer": "1", "audios": "ok.wav"},
            {"prompt": "b", "answer": "2", "audios": ["corrupt.flac"]},
            {"prompt": "c", "answer": "3", "audios": "long.wav"},
            {"prompt": "d", "answer": "4"},
        ],
    )


def test_corrupt_audio_names_file_line_and_key(tmp_path: Path, processor: Any) -> None:
    source = audio_rows(tmp_path)
    with pytest.raises(DataError) as info:
        PromptDataset.from_source(source, processor.tokenizer, DataConfig(), processor=processor)
    assert str(info.value).startswith(
        f"{source}:2: audios[0]: cannot read 'corrupt.flac': not an audio file soundfile can "
        "decode ("
    )
    assert str(info.value).endswith(
        f"(looked at {tmp_path}/corrupt.flac) (set data.skip_malformed=true to skip such rows)"
    )


def test_skip_malformed_skips_and_counts_bad_and_too_long_audio(
    tmp_path: Path, processor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source = audio_rows(tmp_path)
    config = DataConfig(skip_malformed=True, max_audio_seconds=2.0)
    with caplog.at_level(logging.WARNING, logger="lightrft.data"):
        data = PromptDataset.from_source(source, processor.tokenizer, config, processor=processor)
    assert [item.label for item in data] == ["1", "4"]
    assert data.num_skipped == 2
    assert f"{source}:3: audios[0]: the audio is 3.0 s long, over data.max_audio_seconds=2" in (
        caplog.text
    )
    assert data[0].multimodal is not None and data[1].multimodal is None
    assert "audios" not in data[0].metadata


def test_audio_rows_without_an_audio_processor_are_refused(tmp_path: Path, tokenizer: Any) -> None:
    write_clip(tmp_path / "ok.wav")
    source = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1", "audios": "ok.wav"}])
    for skip in (False, True):  # not a malformed row: skipping would drop every audio row
        with pytest.raises(DataError) as info:
            PromptDataset.from_source(source, tokenizer, DataConfig(skip_malformed=skip))
        assert str(info.value).startswith(
            f"{source}:1: audios[0]: the row has 1 audio item(s) but the model reads no audio"
        )


def test_datasets_audio_features(tmp_path: Path, processor: Any) -> None:
    datasets = pytest.importorskip("datasets")
    clip = write_clip(tmp_path / "a.flac", 1.0, 440.0, 8000)
    data = datasets.Dataset.from_dict(
        {"prompt": ["p0", "p1"], "answer": ["0", "1"], "audios": [[str(clip)], [str(clip)]]}
    ).cast_column("audios", datasets.List(datasets.Audio()))
    data.save_to_disk(str(tmp_path / "saved"))
    prompts = PromptDataset.from_source(
        str(tmp_path / "saved"), processor.tokenizer, DataConfig(), processor=processor
    )
    media = prompts[1].multimodal
    assert media is not None and media.audios[0].shape == (RATE,)
    assert peak_hz(media.audios[0], RATE) == 440.0


# ---------------------------------------------------------------------- encoding
def test_processor_sampling_rate(processor: Any, tokenizer: Any) -> None:
    assert processor_sampling_rate(processor) == RATE
    assert processor_sampling_rate(tokenizer) is None


def test_encoding_equals_calling_the_processor(tmp_path: Path, processor: Any) -> None:
    # a 1 s clip: 100 of the 200 frames of the tiny model's 2 s window, 25 audio tokens;
    # a 0.5 s one: 50 frames, 12 tokens ((50 - 1) // 2 + 1 = 25, (25 - 2) // 2 + 1 = 12)
    write_clip(tmp_path / "one.wav", 1.0, rate=44_100)
    write_clip(tmp_path / "half.ogg", 0.5)
    encoder = PromptEncoder(processor.tokenizer, processor=processor, base_dir=tmp_path)
    encoded = encoder.encode({"prompt": "count", "audios": ["one.wav", "half.ogg"]})
    media = encoded.multimodal
    assert media is not None and [a.shape for a in media.audios] == [(RATE,), (RATE // 2,)]
    features, mask = media.tensors["input_features"], media.tensors["feature_attention_mask"]
    assert set(media.tensors) == {"input_features", "feature_attention_mask"}
    assert features.shape == (2, 32, 200) and features.dtype == torch.float32
    assert mask.shape == (2, 200) and mask.sum(dim=1).tolist() == [100, 50]
    audio_token = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    assert encoded.ids.count(audio_token) == 25 + 12
    assert encoded.text.count("<|audio_bos|><|AUDIO|><|audio_eos|>") == 2
    direct = processor(
        text=[encoded.text],
        audio=media.audios,
        sampling_rate=RATE,
        add_special_tokens=False,
        return_tensors="pt",
    )
    assert encoded.ids == direct["input_ids"][0].tolist()
    torch.testing.assert_close(features, direct["input_features"])


def test_audio_placeholders_in_the_text_are_refused(tmp_path: Path, processor: Any) -> None:
    write_clip(tmp_path / "a.wav")
    row = {"prompt": "say <|AUDIO|>", "answer": "1", "audios": "a.wav"}
    source = write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(DataError) as info:
        PromptDataset.from_source(source, processor.tokenizer, DataConfig(), processor=processor)
    assert str(info.value).startswith(
        f"{source}:1: prompt: the formatted prompt has 2 audio placeholder(s) ('<|AUDIO|>') "
        "for 1 audio(s)"
    )


def test_collate_rows_with_and_without_audio(tmp_path: Path, processor: Any) -> None:
    write_clip(tmp_path / "a.wav")
    encoder = PromptEncoder(processor.tokenizer, processor=processor, base_dir=tmp_path)
    one = encoder.encode({"prompt": "x", "audios": "a.wav"}).multimodal
    two = encoder.encode({"prompt": "y", "audios": ["a.wav", "a.wav"]}).multimodal
    assert encoder.encode({"prompt": "z"}).multimodal is None
    batch = collate_modal_inputs([one, None, two])
    assert batch["input_features"].shape == (3, 32, 200)
    assert batch["feature_attention_mask"].shape == (3, 200)
    keys = frozenset({"feature_attention_mask"})
    assert set(collate_modal_inputs([None, two], keys)) == {"feature_attention_mask"}
    assert collate_modal_inputs([None, None]) == {}


def test_collate_pads_trailing_dims_with_zeros() -> None:
    short = MultiModalInputs(tensors={"f": torch.ones(1, 2, 3), "m": torch.ones(1, 3)})
    long = MultiModalInputs(tensors={"f": torch.full((2, 2, 5), 2.0), "m": torch.ones(2, 5)})
    batch = collate_modal_inputs([short, None, long])
    assert batch["f"].shape == (3, 2, 5) and batch["m"].tolist()[0] == [1, 1, 1, 0, 0]
    assert batch["f"][0, :, 3:].abs().sum() == 0 and batch["f"][0, :, :3].sum() == 6
    assert batch["f"][1:].unique().tolist() == [2.0]
    odd = MultiModalInputs(tensors={"f": torch.ones(1, 6)})
    with pytest.raises(ValueError, match="'f': the rows' tensors differ in rank"):
        collate_modal_inputs([short, odd])


# ---------------------------------------------------------------------- SFT and RM rows
def test_sft_and_preference_rows_with_audio(tmp_path: Path, processor: Any, tokenizer: Any) -> None:
    write_clip(tmp_path / "a.wav")
    parts = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hz?"}]}]
    source = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"prompt": parts, "response": "440", "audios": ["a.wav"]},
            {"prompt": "no audio", "response": "ok"},
        ],
    )
    sft = SFTDataset.from_source(source, processor.tokenizer, DataConfig(), processor=processor)
    with_audio, text_only = sft[0], sft[1]
    assert text_only.multimodal is None and with_audio.multimodal is not None
    assert with_audio.multimodal.tensors["input_features"].shape == (1, 32, 200)
    response = len(processor.tokenizer.encode("440", add_special_tokens=False)) + 1  # EOS
    assert sum(with_audio.loss_mask) == response
    audio_token = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    assert with_audio.input_ids.count(audio_token) == 12  # 0.5 s: 50 frames

    pairs = write_jsonl(
        tmp_path / "rm.jsonl",
        [{"prompt": "hz?", "chosen": "440", "rejected": "220", "audios": "a.wav"}],
    )
    data = PreferenceDataset.from_source(
        pairs, processor.tokenizer, DataConfig(), processor=processor
    )
    pair = data[0]
    assert pair.chosen.endswith("<|im_start|>assistant\n440")
    assert [a.shape for a in pair.audios] == [(8000,)] and pair.images == []
    with pytest.raises(DataError) as info:  # a text reward model cannot read the audio
        PreferenceDataset.from_source(pairs, tokenizer, DataConfig())
    assert str(info.value).startswith(
        f"{pairs}:1: audios[0]: reward-model pairs with audio need an audio-language model"
    )


# ---------------------------------------------------------------------- lightrft generate
def test_generate_with_audio(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_qwen_audio_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightrft_cli.main import app

    monkeypatch.chdir(tmp_path)  # --audio's relative path

    runner = CliRunner()
    text_only = runner.invoke(
        app, ["generate", str(tiny_model_dir), "-p", "hi", "--audio", "x.wav"]
    )
    assert text_only.exit_code != 0
    assert "--audio needs an audio-language model" in text_only.output
    (tmp_path / "noise.wav").write_bytes(b"RIFF, but no wave")
    corrupt = runner.invoke(
        app, ["generate", str(tiny_qwen_audio_dir), "-p", "hi", "--audio", "noise.wav"]
    )
    assert corrupt.exit_code != 0
    assert "--audio noise.wav: audios[0]: cannot read 'noise.wav': not an audio file" in (
        " ".join(corrupt.output.split())
    )
    write_clip(tmp_path / "beep.flac", 0.5, 880.0, 22_050)
    args = ["-p", "beeps?", "--audio", "beep.flac", "--max-new-tokens", "3"]
    answer = runner.invoke(app, ["generate", str(tiny_qwen_audio_dir), *args])
    assert answer.exit_code == 0, answer.output
    assert answer.output.startswith("beeps?")


def test_reward_model_batches_encode_the_pairs_audio(tmp_path: Path, processor: Any) -> None:
    from lightrft_core.interfaces.actor import MODALITY_PARAMETERS, ActorModality
    from lightrft_core.rewards.trunk_scoring import encode_with_media

    class AudioTrunk:  # what encode_with_media reads of an actor class
        modality = ActorModality.AUDIO_LANGUAGE

    write_clip(tmp_path / "a.wav")  # 0.5 s: 12 audio tokens
    pair = PreferenceDataset(
        [{"prompt": "hz?", "chosen": "440", "rejected": "220", "audios": "a.wav"}],
        processor.tokenizer,
        processor=processor,
        base_dir=tmp_path,
    )[0]
    texts = [pair.chosen, "plain text", pair.rejected]
    batch = encode_with_media(
        processor,
        AudioTrunk,  # type: ignore[arg-type]
        texts,
        [[], [], []],
        [pair.audios, [], pair.audios],
    )
    assert set(batch.media) == set(MODALITY_PARAMETERS[ActorModality.AUDIO_LANGUAGE])
    assert batch.media["input_features"].shape == (2, 32, 200)
    audio_token = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    assert (batch.input_ids == audio_token).sum(dim=1).tolist() == [12, 0, 12]
