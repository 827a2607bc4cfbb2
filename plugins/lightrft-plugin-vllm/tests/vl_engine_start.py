"""Start the vLLM engine on a vision-language folder exactly as a run does (no test
stand-in) and generate from one image prompt; prints ``prompt ids match`` when vLLM's
expanded prompt equals the processor's. Usage: ``python vl_engine_start.py MODEL_DIR``."""

from __future__ import annotations

import os
import sys

from PIL import Image


def main(model_dir: str) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer

    from lightrft_core.data.encoding import PromptEncoder
    from lightrft_core.interfaces import SamplingParams
    from lightrft_plugin_qwen_vl.processing import load_processor
    from lightrft_plugin_vllm.engine import VLLMEngine

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = PromptEncoder(tokenizer, processor=load_processor(model_dir))
    prompt = encoder.encode({"prompt": "colour?", "images": [Image.new("RGB", (56, 56), "red")]})
    engine = VLLMEngine(VLLMEngine.Config(dtype="float32", max_model_len=256, enforce_eager=True))
    engine.setup(model_path=model_dir, tokenizer=tokenizer)
    params = SamplingParams(max_new_tokens=4, seed=0)
    out = engine.generate([prompt.ids], params, multimodal=[prompt.multimodal])[0]
    if out.prompt_token_ids != prompt.ids:
        sys.exit(f"vLLM generated from {out.prompt_token_ids}, the processor gave {prompt.ids}")
    print("prompt ids match;", len(out.token_ids), "tokens generated")


if __name__ == "__main__":
    main(sys.argv[1])
