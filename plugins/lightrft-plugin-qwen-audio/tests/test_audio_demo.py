"""The audio demo: its task, its shipped configs, the wiring, and (marked slow) that GRPO
learns to listen -- a lift over the SFT checkpoint, the silent-clip control near chance, and
the same numbers for the same seed."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

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
    paths = write_task_data(tmp_path, BeepTask(), sft=20, rl=30, held_out=10, seed=0)
    rows = {name: [json.loads(x) for x in path.open()] for name, path in paths.items()}
    assert [len(rows[n]) for n in ("sft", "train", "eval", "eval_silent")] == [20, 30, 10, 10]
    # SFT: the question with no clip, answered with a digit (the form only)
    assert all(r["prompt"] == QUESTION and "audios" not in r for r in rows["sft"])
    assert {r["response"] for r in rows["sft"]} <= {"1", "2", "3", "4"}
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
    again = write_task_data(tmp_path / "again", BeepTask(), sft=20, rl=30, held_out=10, seed=0)
    assert again["train"].read_text() == paths["train"].read_text()
    assert (tmp_path / "again" / held[0]).read_bytes() == (tmp_path / held[0]).read_bytes()


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


def _plan(output: Path, *, steps: int, sft: int, rl: int, held_out: int) -> AudioDemoPlan:
    return AudioDemoPlan(
        output_dir=output,
        sft_examples=sft,
        rl_prompts=rl,
        held_out=held_out,
        sft_overrides=["logging.tensorboard=false"],
        rl_overrides=[
            f"trainer.max_steps={steps}",
            f"trainer.eval_every={steps}",
            "logging.tensorboard=false",
        ],
    )


def _learning_curve(history: list[dict]) -> list[dict]:
    """The history without wall-clock figures (those differ from run to run)."""
    return [
        {k: v for k, v in row.items() if not k.startswith("time/") and k != "tokens_per_s"}
        for row in history
    ]


def test_demo_wiring_and_same_seed_same_numbers(manager: PluginManager, tmp_path: Path) -> None:
    first = run_audio_demo(
        _plan(tmp_path / "a", steps=2, sft=64, rl=32, held_out=16), manager=manager
    )
    second = run_audio_demo(
        _plan(tmp_path / "b", steps=2, sft=64, rl=32, held_out=16), manager=manager
    )
    assert _learning_curve(first.history) == _learning_curve(second.history)
    assert first.accuracy_silent == second.accuracy_silent
    assert (first.final_model / "preprocessor_config.json").is_file()  # the export has it
    assert first.curves.is_file()
