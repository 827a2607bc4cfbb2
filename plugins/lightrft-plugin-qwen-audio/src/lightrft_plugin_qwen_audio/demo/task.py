"""The audio demo's task: say how high the tone in a short clip is.

Each clip is one second of 16 kHz mono audio: a tone in one of four pitch bands an octave
apart (``PITCHES``: about 300, 600, 1,200 and 2,400 Hz; the exact pitch, its onset, length
and loudness random) on a quiet noise floor. The bands fall on separate bins of the tiny
model's 32-bin mel spectrogram. The question never says the band, so a model can only
answer it by listening: with a silent clip every answer is a guess (chance is
``1 / len(PITCHES)``). Made with numpy, deterministic from the seed, written as 16-bit WAV
files with the standard library; no download.

Splits: RL prompts (``train.jsonl``), held-out prompts (``eval.jsonl``, clips never heard
in training) and the same held-out prompts with a silent clip (``eval_silent.jsonl``, the
control). The SFT warm-up (``sft.jsonl``) teaches only the answer's form: the question with
a clip of its own, answered with a band name drawn apart from the clip -- so after it the
model answers with a band name, also with a clip in the prompt, but has never linked a sound
to one; RL from the verifiable reward (the exact name) has to teach it to listen.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightrft_core.demo.task import write_jsonl

SAMPLING_RATE = 16_000
#: Band names and their centre pitch in Hz, an octave apart (the first letters differ).
PITCHES: dict[str, float] = {"low": 300.0, "mid": 600.0, "high": 1_200.0, "top": 2_400.0}
QUESTION = "How high is the tone?"


@dataclass(frozen=True)
class PitchTask:
    """Clips of one tone; the answer is the name of its pitch band.

    A tone's pitch is its band's centre times a random factor in ``[1 - spread, 1 + spread]``
    (0.15: bands 1.48x apart at their nearest edges); it lasts ``min_seconds`` to the whole
    clip and starts anywhere it fits."""

    seconds: float = 1.0
    spread: float = 0.15
    min_seconds: float = 0.3

    def __post_init__(self) -> None:
        if not 0 <= self.spread < 1 / 3:  # (1 + s) < 2 (1 - s): bands never overlap
            raise ValueError(f"spread must be in [0, 1/3), got {self.spread}")
        if not 0 < self.min_seconds <= self.seconds:
            raise ValueError("min_seconds must be in (0, seconds]")

    @property
    def answers(self) -> list[str]:
        return list(PITCHES)

    def clip(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """A float32 waveform in [-1, 1] at :data:`SAMPLING_RATE` and its answer."""
        answer = self.answers[int(rng.integers(len(PITCHES)))]
        hz = PITCHES[answer] * rng.uniform(1 - self.spread, 1 + self.spread)
        length = round(self.seconds * SAMPLING_RATE)
        audio = rng.normal(0.0, rng.uniform(0.002, 0.01), length)
        tone_length = int(rng.integers(round(self.min_seconds * SAMPLING_RATE), length + 1))
        start = int(rng.integers(0, length - tone_length + 1))
        t = np.arange(tone_length) / SAMPLING_RATE
        fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms ramps, no clicks
        phase = rng.uniform(0, 2 * np.pi)
        tone = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * hz * t + phase) * fade
        audio[start : start + tone_length] += tone
        return np.clip(audio, -1.0, 1.0).astype(np.float32), answer


def write_wav(path: Path, audio: np.ndarray) -> None:
    """``audio`` (float in [-1, 1]) as 16-bit mono PCM at :data:`SAMPLING_RATE`."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLING_RATE)
        out.writeframes((np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def _row(audio_path: str, answer: str) -> dict[str, Any]:
    return {"prompt": QUESTION, "audios": [audio_path], "answer": answer}


def write_task_data(
    directory: str | Path,
    task: PitchTask,
    *,
    sft: int,
    rl: int,
    held_out: int,
    seed: int,
) -> dict[str, Path]:
    """Clips under ``directory/audio`` and the four JSONL files (module docstring); audio
    paths in the rows are relative to ``directory``."""
    directory = Path(directory)
    clips = directory / "audio"
    clips.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def recordings(prefix: str, count: int) -> list[dict[str, Any]]:
        rows = []
        for index in range(count):
            audio, answer = task.clip(rng)
            name = f"{prefix}_{index:05d}.wav"
            write_wav(clips / name, audio)
            rows.append(_row(f"audio/{name}", answer))
        return rows

    train, held = recordings("train", rl), recordings("eval", held_out)
    write_wav(clips / "silent.wav", np.zeros(round(task.seconds * SAMPLING_RATE)))
    silent = [_row("audio/silent.wav", r["answer"]) for r in held]
    answers = task.answers
    sft_rows = [  # a clip of their own, answered with a name drawn apart from it
        {**r, "answer": None, "response": answers[int(rng.integers(len(answers)))]}
        for r in recordings("sft", sft)
    ]
    for r in sft_rows:
        del r["answer"]
    return {
        "sft": write_jsonl(directory / "sft.jsonl", sft_rows),
        "train": write_jsonl(directory / "train.jsonl", train),
        "eval": write_jsonl(directory / "eval.jsonl", held),
        "eval_silent": write_jsonl(directory / "eval_silent.jsonl", silent),
    }
