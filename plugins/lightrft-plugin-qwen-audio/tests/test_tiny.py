"""The tiny Qwen2-Audio folder: its processor loads without torchaudio and agrees with the
model on the number of audio tokens and the feature window."""

from __future__ import annotations

from pathlib import Path

import torch

from lightrft_plugin_qwen_audio.testing import tone
from lightrft_plugin_qwen_audio.tiny import FRAMES, N_MELS, audio_token_count


def test_audio_token_count_by_hand() -> None:
    # 100 frames -> conv2 (stride 2): 50 -> pool (stride 2): 25; 150 -> 75 -> 37; 200 -> 50.
    assert [audio_token_count(f) for f in (100, 150, 200)] == [25, 37, 50]


def test_processor_and_model_agree(tiny_qwen_audio_dir: Path) -> None:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_qwen_audio_dir)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_qwen_audio_dir)
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    assert (
        model.config.text_config.hidden_size // model.config.text_config.num_attention_heads == 64
    )
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>hi<|im_end|>\n<|im_start|>assistant\n"
    )
    clips = [tone(1.0, 440.0), tone(3.0, 220.0)]  # the second is cut to the 2 s window
    out = processor(
        text=[text, text], audio=clips, sampling_rate=16_000, return_tensors="pt", padding=True
    )
    assert out["input_features"].shape == (2, N_MELS, FRAMES)
    assert out["feature_attention_mask"].sum(-1).tolist() == [100, 200]
    audio_id = model.config.audio_token_id
    assert (out["input_ids"] == audio_id).sum(-1).tolist() == [25, 50]
    with torch.no_grad():
        logits = model(**out).logits
    assert logits.shape == (2, out["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
