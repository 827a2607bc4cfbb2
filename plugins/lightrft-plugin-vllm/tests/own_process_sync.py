"""Start the vLLM engine with its engine core in its own process
(``VLLM_ENABLE_V1_MULTIPROCESSING=1``, without ``VLLM_ALLOW_INSECURE_SERIALIZATION``),
perturb the actor's weights, ``update_weights``, and print the largest log-prob gap between
the engine and the actor before and after the sync, as ``stale GAP`` and ``synced GAP``.
Usage: ``python own_process_sync.py MODEL_DIR``."""

from __future__ import annotations

import os
import sys
from typing import Any

import torch


def worst_gap(actor: Any, engine: Any, prompts: list[list[int]]) -> float:
    """The largest |engine - actor| log-prob over sampled responses to ``prompts``."""
    from lightrft_core.interfaces import SamplingParams

    worst = 0.0
    for out in engine.generate(prompts, SamplingParams(n=2, max_new_tokens=8, seed=5)):
        sequence = torch.tensor([prompts[out.prompt_index] + out.token_ids])
        with torch.no_grad():
            log_probs = actor(sequence, torch.ones_like(sequence)).log_probs[0]
        expected = log_probs[len(prompts[out.prompt_index]) - 1 :]
        got = torch.tensor(out.log_probs)
        if got.shape != expected.shape:
            sys.exit(f"engine gave {got.shape[0]} log-probs for {expected.shape[0]} tokens")
        worst = max(worst, float((got - expected).abs().max()))
    return worst


def main(model_dir: str) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    os.environ.pop("VLLM_ALLOW_INSECURE_SERIALIZATION", None)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from lightrft_core.actors.language import ActorLanguage
    from lightrft_core.models.tiny import build_byte_tokenizer
    from lightrft_plugin_vllm.engine import VLLMEngine

    engine = VLLMEngine(VLLMEngine.Config(dtype="float32", max_model_len=256, enforce_eager=True))
    engine.setup(model_path=model_dir, tokenizer=build_byte_tokenizer())
    if engine.in_process:
        sys.exit("the engine ran in-process")
    actor = ActorLanguage(ActorLanguage.Config(path=model_dir, attn_implementation="eager"))
    actor.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in actor.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    prompts = [[72, 101, 108, 108, 111], [87, 111], [40, 41, 42, 43, 44, 45, 46, 47]]
    print(f"stale {worst_gap(actor, engine, prompts):.3g}", flush=True)
    engine.update_weights(actor.named_weights_for_sync())
    print(f"synced {worst_gap(actor, engine, prompts):.3g}", flush=True)
    engine.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
