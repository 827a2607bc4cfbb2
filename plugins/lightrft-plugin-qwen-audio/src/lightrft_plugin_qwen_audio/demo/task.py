"""The audio demo's task: count the beeps in a short clip.

Each clip is one second of 16 kHz mono audio: one to ``max_beeps`` short tone bursts (one
pitch per clip, drawn from a range) at random places on a quiet noise floor. The question
never says the count, so a model can only answer it by listening: with a silent clip every
answer is a guess (chance is ``1 / max_beeps``). Made with numpy, deterministic from the
seed, written as 16-bit WAV files with the standard library; no download.

Splits: RL prompts (``train.jsonl``), held-out prompts (``eval.jsonl``, clips never heard
in training) and the same held-out prompts with a silent clip (``eval_silent.jsonl``, the
control). The SFT warm-up (``sft.jsonl``) is partial on purpose: most rows teach only the
answer's form (the question with no clip, answered with a random count), and a few
(``heard``) carry a clip of their own with its true count -- too few to learn counting, enough
to start linking a sound to a number. RL from the verifiable reward (the exact count) has
to finish teaching the model to listen.
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLING_RATE = 16_000
QUESTION = "How many beeps?"


@dataclass(frozen=True)
class BeepTask:
    """Clips of ``1..max_beeps`` tone bursts; the answer is their count as a digit.

    The clip is cut into ``slots`` equal slots and each beep starts somewhere in its own
    slot, so beeps never overlap and are at least ``slot - beep`` seconds apart."""

    max_beeps: int = 4
    seconds: float = 1.0
    slots: int = 6
    beep_seconds: float = 0.08
    min_hz: float = 500.0
    max_hz: float = 1_500.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_beeps <= min(self.slots, 9):
            raise ValueError(f"max_beeps must be in [1, min(slots, 9)], got {self.max_beeps}")
        if self.beep_seconds >= self.seconds / self.slots:
            raise ValueError("beep_seconds must be shorter than one slot (seconds / slots)")

    @property
    def answers(self) -> list[str]:
        return [str(n) for n in range(1, self.max_beeps + 1)]

    def clip(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """A float32 waveform in [-1, 1] at :data:`SAMPLING_RATE` and its answer."""
        count = int(rng.integers(1, self.max_beeps + 1))
        length = round(self.seconds * SAMPLING_RATE)
        audio = rng.normal(0.0, rng.uniform(0.002, 0.01), length)
        slot = length // self.slots
        beep = round(self.beep_seconds * SAMPLING_RATE)
        t = np.arange(beep) / SAMPLING_RATE
        fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)  # 5 ms ramps, no clicks
        tone = np.sin(2 * np.pi * rng.uniform(self.min_hz, self.max_hz) * t) * fade
        for index in np.sort(rng.choice(self.slots, size=count, replace=False)):
            start = index * slot + int(rng.integers(0, slot - beep + 1))
            audio[start : start + beep] += rng.uniform(0.3, 0.6) * tone
        return np.clip(audio, -1.0, 1.0).astype(np.float32), str(count)


def write_wav(path: Path, audio: np.ndarray) -> None:
    """``audio`` (float in [-1, 1]) as 16-bit mono PCM at :data:`SAMPLING_RATE`."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLING_RATE)
        out.writeframes((np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def _row(audio_path: str, answer: str) -> dict[str, Any]:
    return {"prompt": QUESTION, "audios": [audio_path], "answer": answer}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return path


def write_task_data(
    directory: str | Path,
    task: BeepTask,
    *,
    sft: int,
    rl: int,
    held_out: int,
    seed: int,
    heard: int = 0,
) -> dict[str, Path]:
    """Clips under ``directory/audio`` and the four JSONL files (module docstring): ``sft``
    SFT rows of which ``heard`` (the first ones) have a clip; audio paths in the rows are
    relative to ``directory``."""
    if not 0 <= heard <= sft:
        raise ValueError(f"heard must be in [0, sft={sft}], got {heard}")
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
    demonstrations = [
        {"prompt": QUESTION, "audios": r["audios"], "response": r["answer"]}
        for r in recordings("sft", heard)
    ]
    answers = task.answers
    demonstrations += [
        {"prompt": QUESTION, "response": answers[int(rng.integers(len(answers)))]}
        for _ in range(sft - heard)
    ]
    sft_rows = [demonstrations[i] for i in rng.permutation(sft)]
    return {
        "sft": _write_jsonl(directory / "sft.jsonl", sft_rows),
        "train": _write_jsonl(directory / "train.jsonl", train),
        "eval": _write_jsonl(directory / "eval.jsonl", held),
        "eval_silent": _write_jsonl(directory / "eval_silent.jsonl", silent),
    }
