"""Rows with images: reading each image source, finding images in a row (column and message
parts), the errors that name file, line and key, skipping, and the processor encoding."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lightrft_core.config import load_config
from lightrft_core.config.schema import DataConfig
from lightrft_core.data import DataError, PromptDataset, SFTDataset
from lightrft_core.data.media import RowProblem, has_images, load_image, prompt_media
from lightrft_core.data.preferences import PreferenceDataset
from lightrft_core.models.tiny import build_byte_tokenizer
from lightrft_core.rewards.combined import CombinedReward
from lightrft_core.rewards.model import ScalarRewardModel, load_sequence_classifier
from lightrft_core.testing.fakes import ConstantReward
from lightrft_core.trainer.data import load_run_data

RED, BLUE = (255, 0, 0), (0, 0, 255)


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> Path:
    path.write_bytes(png_bytes(color, size))
    return path


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def pixel(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((0, 0))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_byte_tokenizer()


# ---------------------------------------------------------------------- image sources
def test_every_image_source_decodes_to_rgb(tmp_path: Path) -> None:
    path = write_png(tmp_path / "red.png", RED)
    gray = Image.new("L", (3, 3), 128)
    sources = {
        "absolute path": str(path),
        "relative path": "red.png",
        "file URL": f"file://{path}",
        "bytes": png_bytes(RED),
        "datasets Image with bytes": {"bytes": png_bytes(RED), "path": "ignored.png"},
        "datasets Image with a path": {"bytes": None, "path": "red.png"},
        "PIL image": Image.new("RGB", (2, 2), RED),
    }
    for what, value in sources.items():
        image = load_image(value, base_dir=tmp_path)
        assert image.mode == "RGB" and pixel(image) == RED, what
    converted = load_image(gray)
    assert converted.mode == "RGB" and pixel(converted) == (128, 128, 128)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cat.png", "cannot read 'cat.png': no such file (looked at {dir}/cat.png)"),
        ("bad.png", "cannot read 'bad.png': not an image file PIL can decode (looked at "),
        (".", "cannot read '.': a folder, not an image file"),
        (b"not a png", "cannot decode 9 bytes: not an image file PIL can decode"),
        ({"bytes": None, "path": None}, "the datasets Image value has neither bytes nor a path"),
        (3, "expected a local file path, the bytes of an image file, a datasets Image value "),
        ("https://x.org/a.png", "URLs are not fetched; download the image and give its path"),
    ],
)
def test_unreadable_images_say_why(tmp_path: Path, value: Any, message: str) -> None:
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError) as info:
        load_image(value, base_dir=tmp_path)
    assert message.format(dir=tmp_path) in str(info.value)


def test_truncated_file_fails_while_loading(tmp_path: Path) -> None:
    (tmp_path / "cut.png").write_bytes(png_bytes(RED, (64, 64))[:60])
    with pytest.raises(ValueError, match="cannot read 'cut.png'"):
        load_image("cut.png", base_dir=tmp_path)


# ---------------------------------------------------------------------- images in a row
def test_text_rows_are_left_as_they_are() -> None:
    messages = [{"role": "user", "content": "hi"}]
    for row in (
        {"prompt": "hi"},
        {"prompt": messages, "images": []},
        {"prompt": "hi", "images": None},
    ):
        media = prompt_media(row, input_key="prompt", image_key="images")
        assert media.prompt == row["prompt"] and media.images == []


def test_column_images_lead_the_first_user_message(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", RED)
    row = {"prompt": "Which colour?", "images": ["a.png", png_bytes(BLUE)]}
    media = prompt_media(row, input_key="prompt", image_key="images", base_dir=tmp_path)
    image = {"type": "image"}
    assert media.prompt == [
        {"role": "user", "content": [image, image, {"type": "text", "text": "Which colour?"}]}
    ]
    assert [pixel(i) for i in media.images] == [RED, BLUE]
    one = prompt_media(
        {"prompt": "x", "images": png_bytes(RED)}, input_key="prompt", image_key="images"
    )
    assert len(one.images) == 1  # a single image without a list


def test_message_parts_hold_images_or_take_them_from_the_column(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first"},
                {"type": "image"},  # a placeholder: the column's first image
                {"type": "image", "image": png_bytes(BLUE)},
                {"type": "image"},
            ],
        },
    ]
    row = {"prompt": messages, "pics": [png_bytes(RED), png_bytes((0, 255, 0))]}
    media = prompt_media(row, input_key="prompt", image_key="pics")
    assert [pixel(i) for i in media.images] == [RED, BLUE, (0, 255, 0)]
    assert media.prompt[0] == messages[0]
    assert media.prompt[1]["content"] == [
        {"type": "text", "text": "first"},
        {"type": "image"},
        {"type": "image"},
        {"type": "image"},
    ]
    assert has_images(row, input_key="prompt", image_key="nothing") == "prompt[1].content[1]"
    assert has_images({"prompt": "x"}, input_key="prompt", image_key="images") is None


@pytest.mark.parametrize(
    ("row", "key", "message"),
    [
        (
            {"prompt": [{"role": "user", "content": [{"type": "image"}]}], "images": []},
            "prompt[0].content[0]",
            "0 image(s) in 'images' but the prompt has 1 image placeholder(s)",
        ),
        (
            {
                "prompt": [{"role": "user", "content": [{"type": "image"}]}],
                "images": ["a.png", "b.png"],
            },
            "images",
            "2 image(s) in 'images' but the prompt has 1 image placeholder(s)",
        ),
        (
            {"prompt": [{"role": "user", "content": [{"type": "video"}]}]},
            "prompt[0].content[0]",
            "unsupported content part {'type': 'video'}: use text, image and audio parts",
        ),
        (
            {"prompt": [{"role": "system", "content": "s"}], "images": ["a.png"]},
            "prompt",
            "the row has images but the prompt has no user message",
        ),
        ({"prompt": "x", "images": ["missing.png"]}, "images[0]", "cannot read 'missing.png'"),
    ],
)
def test_row_problems_name_the_key(row: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(RowProblem) as info:
        prompt_media(row, input_key="prompt", image_key="images")
    assert info.value.key == key and str(info.value).startswith(f"{key}: {message}")


# ---------------------------------------------------------------------- errors and skipping
def image_rows(tmp_path: Path) -> str:
    write_png(tmp_path / "ok.png", RED)
    (tmp_path / "broken.png").write_text("not an image")
    return write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"prompt": "a", "answer": "1"},
            {"prompt": "b", "answer": "2", "images": ["ok.png", "cat.png"]},
            {"prompt": "c", "answer": "3", "images": "broken.png"},
            {"prompt": "d", "answer": "4"},
        ],
    )


def test_missing_image_names_file_line_and_key(tmp_path: Path, tokenizer: Any) -> None:
    source = image_rows(tmp_path)
    with pytest.raises(DataError) as info:
        PromptDataset.from_source(source, tokenizer, DataConfig())
    assert str(info.value) == (
        f"{source}:2: images[1]: cannot read 'cat.png': no such file (looked at "
        f"{tmp_path}/cat.png) (set data.skip_malformed=true to skip such rows)"
    )


def test_unreadable_image_names_file_line_and_key(tmp_path: Path, tokenizer: Any) -> None:
    (tmp_path / "broken.png").write_text("not an image")
    row = {"prompt": "c", "answer": "3", "images": "broken.png"}
    source = write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(DataError) as info:
        PromptDataset.from_source(source, tokenizer, DataConfig())
    assert str(info.value).startswith(
        f"{source}:1: images[0]: cannot read 'broken.png': not an image file PIL can decode"
    )


def test_skip_malformed_skips_and_counts_rows_with_bad_images(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source = image_rows(tmp_path)
    with open(source, "a", encoding="utf-8") as handle:
        handle.write("[1]\n")  # malformed before any image is read
    with caplog.at_level(logging.WARNING, logger="lightrft.data"):
        data = PromptDataset.from_source(source, tokenizer, DataConfig(skip_malformed=True))
    assert [item.label for item in data] == ["1", "4"]
    assert data.num_skipped == 3  # two rows with bad images, one not a JSON object
    assert f"{source}: skipped 2 malformed row(s): {source}:2: images[1]: cannot read" in (
        caplog.text
    )
    sft = SFTDataset.from_source(
        source,
        tokenizer,
        DataConfig(skip_malformed=True, input_key="prompt"),
        response_key="answer",
    )
    assert len(sft) == 2 and sft.num_skipped == 3


def test_image_rows_without_a_processor_are_refused(tmp_path: Path, tokenizer: Any) -> None:
    write_png(tmp_path / "ok.png", RED)
    source = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1", "images": "ok.png"}])
    for skip in (False, True):  # not a malformed row: skipping would drop every image row
        with pytest.raises(DataError) as info:
            PromptDataset.from_source(source, tokenizer, DataConfig(skip_malformed=skip))
        assert str(info.value).startswith(
            f"{source}:1: images: the row has 1 image(s) but the model has no processor"
        )


def test_preference_pairs_with_images_are_refused(tmp_path: Path, tokenizer: Any) -> None:
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    source = write_jsonl(tmp_path / "p.jsonl", [pair, {**pair, "images": ["x.png"]}])
    with pytest.raises(DataError) as info:
        PreferenceDataset.from_source(source, tokenizer, DataConfig())
    assert str(info.value).startswith(
        f"{source}:2: images[0]: reward-model pairs with images need a vision-language model"
    )


# ---------------------------------------------------------------------- with a processor
@pytest.fixture(scope="module")
def processor(tiny_qwen_vl_dir: Path) -> Any:
    from lightrft_plugin_qwen_vl.processing import load_processor

    return load_processor(tiny_qwen_vl_dir)


def direct_encoding(processor: Any, messages: list[dict[str, Any]], images: list[Any]) -> Any:
    """What a user of transformers writes: the chat template, then the processor."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, processor(text=[text], images=images, return_tensors="pt")


