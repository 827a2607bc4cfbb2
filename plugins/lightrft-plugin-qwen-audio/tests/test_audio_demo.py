"""The audio demo: its task, its shipped configs, the wiring, and (marked slow) that GRPO
learns to listen -- a lift over the SFT checkpoint, the silent-clip control near chance, and
the same numbers for the same seed."""

from __future__ import annotations

import itertools
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from lightrft_core.demo.controlled import run_controlled_demo
from lightrft_core.engines.hf import never_sampled_ids
from lightrft_core.plugins import PluginManager
from lightrft_plugin_qwen_audio.demo.run import (
    CONFIG_FILES,
    AudioDemoPlan,
    config_path,
)
from lightrft_plugin_qwen_audio.demo.task import (
    PITCHES,
    QUESTION,
    SAMPLING_RATE,
    PitchTask,
    write_task_data,
)
from lightrft_plugin_qwen_audio.tiny import build_tiny_processor

ROOT = Path(__file__).resolve().parents[3]


def _pitch_heard(audio: np.ndarray) -> float:
    """The strongest frequency of ``audio`` in Hz (1 Hz resolution for a 1 s clip)."""
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.argmax(spectrum) * SAMPLING_RATE / len(audio))


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as clip:
        assert (clip.getnchannels(), clip.getsampwidth(), clip.getframerate()) == (1, 2, 16_000)
        return np.frombuffer(clip.readframes(clip.getnframes()), "<i2") / 32767


def test_the_answer_is_the_band_of_the_tone() -> None:
    rng = np.random.default_rng(3)
    answers = []
    for _ in range(60):
        audio, answer = PitchTask().clip(rng)
        assert audio.shape == (SAMPLING_RATE,) and audio.dtype == np.float32
        # within 15% of the band's centre (+1 Hz of FFT resolution)
        assert abs(_pitch_heard(audio) / PITCHES[answer] - 1) <= 0.15 + 1 / 300
        answers.append(answer)
    assert set(answers) == set(PITCHES)  # every band occurs


def test_the_bands_fall_on_separate_mel_bins() -> None:
    """The tiny model's 32-bin mel spectrogram puts the edges of neighbouring bands (centre
    x 0.85 and x 1.15) on different bins: the strongest bin of the top of one band is below
    the strongest bin of the bottom of the next."""
    extractor = build_tiny_processor().feature_extractor
    t = np.arange(SAMPLING_RATE) / SAMPLING_RATE

    def loudest_bin(hz: float) -> int:
        tone = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        features = extractor(tone, sampling_rate=SAMPLING_RATE, return_tensors="np")
        return int(features["input_features"][0][:, :100].mean(axis=1).argmax())

    centres = list(PITCHES.values())
    for low, high in itertools.pairwise(centres):
        assert loudest_bin(low * 1.15) < loudest_bin(high * 0.85)


def test_task_files(tmp_path: Path) -> None:
    paths = write_task_data(tmp_path, PitchTask(), sft=20, rl=30, held_out=10, seed=0)
    rows = {name: [json.loads(x) for x in path.open()] for name, path in paths.items()}
    assert [len(rows[n]) for n in ("sft", "train", "eval", "eval_silent")] == [20, 30, 10, 10]
    # SFT: the question with a clip of its own, answered with a band name (the form only)
    assert all(
        r["prompt"] == QUESTION and set(r) == {"prompt", "audios", "response"} for r in rows["sft"]
    )
    assert {r["response"] for r in rows["sft"]} <= set(PITCHES)
    sft_clips = {r["audios"][0] for r in rows["sft"]}
    assert len(sft_clips) == 20
    # held-out clips are files of their own: 16-bit mono WAV at 16 kHz, one second
    held = [r["audios"][0] for r in rows["eval"]]
    assert not set(held) & ({r["audios"][0] for r in rows["train"]} | sft_clips)
    for row in rows["eval"]:
        audio = _read_wav(tmp_path / row["audios"][0])
        assert len(audio) == 16_000
        assert abs(_pitch_heard(audio) / PITCHES[row["answer"]] - 1) <= 0.15 + 1 / 300
    # the control has the same answers, silent
    assert [r["answer"] for r in rows["eval_silent"]] == [r["answer"] for r in rows["eval"]]
    assert {r["audios"][0] for r in rows["eval_silent"]} == {"audio/silent.wav"}
    assert not _read_wav(tmp_path / "audio/silent.wav").any()
    # deterministic from the seed
    again = write_task_data(tmp_path / "again", PitchTask(), sft=20, rl=30, held_out=10, seed=0)
    assert again["sft"].read_text() == paths["sft"].read_text()
    assert again["train"].read_text() == paths["train"].read_text()
    assert (tmp_path / "again" / held[0]).read_bytes() == (tmp_path / held[0]).read_bytes()


def test_the_hf_engine_never_samples_the_audio_placeholder(tiny_qwen_audio_dir: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_qwen_audio_dir)
    assert never_sampled_ids(config) == [config.audio_token_id]


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_shipped_example_configs_are_the_demo_configs(name: str) -> None:
    example = ROOT / "examples" / ("demo_" + CONFIG_FILES[name])
    assert example.read_text() == config_path(name).read_text()


@pytest.fixture
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_qwen_audio.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_qwen_audio.plugin, name="qwen-audio")
    return pm


def _plan(output: Path) -> AudioDemoPlan:
    """The demo shrunk to seconds: 64 SFT rows in batches of 16, two GRPO steps of 4 clips x 4
    samples, 4 held-out clips."""
    return AudioDemoPlan(
        output_dir=output,
        sft_examples=64,
        rl_prompts=8,
        held_out=4,
        sft_overrides=[
            "sft.batch_size=16",
            "sft.micro_batch_size=16",
            "logging.log_every=1",
            "logging.tensorboard=false",
        ],
        rl_overrides=[
            "trainer.max_steps=2",
            "trainer.eval_every=2",
            "trainer.prompts_per_step=4",
            "engine.n_samples_per_prompt=4",
            "logging.tensorboard=false",
        ],
    )


def _learning_curve(history: list[dict]) -> list[dict]:
    """The history without wall-clock figures (those differ from run to run)."""
    return [
        {k: v for k, v in row.items() if not k.startswith("time/") and k != "tokens_per_s"}
        for row in history
    ]


@pytest.mark.slow
def test_shrunken_demo_learns_and_same_seed_same_numbers(
    manager: PluginManager, tmp_path: Path
) -> None:
    """The whole demo, shrunk: the SFT warm-up learns (its loss falls from about ln(263) =
    5.57, a random model's, by more than one nat), the run ends with a model, its processor
    and curves, and the same seed gives the same numbers. (Learning to listen takes hundreds
    of GRPO steps, more than a test affords: docs/multimodal.md has the full demo's numbers.)"""
    first = run_controlled_demo(_plan(tmp_path / "a"), manager=manager)
    second = run_controlled_demo(_plan(tmp_path / "b"), manager=manager)
    assert _learning_curve(first.history) == _learning_curve(second.history)
    assert (first.accuracy_before, first.accuracy_after, first.accuracy_control) == (
        second.accuracy_before,
        second.accuracy_after,
        second.accuracy_control,
    )
    sft = [json.loads(x)["sft/loss"] for x in (tmp_path / "a/sft/metrics.jsonl").open()]
    assert len(sft) == 16  # 64 rows / 16, four epochs
    assert sft[-1] < sft[0] - 1.0
    assert (first.final_model / "processor_config.json").is_file()  # the export has it
    assert first.curves.is_file()
