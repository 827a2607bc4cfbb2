"""A verifiable arithmetic task with train and held-out splits (no download needed)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems like ``3+7-2=`` with ``operands`` numbers below ``10**digits`` joined by
    random operations from ``operations``; the answer is exact."""

    digits: int = 1
    operands: int = 3
    operations: str = "+-"

    def problem(self, rng: random.Random) -> tuple[str, str]:
        numbers = [rng.randrange(10**self.digits) for _ in range(self.operands)]
        text, value = str(numbers[0]), numbers[0]
        for number in numbers[1:]:
            op = rng.choice(self.operations)
            text += f"{op}{number}"
            value = value + number if op == "+" else value - number
        return f"{text}=", str(value)

    def splits(self, *, train: int, held_out: int, seed: int) -> tuple[list[dict], list[dict]]:
        """Disjoint train and held-out problem lists (held-out prompts never appear in train)."""
        rng = random.Random(seed)
        held: dict[str, str] = {}
        while len(held) < held_out:
            prompt, answer = self.problem(rng)
            held[prompt] = answer
        rows: list[dict] = []
        while len(rows) < train:
            prompt, answer = self.problem(rng)
            if prompt not in held:
                rows.append({"prompt": prompt, "answer": answer})
        return rows, [{"prompt": p, "answer": a} for p, a in held.items()]


def estimate(answer: str) -> str:
    """A careless demonstrator's answer: ``~`` and the exact answer rounded to the nearest
    ten (halves away from zero), e.g. ``14`` -> ``~10``, ``-15`` -> ``~-20``."""
    value = int(answer)
    rounded = int(math.copysign(math.floor(abs(value) / 10 + 0.5) * 10, value))
    return f"~{rounded}"


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_task_data(
    directory: str | Path,
    task: ArithmeticTask,
    *,
    sft: int,
    rl: int,
    held_out: int,
    seed: int,
    estimate_fraction: float = 0.0,
) -> dict[str, Path]:
    """``sft.jsonl`` (prompt/response), ``train.jsonl`` and ``eval.jsonl`` (prompt/answer).

    ``estimate_fraction`` of the SFT responses (chosen at random, seeded) are a careless
    demonstrator's estimates (:func:`estimate`) instead of the exact answer: imitation learns
    that habit, a verifier that rewards only exact answers can remove it."""
    if not 0.0 <= estimate_fraction <= 1.0:
        raise ValueError(f"estimate_fraction must be in [0, 1], got {estimate_fraction}")
    directory = Path(directory)
    train, held = task.splits(train=sft + rl, held_out=held_out, seed=seed)
    rng = random.Random(seed + 1)
    sft_rows = [
        {
            "prompt": r["prompt"],
            "response": estimate(r["answer"]) if rng.random() < estimate_fraction else r["answer"],
        }
        for r in train[:sft]
    ]
    return {
        "sft": write_jsonl(directory / "sft.jsonl", sft_rows),
        "train": write_jsonl(directory / "train.jsonl", train[sft:]),
        "eval": write_jsonl(directory / "eval.jsonl", held),
    }