def test_processor_encoding_equals_calling_the_processor(tmp_path: Path, processor: Any) -> None:
    write_png(tmp_path / "red.png", RED, (56, 56))
    write_png(tmp_path / "blue.png", BLUE)
    row = {"prompt": "Which colours?", "answer": "red, blue", "images": ["red.png", "blue.png"]}
    source = write_jsonl(tmp_path / "d.jsonl", [row])
    (item,) = PromptDataset.from_source(
        source, processor.tokenizer, DataConfig(), processor=processor
    )
    images = [Image.new("RGB", (56, 56), RED), Image.open(io.BytesIO(png_bytes(BLUE)))]
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which colours?"}]
    text, expected = direct_encoding(processor, [{"role": "user", "content": content}], images)
    assert item.prompt_text == text
    assert item.prompt_ids == expected["input_ids"][0].tolist()
    # 56x56 pixels: 4x4 patches, 4 tokens; 6x4 is resized to 56x28: 2x4 patches, 2 tokens
    assert item.prompt_ids.count(processor.image_token_id) == 4 + 2
    assert item.multimodal is not None and item.label == "red, blue" and item.metadata == {}
    assert set(item.multimodal.tensors) == {"pixel_values", "image_grid_thw"}
    for key, value in item.multimodal.tensors.items():
        assert torch.equal(value, expected[key]), key
    assert item.multimodal.tensors["image_grid_thw"].tolist() == [[1, 4, 4], [1, 2, 4]]
    assert [pixel(i) for i in item.multimodal.images] == [RED, BLUE]


