"""The tiny Qwen-VL folders: processor expansion, a forward with images, save/reload."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from lightrft_plugin_qwen_vl.processing import load_processor
from lightrft_plugin_qwen_vl.tiny import VISION_TOKENS, build_tiny_qwen_vl


def _images() -> list[Image.Image]:
    # 56x56 -> grid 1x4x4 = 16 patches -> 4 tokens; 30x20 -> resized to 28x28 -> 1x2x2 -> 1 token
    return [Image.new("RGB", (56, 56), "red"), Image.new("RGB", (30, 20), "blue")]


MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "a b\nc"}, {"type": "image"}],
    }
]


def test_chat_template_renders_image_parts(family_dir: Path) -> None:
    processor = load_processor(family_dir)
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == f"<|im_start|>user\n{image}a b\nc{image}<|im_end|>\n<|im_start|>assistant\n"


def test_processor_expands_image_pads(family_dir: Path) -> None:
    processor = load_processor(family_dir)
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    out = processor(text=[text], images=_images(), return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4], [1, 2, 2]]
    assert out["pixel_values"].shape == (16 + 4, 3 * 2 * 14 * 14)
    ids = out["input_ids"][0].tolist()
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert ids.count(pad) == 4 + 1
    # the text between the images survives the byte tokenizer exactly
    assert "a b\nc" in processor.tokenizer.decode(ids)


def test_config_names_the_tokenizers_vision_ids(family_dir: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(family_dir)
    tokenizer = load_processor(family_dir).tokenizer
    start, end, image, video = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    assert (config.vision_start_token_id, config.vision_end_token_id) == (start, end)
    assert (config.image_token_id, config.video_token_id) == (image, video)
    assert config.get_text_config().vocab_size == len(tokenizer)


def test_forward_with_images_and_bit_identical_reload(family_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    processor = load_processor(family_dir)
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=_images(), return_tensors="pt")
    model = AutoModelForImageTextToText.from_pretrained(family_dir).eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    before, after = model.state_dict(), reloaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, logits)


def test_same_seed_same_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(build_tiny_qwen_vl(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_qwen_vl(tmp_path / "b", seed=3) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_saved_processor_names_a_video_processor(tiny_qwen_vl_dir: Path, tmp_path: Path) -> None:
    """So that ``AutoProcessor`` loads the folder where torchvision is installed."""
    import json

    load_processor(tiny_qwen_vl_dir).save_pretrained(tmp_path)
    for folder in (tiny_qwen_vl_dir, tmp_path):
        config = json.loads((folder / "processor_config.json").read_text())
        assert config["processor_class"] == "Qwen2VLProcessor"
        assert config["video_processor"]["size"] == config["image_processor"]["size"]
    assert load_processor(tmp_path).image_processor.size == {
        "shortest_edge": 784,
        "longest_edge": 3136,
    }
