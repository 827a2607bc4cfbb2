"""The vision demo's task: name the colour of the shape in a small picture.

Each picture is 56x56 pixels: a disc, square or triangle of one of ``COLORS`` on a pale,
noisy background, at a random size and place. The question never says the colour, so a
model can only answer it by looking: with a blank picture every answer is a guess (chance
is ``1 / len(COLORS)``). Drawn with Pillow, deterministic from the seed; no download.

Splits: RL prompts (``train.jsonl``), held-out prompts (``eval.jsonl``, pictures never
seen in training) and the same held-out prompts with blank pictures (``eval_blank.jsonl``,
the control). The SFT warm-up (``sft.jsonl``) teaches only the answer's form: a text
question with no picture, answered with a random colour word -- so after
it the model answers with a colour word but has never linked a picture to a colour; RL
from the verifiable reward (the exact colour) has to teach it to look.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightrft_core.demo.task import write_jsonl

#: Colour names and their RGB values (far apart, so the task is about looking, not nuance).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 215),
    "yellow": (225, 195, 30),
}
SHAPES = ("disc", "square", "triangle")
SIZE = 56
QUESTION = "What colour is the shape?"


@dataclass(frozen=True)
class ColorTask:
    """Pictures of one coloured shape; the answer is the colour's name."""

    min_shape: int = 24
    max_shape: int = 44

    def draw(self, rng: random.Random) -> tuple[Any, str]:
        """A picture and its answer."""
        from PIL import Image, ImageDraw

        color = rng.choice(sorted(COLORS))
        background = tuple(rng.randint(225, 250) for _ in range(3))
        image = Image.new("RGB", (SIZE, SIZE), background)
        pixels = image.load()
        assert pixels is not None  # None only for an image without data
        for _ in range(40):  # a little speckle so the background is not one flat value
            x, y = rng.randrange(SIZE), rng.randrange(SIZE)
            pixels[x, y] = tuple(max(0, c - rng.randint(10, 40)) for c in background)
        size = rng.randint(self.min_shape, self.max_shape)
        x, y = rng.randint(0, SIZE - size), rng.randint(0, SIZE - size)
        box = [x, y, x + size - 1, y + size - 1]
        draw = ImageDraw.Draw(image)
        shape = rng.choice(SHAPES)
        if shape == "disc":
            draw.ellipse(box, fill=COLORS[color])
        elif shape == "square":
            draw.rectangle(box, fill=COLORS[color])
        else:
            draw.polygon(
                [(x, y + size - 1), (x + size - 1, y + size - 1), (x + size // 2, y)],
                fill=COLORS[color],
            )
        return image, color


def blank_image() -> Any:
    """The control picture: pale grey, nothing on it."""
    from PIL import Image

    return Image.new("RGB", (SIZE, SIZE), (238, 238, 238))


def _row(image_path: str, answer: str) -> dict[str, Any]:
    return {"prompt": QUESTION, "images": [image_path], "answer": answer}


def write_task_data(
    directory: str | Path,
    task: ColorTask,
    *,
    sft: int,
    rl: int,
    held_out: int,
    seed: int,
) -> dict[str, Path]:
    """Pictures under ``directory/images`` and the four JSONL files (module docstring);
    image paths in the rows are relative to ``directory``."""
    directory = Path(directory)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def pictures(prefix: str, count: int) -> list[dict[str, Any]]:
        rows = []
        for index in range(count):
            image, answer = task.draw(rng)
            name = f"{prefix}_{index:05d}.png"
            image.save(images / name)
            rows.append(_row(f"images/{name}", answer))
        return rows

    train, held = pictures("train", rl), pictures("eval", held_out)
    blank_image().save(images / "blank.png")
    blank = [_row("images/blank.png", r["answer"]) for r in held]
    names = sorted(COLORS)
    sft_rows = [
        {"prompt": QUESTION, "response": names[rng.randrange(len(names))]} for _ in range(sft)
    ]
    return {
        "sft": write_jsonl(directory / "sft.jsonl", sft_rows),
        "train": write_jsonl(directory / "train.jsonl", train),
        "eval": write_jsonl(directory / "eval.jsonl", held),
        "eval_blank": write_jsonl(directory / "eval_blank.jsonl", blank),
    }
