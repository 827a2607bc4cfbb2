"""The audio demo: its task, its shipped configs, the wiring, and (marked slow) that GRPO
learns to listen -- a lift over the SFT checkpoint, the silent-clip control near chance, and
the same numbers for the same seed."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from lightrft_core.engines.hf import never_sampled_ids
from lightrft_core.plugins import PluginManager
from lightrft_plugin_qwen_audio.demo.run import (
    CONFIG_FILES,
    AudioDemoPlan,
    config_path,
    run_audio_demo,
)
from lightrft_plugin_qwen_audio.demo.task import (
    QUESTION,
    SAMPLING_RATE,
    BeepTask,
    write_task_data,
)

ROOT = Path(__file__).resolve().parents[3]


def _beeps_heard(audio: np.ndarray) -> int:
    """Bursts in ``audio``: runs of 5 ms windows whose peak is above 0.15 (the noise floor
    stays below 0.05, a beep's peak is at least 0.3)."""
    window = SAMPLING_RATE // 200
    peaks = np.abs(audio[: len(audio) // window * window]).reshape(-1, window).max(axis=1)
    loud = peaks > 0.15
    return int(loud[0]) + int(np.count_nonzero(loud[1:] & ~loud[:-1]))


def test_the_answer_is_the_number_of_beeps() -> None:
    rng = np.random.default_rng(3)
    answers = []
    for _ in range(60):
        audio, answer = BeepTask().clip(rng)
        assert audio.shape == (SAMPLING_RATE,) and audio.dtype == np.float32
        assert _beeps_heard(audio) == int(answer)
        answers.append(answer)
    assert set(answers) == {"1", "2", "3", "4"}  # every count occurs


def test_task_files(tmp_path: Path) -> None:
    paths = write_task_data(tmp_path, BeepTask(), sft=20, rl=30, held_out=10, seed=0, heard=4)
    rows = {name: [json.loads(x) for x in path.open()] for name, path in paths.items()}
    assert [len(rows[n]) for n in ("sft", "train", "eval", "eval_silent")] == [20, 30, 10, 10]
    # SFT: the question answered with a digit; 4 of the 20 rows with a clip of their own
    assert all(r["prompt"] == QUESTION for r in rows["sft"])
    assert {r["response"] for r in rows["sft"]} <= {"1", "2", "3", "4"}
    heard = [r for r in rows["sft"] if "audios" in r]
    assert len(heard) == 4
    for row in heard:
        with wave.open(str(tmp_path / row["audios"][0])) as clip:
            audio = np.frombuffer(clip.readframes(clip.getnframes()), "<i2") / 32767
        assert _beeps_heard(audio) == int(row["response"])
    # held-out clips are files of their own: 16-bit mono WAV at 16 kHz, one second
    held = [r["audios"][0] for r in rows["eval"]]
    assert not set(held) & {r["audios"][0] for r in rows["train"]}
    with wave.open(str(tmp_path / held[0])) as clip:
        assert (clip.getnchannels(), clip.getsampwidth(), clip.getframerate()) == (1, 2, 16_000)
        assert clip.getnframes() == 16_000
        audio = np.frombuffer(clip.readframes(16_000), "<i2") / 32767
    assert _beeps_heard(audio) == int(rows["eval"][0]["answer"])
    # the control has the same answers, silent
    assert [r["answer"] for r in rows["eval_silent"]] == [r["answer"] for r in rows["eval"]]
    assert {r["audios"][0] for r in rows["eval_silent"]} == {"audio/silent.wav"}
    # deterministic from the seed
    again = write_task_data(
        tmp_path / "again", BeepTask(), sft=20, rl=30, held_out=10, seed=0, heard=4
    )
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
    """The demo shrunk to seconds: 64 SFT rows (8 with a clip) in batches of 16, one GRPO step
    of 4 clips x 4 samples, 4 held-out clips."""
    return AudioDemoPlan(
        output_dir=output,
        sft_examples=64,
        sft_heard=8,
        rl_prompts=8,
        held_out=4,
        sft_overrides=[
            "sft.batch_size=16",
            "sft.micro_batch_size=16",
            "logging.log_every=1",
            "logging.tensorboard=false",
        ],
        rl_overrides=[
            "trainer.max_steps=1",
            "trainer.eval_every=1",
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
    and curves, and the same seed gives the same numbers."""
    first = run_audio_demo(_plan(tmp_path / "a"), manager=manager)
    second = run_audio_demo(_plan(tmp_path / "b"), manager=manager)
    assert _learning_curve(first.history) == _learning_curve(second.history)
    assert (first.accuracy_before, first.accuracy_after, first.accuracy_silent) == (
        second.accuracy_before,
        second.accuracy_after,
        second.accuracy_silent,
    )
    sft = [json.loads(x)["sft/loss"] for x in (tmp_path / "a/sft/metrics.jsonl").open()]
    assert len(sft) == 8  # 64 rows / 16, two epochs
    assert sft[-1] < sft[0] - 1.0
    assert (first.final_model / "processor_config.json").is_file()  # the export has it
    assert first.curves.is_file()
