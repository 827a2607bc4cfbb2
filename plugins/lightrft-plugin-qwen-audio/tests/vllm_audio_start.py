"""Start the vLLM engine on a Qwen2-Audio folder exactly as a run does and generate from one
prompt with a clip; prints ``generated N tokens`` on success.
Usage: ``python vllm_audio_start.py MODEL_DIR``."""

from __future__ import annotations

import os
import sys


def main(model_dir: str) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from lightrft_core.interfaces import MultiModalInputs, SamplingParams
    from lightrft_plugin_qwen_audio.actor import QwenAudioActor
    from lightrft_plugin_qwen_audio.testing import tone
    from lightrft_plugin_vllm.engine import VLLMEngine

    processor = QwenAudioActor.load_processor(model_dir)
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "pitch?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    clip = tone(1.0, 440.0)
    out = processor(text=[chat], audio=[clip], sampling_rate=16_000, return_tensors="pt")
    tensors = {k: out[k] for k in ("input_features", "feature_attention_mask")}
    engine = VLLMEngine(VLLMEngine.Config(dtype="float32", max_model_len=256, enforce_eager=True))
    engine.setup(model_path=model_dir, tokenizer=processor.tokenizer)
    media = MultiModalInputs(tensors=tensors, audios=[clip])
    result = engine.generate(
        [out["input_ids"][0].tolist()], SamplingParams(max_new_tokens=4, seed=0), multimodal=[media]
    )[0]
    print("generated", len(result.token_ids), "tokens")


if __name__ == "__main__":
    main(sys.argv[1])