def test_column_and_message_parts_encode_alike(tmp_path: Path, processor: Any) -> None:
    write_png(tmp_path / "red.png", RED)
    parts = [{"type": "text", "text": "Which colour?"}]
    rows = [
        {"prompt": "Which colour?", "images": "red.png"},
        {
            "prompt": [{"role": "user", "content": [{"type": "image"}, *parts]}],
            "images": ["red.png"],
        },
        {"prompt": [{"role": "user", "content": [{"type": "image", "image": "red.png"}, *parts]}]},
    ]
    data = PromptDataset(rows, processor.tokenizer, processor=processor, base_dir=tmp_path)
    first = data[0]
    assert first.multimodal is not None
    for item in data[1:]:
        assert item.prompt_ids == first.prompt_ids and item.prompt_text == first.prompt_text
        assert item.multimodal is not None
        assert torch.equal(
            item.multimodal.tensors["pixel_values"], first.multimodal.tensors["pixel_values"]
        )


def test_text_rows_of_a_vision_dataset_use_the_processor_template(
    tmp_path: Path, processor: Any
) -> None:
    processor.tokenizer.chat_template = None  # only the processor has a template now
    try:
        rows = [{"prompt": "plain"}, {"prompt": "pic", "images": [png_bytes(RED)]}]
        text_item, image_item = PromptDataset(
            rows, processor.tokenizer, processor=processor, system_prompt="Be brief."
        )
    finally:
        processor.tokenizer.chat_template = processor.chat_template
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "plain"}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text_item.prompt_text == text and text_item.multimodal is None
    assert text_item.prompt_ids == processor.tokenizer.encode(text, add_special_tokens=False)
    assert image_item.prompt_text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert image_item.multimodal is not None


