"""A tiny random-weight Qwen2.5-Omni thinker with its processor, for tests and demos.

``build_tiny_qwen_omni(path)`` writes a Hugging Face folder that
``Qwen2_5OmniThinkerForConditionalGeneration`` (``AutoModelForImageTextToText``) and the
``qwen_omni`` actor's ``load_processor`` (``omni_processing.py``: no torchvision needed) load:

- the core's byte-level tokenizer (ids 0..255 = bytes, then ``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``) plus the omni tokens ``<|vision_bos|>``,
  ``<|vision_eos|>``, ``<|IMAGE|>``, ``<|VIDEO|>``, ``<|audio_bos|>``, ``<|audio_eos|>``,
  ``<|AUDIO|>`` (ids 259..265), named on the tokenizer (``image_token`` ...) and in the
  model config;
- a ChatML chat template whose ``{"type": "image"}`` parts render as
  ``<|vision_bos|><|IMAGE|><|vision_eos|>`` and ``{"type": "audio"}`` parts as
  ``<|audio_bos|><|AUDIO|><|audio_eos|>`` (the processor expands the placeholders);
- the tiny Qwen2-Audio's Whisper feature extractor (``tiny.py``: 32 mel bins, 2-second
  window: ``input_features [32, 200]``) and the tiny Qwen-VL image processor sizes (28x28 to
  56x56 pixels after resizing: 1 to 4 image tokens);
- a thinker with a 2-layer text decoder (hidden 64, one head of 64, 3-D rotary sections
  8/12/12), a 2-block vision encoder of width 32 and a 2-layer audio encoder of width 32
  (chunks of 100 frames).

Audio tokens: ``((F - 1) // 2 + 1 - 2) // 2 + 1`` of a clip of ``F`` frames (1 s -> 25).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightrft_core.models.tiny import (
    TINY_DECODER,
    build_byte_tokenizer,
    chatml_media_template,
    save_tiny,
    tiny_text_config,
)

from .tiny import build_tiny_processor as build_tiny_audio_processor

#: The tokenizer's names of the omni tokens and the tokens (ids 259..265 in this order).
OMNI_TOKENS = {
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "audio_token": "<|AUDIO|>",
}

#: ChatML; a message's content is a string or a list of ``{"type": "text"|"image"|"audio"}``
#: parts. The generation prompt is ``<|im_start|>assistant\n``.
OMNI_CHAT_TEMPLATE = chatml_media_template(
    {
        "image": "<|vision_bos|><|IMAGE|><|vision_eos|>",
        "audio": "<|audio_bos|><|AUDIO|><|audio_eos|>",
    }
)

#: Image size bounds of the tiny processor, in pixels (after its aspect-preserving resize).
MIN_PIXELS = 28 * 28
MAX_PIXELS = 56 * 56

TEXT_HIDDEN = TINY_DECODER["hidden_size"]
#: Sections of the rotary half-dimension (head_dim 64 -> 32): time, height, width.
_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}
_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": TEXT_HIDDEN,
    "window_size": 56,
    "fullatt_block_indexes": [1],
}
_AUDIO = {
    "num_mel_bins": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "d_model": 32,
    "max_source_positions": 100,
    "n_window": 50,  # chunks of 2 * 50 frames, 50 positions after the stride-2 convolution
    "output_dim": TEXT_HIDDEN,
}


def build_omni_tokenizer() -> Any:
    """The core's byte tokenizer with the seven omni tokens (ids 259..265), each named
    (``tokenizer.image_token`` ...), and the omni chat template."""
    from transformers import PreTrainedTokenizerFast

    base = build_byte_tokenizer(list(OMNI_TOKENS.values()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        bos_token=None,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        extra_special_tokens=dict(OMNI_TOKENS),
    )
    tokenizer.chat_template = OMNI_CHAT_TEMPLATE
    return tokenizer


def build_tiny_omni_processor() -> Any:
    """A ``Qwen2_5OmniProcessor`` without a video processor (``omni_processing.py``): a
    small-image Qwen2-VL image processor (PIL), the tiny Whisper feature extractor, the omni
    tokenizer and chat template."""
    from transformers import Qwen2VLImageProcessorPil

    from .omni_processing import WithoutVideo

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    feature_extractor = build_tiny_audio_processor().feature_extractor
    return WithoutVideo(
        image_processor,
        feature_extractor,
        build_omni_tokenizer(),
        chat_template=OMNI_CHAT_TEMPLATE,
    )


def _config(tokenizer: Any) -> Any:
    from transformers import Qwen2_5OmniThinkerConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in OMNI_TOKENS.items()}
    text = tiny_text_config(tokenizer, rope_parameters=dict(_ROPE), tie_word_embeddings=False)
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(_AUDIO),
        vision_config=dict(_VISION),
        text_config=text,
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        tie_word_embeddings=False,
    )
    # read by the thinker's 3-D positions (get_rope_index); the class declares no field
    config.vision_start_token_id = ids["vision_bos_token"]
    config.vision_end_token_id = ids["vision_eos_token"]
    return config


def build_tiny_qwen_omni_model(*, seed: int = 0) -> Any:
    """A randomly initialised ``Qwen2_5OmniThinkerForConditionalGeneration`` (fp32, eager)."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    config = _config(build_omni_tokenizer())
    torch.manual_seed(seed)
    return Qwen2_5OmniThinkerForConditionalGeneration._from_config(
        config, attn_implementation="eager"
    )


def build_tiny_qwen_omni(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight Qwen2.5-Omni thinker and its processor to ``path``;
    returns it."""
    processor = build_tiny_omni_processor()
    model = build_tiny_qwen_omni_model(seed=seed)
    return save_tiny(path, model, processor, processor.tokenizer)
