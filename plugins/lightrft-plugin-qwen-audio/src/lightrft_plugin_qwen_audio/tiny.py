"""A tiny random-weight Qwen2-Audio with its processor, built locally for tests and demos.

``build_tiny_qwen2_audio(path)`` writes a Hugging Face folder that ``AutoProcessor`` and
``Qwen2AudioForConditionalGeneration`` load (no torchaudio needed):

- the core's byte-level tokenizer (ids 0..255 = bytes, then ``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``) plus the audio tokens ``<|audio_bos|>``,
  ``<|audio_eos|>``, ``<|AUDIO|>`` (ids 259..261), which the model config names;
- a ChatML chat template whose ``{"type": "audio"}`` parts render as
  ``<|audio_bos|><|AUDIO|><|audio_eos|>`` (the processor expands ``<|AUDIO|>``);
- a Whisper feature extractor with 32 mel bins and a 2-second window (16 kHz, hop 160):
  every clip becomes ``input_features [32, 200]`` (cut or zero-padded) and
  ``feature_attention_mask [200]`` (1 on the clip's frames);
- a model with a 2-layer Whisper-style audio encoder (width 32, 100 positions) and a
  2-layer text decoder (hidden 64, one head of 64: vLLM needs head_dim >= 64).

``window_seconds=30`` gives Whisper's own window (``[32, 3000]`` features, 1500 positions),
the only one vLLM's Qwen2-Audio accepts.

Audio tokens: the encoder's stride-2 convolution then its stride-2 pooling turn ``F`` frames
into ``((F - 1) // 2 + 1 - 2) // 2 + 1`` tokens: 1 s (100 frames) -> 25, 2 s -> 50.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightrft_core.models.tiny import (
    build_byte_tokenizer,
    chatml_media_template,
    save_tiny,
    tiny_text_config,
)

AUDIO_TOKENS = ("<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>")

#: ChatML; a message's content is a string or a list of ``{"type": "text"|"audio"}`` parts.
#: The generation prompt is ``<|im_start|>assistant\n``.
AUDIO_CHAT_TEMPLATE = chatml_media_template({"audio": "<|audio_bos|><|AUDIO|><|audio_eos|>"})

SAMPLING_RATE = 16_000
HOP_LENGTH = 160  # 10 ms frames
#: The feature extractor's window: longer clips are cut, shorter ones zero-padded to it.
CHUNK_SECONDS = 2
N_MELS = 32
#: Mel frames of one window; the encoder's conv2 (stride 2) halves them into positions.
FRAMES = CHUNK_SECONDS * SAMPLING_RATE // HOP_LENGTH

_AUDIO = {
    "num_mel_bins": N_MELS,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "d_model": 32,
}


def audio_token_count(frames: int) -> int:
    """Audio tokens the model makes of a clip of ``frames`` mel frames (its stride-2
    convolution, then its stride-2 pooling)."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def build_audio_tokenizer() -> Any:
    """The core's byte tokenizer with the three audio tokens (ids 259..261) and the audio
    chat template."""
    return build_byte_tokenizer(AUDIO_TOKENS, AUDIO_CHAT_TEMPLATE)


def build_tiny_processor(*, window_seconds: int = CHUNK_SECONDS) -> Any:
    """A ``Qwen2AudioProcessor``: the audio tokenizer, a small Whisper feature extractor
    with a window of ``window_seconds`` (module docstring) and the audio chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    feature_extractor = WhisperFeatureExtractor(
        feature_size=N_MELS,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=window_seconds,
        n_fft=400,
    )
    return Qwen2AudioProcessor(
        feature_extractor, build_audio_tokenizer(), chat_template=AUDIO_CHAT_TEMPLATE
    )


def _config(tokenizer: Any, window_seconds: int) -> Any:
    from transformers import Qwen2AudioConfig

    positions = window_seconds * SAMPLING_RATE // HOP_LENGTH // 2  # conv2 halves the frames
    text = tiny_text_config(tokenizer, model_type="qwen2", tie_word_embeddings=False)
    # the config's __init__ takes extra keyword arguments, unlike its dataclass signature
    return Qwen2AudioConfig(  # type: ignore[call-arg]
        audio_config={**_AUDIO, "max_source_positions": positions},
        text_config=text,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        tie_word_embeddings=False,
    )


def build_tiny_qwen2_audio_model(*, seed: int = 0, window_seconds: int = CHUNK_SECONDS) -> Any:
    """A randomly initialised ``Qwen2AudioForConditionalGeneration`` (fp32, eager) for a
    feature window of ``window_seconds``."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    config = _config(build_audio_tokenizer(), window_seconds)
    torch.manual_seed(seed)
    return Qwen2AudioForConditionalGeneration._from_config(config, attn_implementation="eager")


def build_tiny_qwen2_audio(
    path: str | Path, *, seed: int = 0, window_seconds: int = CHUNK_SECONDS
) -> Path:
    """Write a tiny random-weight Qwen2-Audio and its processor (feature window
    ``window_seconds``) to ``path``; returns it."""
    processor = build_tiny_processor(window_seconds=window_seconds)
    model = build_tiny_qwen2_audio_model(seed=seed, window_seconds=window_seconds)
    return save_tiny(path, model, processor, processor.tokenizer)
