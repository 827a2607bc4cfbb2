"""``lightrft sft`` with image rows on the tiny Qwen2-VL (plugin ``qwen_vl``): a step trains,
does not depend on the micro-batch size, sees the images; the export carries the processor."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lightrft_core.config import load_config
from lightrft_core.plugins import get_plugin_manager
from lightrft_core.trainer.sft import run_sft

pytestmark = pytest.mark.installed_plugins

COLOURS = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255)}


def png(rgb: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def write_rows(folder: Path, *, swap_colours: bool = False) -> Path:
    """Two image rows (one with two images, files of different sizes) and two text rows."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for index, (name, size) in enumerate(zip(names, [(56, 56), (28, 28), (42, 56)], strict=True)):
        shown = names[(index + 1) % 3] if swap_colours else name
        (folder / f"{name}.png").write_bytes(png(COLOURS[shown], size))
    rows = [
        {"prompt": "Colour?", "response": "red", "images": ["red.png"]},
        {"prompt": "hi", "response": "hello"},
        {
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": "and"},
                        {"type": "image"},
                    ],
                },
            ],
            "response": "green, blue",
            "images": ["green.png", "blue.png"],
        },
        {"prompt": "2+2?", "response": "4"},
    ]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def sft_step(model_dir: Path, data: Path, out: Path, micro: int) -> Any:
    manager = get_plugin_manager()
    overrides = [
        f"run.output_dir={out}",
        "run.seed=0",
        "model.name=qwen_vl",
        f"model.path={model_dir}",
        f"data.train_path={data}",
        "sft.batch_size=4",
        f"sft.micro_batch_size={micro}",
        "sft.max_steps=1",
        "sft.learning_rate=1e-3",
        "logging.tensorboard=false",
    ]
    return run_sft(load_config(None, overrides, manager=manager), manager)


def test_sft_trains_on_image_rows_and_exports_the_processor(
    tiny_qwen_vl_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    from lightrft_plugin_qwen_vl.actor import QwenVLActor

    data = write_rows(tmp_path / "data")
    whole = sft_step(tiny_qwen_vl_dir, data, tmp_path / "m4", micro=4)
    split = sft_step(tiny_qwen_vl_dir, data, tmp_path / "m1", micro=1)
    first, other = whole.history[-1], split.history[-1]
    assert first["grad_norm"] > 0 and torch.isfinite(torch.tensor(first["sft/loss"]))
    for key in ("sft/loss", "grad_norm"):  # the rows' media follow their rows
        assert other[key] == pytest.approx(first[key], rel=1e-5), key
    swapped = sft_step(
        tiny_qwen_vl_dir,
        write_rows(tmp_path / "swapped", swap_colours=True),
        tmp_path / "swapped-run",
        micro=4,
    )
    assert swapped.history[-1]["sft/loss"] != pytest.approx(first["sft/loss"], rel=1e-6)

    final = whole.final_model
    assert (final / "processor_config.json").is_file() and (final / "chat_template.jinja").is_file()
    original = QwenVLActor.load_processor(str(tiny_qwen_vl_dir))
    exported = QwenVLActor.load_processor(str(final))
    assert type(exported) is type(original)
    assert exported.chat_template == original.chat_template
    assert exported.image_processor.to_dict() == original.image_processor.to_dict()
    image = Image.new("RGB", (40, 30), COLOURS["red"])
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>x<|im_end|>\n"
    a, b = (p(text=[text], images=[image], return_tensors="pt") for p in (original, exported))
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert AutoModelForImageTextToText.from_pretrained(final).config.model_type == "qwen2_vl"