def test_placeholder_count_mismatch_names_file_line_and_key(tmp_path: Path, processor: Any) -> None:
    write_png(tmp_path / "red.png", RED)
    rows = [
        {"prompt": "ok", "answer": "a"},
        {"prompt": "look <|image_pad|> here", "answer": "b", "images": ["red.png"]},
        {"prompt": "no image <|image_pad|>", "answer": "c"},
    ]
    source = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as info:
        PromptDataset.from_source(source, processor.tokenizer, DataConfig(), processor=processor)
    assert str(info.value).startswith(
        f"{source}:2: prompt: the formatted prompt has 2 image placeholder(s) "
        "('<|image_pad|>') for 1 image(s)"
    )
    skipping = DataConfig(skip_malformed=True)
    data = PromptDataset.from_source(source, processor.tokenizer, skipping, processor=processor)
    assert [item.label for item in data] == ["a"] and data.num_skipped == 2


def test_datasets_image_features(tmp_path: Path, processor: Any) -> None:
    datasets = pytest.importorskip("datasets")
    write_png(tmp_path / "red.png", RED)
    features = datasets.Features(
        {"prompt": datasets.Value("string"), "images": datasets.Sequence(datasets.Image())}
    )
    table = {
        "prompt": ["one", "two", "none"],
        "images": [[str(tmp_path / "red.png")], [png_bytes(BLUE), png_bytes(RED)], []],
    }
    dataset = datasets.Dataset.from_dict(table, features=features)
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    for source in (tmp_path / "saved", tmp_path / "d.parquet"):
        data = PromptDataset.from_source(
            str(source), processor.tokenizer, DataConfig(), require_label=False, processor=processor
        )
        counts = [0 if i.multimodal is None else len(i.multimodal.images) for i in data]
        assert counts == [1, 2, 0], source
        assert [pixel(i) for i in data[1].multimodal.images] == [BLUE, RED]


def test_sft_rows_with_images(tmp_path: Path, processor: Any) -> None:
    rows = [
        {"prompt": "colour?", "response": "red", "images": [png_bytes(RED)]},
        {"prompt": "hello", "response": "hi"},
    ]
    image_item, text_item = SFTDataset(rows, processor.tokenizer, processor=processor)
    prompts = PromptDataset(rows, processor.tokenizer, processor=processor)
    eos = processor.tokenizer.eos_token_id
    for sft, prompt, response in zip((image_item, text_item), prompts, ("red", "hi"), strict=True):
        response_ids = [*processor.tokenizer.encode(response, add_special_tokens=False), eos]
        assert sft.input_ids == prompt.prompt_ids + response_ids
        assert sft.loss_mask == [0] * len(prompt.prompt_ids) + [1] * len(response_ids)
    assert image_item.multimodal is not None and text_item.multimodal is None


# ---------------------------------------------------------------------- reward models
class TextOnlyReward(ConstantReward):
    """A reward that would score a prompt's text without its images."""

    name = "text_only"
    accepts_image_prompts = False


def test_rewards_that_read_text_only_refuse_image_prompts(tmp_path: Path, processor: Any) -> None:
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2", "images": "x.png"}]
    write_png(tmp_path / "x.png", RED)
    cfg = load_config(None, [f"data.train_path={write_jsonl(tmp_path / 'd.jsonl', rows)}"])
    parts = {"constant": ConstantReward, "text_only": TextOnlyReward}
    mixed = CombinedReward(
        CombinedReward.Config(rewards=[{"name": "constant"}, {"name": "text_only"}]), resolve=parts
    )
    assert ConstantReward.accepts_image_prompts and not ScalarRewardModel.accepts_image_prompts
    assert not mixed.accepts_image_prompts
    for reward in (TextOnlyReward(), mixed):
        with pytest.raises(DataError) as info:
            load_run_data(cfg, processor.tokenizer, reward, processor=processor)
        assert str(info.value) == (
            f"{cfg.data.train_path}: 1 prompt(s) carry images, but reward {reward.name!r} "
            "scores text only and would not see them; use a rule or remote reward for prompts "
            "with images, or text-only data"
        )
    data = load_run_data(cfg, processor.tokenizer, ConstantReward(), processor=processor)
    assert [item.multimodal is None for item in data.sampler.dataset] == [True, False]


def test_a_vision_language_checkpoint_is_no_sequence_classifier(tiny_qwen_vl_dir: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_sequence_classifier(str(tiny_qwen_vl_dir), num_labels=1)
    assert str(info.value) == (
        f"{tiny_qwen_vl_dir}: transformers has no sequence-classification head for model type "
        "'qwen2_vl', so it cannot be a scalar reward model read as text; for a "
        "vision-language model name its actor (model.name for lightrft rm, reward.actor for "
        "reward.name=model), which reads it as a trunk with a score head (docs/multimodal.md)"
    )
