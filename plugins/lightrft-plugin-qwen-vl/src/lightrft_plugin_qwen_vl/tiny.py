"""Tiny random-weight Qwen-VL models with their processor, built locally for tests and demos.

``build_tiny_qwen_vl(path, family="qwen2_vl" | "qwen2_5_vl" | "qwen3_vl")`` writes a Hugging
Face folder that ``AutoProcessor.from_pretrained`` (``processing.load_processor`` where
torchvision is missing) and ``AutoModelForImageTextToText`` load:

- the core's byte-level tokenizer (ids 0..255 = bytes, then ``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``) plus the vision tokens ``<|vision_start|>``,
  ``<|vision_end|>``, ``<|image_pad|>``, ``<|video_pad|>`` (ids 259..262), which the
  model config names;
- a ChatML chat template whose ``{"type": "image"}`` parts render as
  ``<|vision_start|><|image_pad|><|vision_end|>`` (the processor expands the pad);
- a Qwen2-VL image processor for small images: 28x28 to 56x56 pixels after resizing,
  i.e. 4 to 16 patches of 14x14, 1 to 4 image tokens after the 2x2 merge;
- a model with a 2-layer text decoder (hidden 64, one head of 64: vLLM needs head_dim
  >= 64) and a 2-block vision tower of width 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightrft_core.models.tiny import (
    TINY_DECODER,
    build_byte_tokenizer,
    chatml_media_template,
    save_tiny,
    tiny_text_config,
)

Family = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

#: ChatML; a message's content is a string or a list of ``{"type": "text"|"image"|"video"}``
#: parts. The generation prompt is ``<|im_start|>assistant\n``.
VL_CHAT_TEMPLATE = chatml_media_template(
    {
        "image": "<|vision_start|><|image_pad|><|vision_end|>",
        "video": "<|vision_start|><|video_pad|><|vision_end|>",
    }
)

#: Image size bounds of the tiny processor, in pixels (after its aspect-preserving resize).
MIN_PIXELS = 28 * 28
MAX_PIXELS = 56 * 56

TEXT_HIDDEN = TINY_DECODER["hidden_size"]
#: Sections of the rotary half-dimension (head_dim 64 -> 32) for time, height and width.
_MROPE_SECTION = [8, 12, 12]


def build_vl_tokenizer() -> Any:
    """The core's byte tokenizer with the four vision tokens (ids 259..262) and the VL
    chat template."""
    return build_byte_tokenizer(VISION_TOKENS, VL_CHAT_TEMPLATE)


def _token_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    return {
        "vision_start_token_id": ids[0],
        "vision_end_token_id": ids[1],
        "image_token_id": ids[2],
        "video_token_id": ids[3],
    }


def _config(family: Family, tokenizer: Any) -> Any:
    """The model config of a family: tiny text and vision parts, the tokenizer's ids."""
    from transformers import AutoConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(_MROPE_SECTION)}
    text = tiny_text_config(tokenizer, rope_parameters=rope)
    if family == "qwen2_vl":
        vision: dict[str, Any] = {
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": TEXT_HIDDEN,  # the merger's output: the text width
            "mlp_ratio": 2,
            "num_heads": 2,
        }
    elif family == "qwen2_5_vl":
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        }
    elif family == "qwen3_vl":
        text = {
            **text,
            "head_dim": TEXT_HIDDEN,
            "rope_parameters": {**text["rope_parameters"], "mrope_interleaved": True},
        }
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "out_hidden_size": TEXT_HIDDEN,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
        }
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return AutoConfig.for_model(
        family,
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )


def build_tiny_processor(family: Family = "qwen2_vl") -> Any:
    """The family's processor: the VL tokenizer, a small-image Qwen2-VL image processor
    (PIL backend: no torchvision needed) and the VL chat template. No video processor
    (``processing.py``); saved, it names the family's standard processor class."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from .processing import image_only_processor_class

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    tokenizer = build_vl_tokenizer()
    if family == "qwen2_vl":
        cls: Any = Qwen2VLProcessor
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as cls
    elif family == "qwen3_vl":
        from transformers import Qwen3VLProcessor as cls
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    processor_class = image_only_processor_class(cls)
    return processor_class(image_processor, tokenizer, chat_template=VL_CHAT_TEMPLATE)


def build_tiny_qwen_vl_model(family: Family = "qwen2_vl", *, seed: int = 0) -> Any:
    """A randomly initialised ``*ForConditionalGeneration`` of ``family`` (fp32, eager)."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = _config(family, build_vl_tokenizer())
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config, attn_implementation="eager")


def build_tiny_qwen_vl(path: str | Path, *, family: Family = "qwen2_vl", seed: int = 0) -> Path:
    """Write a tiny random-weight ``family`` model and its processor to ``path``; returns it."""
    processor = build_tiny_processor(family)
    model = build_tiny_qwen_vl_model(family, seed=seed)
    return save_tiny(path, model, processor, processor.tokenizer)
