"""A worker for ``torchrun``: one vLLM engine shared by 2 ranks (``tp_size=2``, vLLM's
``external_launcher``) while each rank asks for its own prompts.

Usage: ``torchrun --nproc-per-node=2 torchrun_tensor_parallel.py MODEL_DIR OUT_DIR``; every
rank writes ``OUT_DIR/rank<r>.json``: its own answers, rank 0's answers to every prompt (rank
1 asks for none in that call), and the worst gap between the engine's log-probs and the
actor's after ``update_weights`` with perturbed weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# before any vllm import: in-process engine, small CPU KV cache
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROMPTS = [[72, 101, 108], [87, 111], [40, 41, 42, 43], [50, 51], [60, 61, 62, 63, 64]]
OWN = {0: [0, 1], 1: [2, 3, 4]}  # rank -> indices into PROMPTS


def main(model_dir: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from lightrft_core.actors.language import ActorLanguage
    from lightrft_core.interfaces import SamplingParams
    from lightrft_core.models.tiny import build_byte_tokenizer
    from lightrft_plugin_vllm.engine import VLLMEngine

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    engine = VLLMEngine(
        VLLMEngine.Config(tp_size=2, dtype="float32", max_model_len=128, enforce_eager=True)
    )
    engine.setup(model_path=model_dir, tokenizer=build_byte_tokenizer())
    mine = [PROMPTS[i] for i in OWN[rank]]
    greedy = SamplingParams(n=2, temperature=0.0, max_new_tokens=6)
    own = engine.generate(mine, greedy)
    everything = engine.generate(PROMPTS if rank == 0 else [], greedy)

    actor = ActorLanguage(ActorLanguage.Config(path=model_dir, attn_implementation="eager"))
    generator = torch.Generator().manual_seed(0)  # the same perturbation on both ranks
    with torch.no_grad():
        for parameter in actor.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    engine.update_weights(actor.named_weights_for_sync())
    sampled = engine.generate(mine, SamplingParams(n=3, max_new_tokens=6, seed=rank))
    worst = 0.0
    for out in sampled:
        prompt = mine[out.prompt_index]
        sequence = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            expected = actor(sequence, torch.ones_like(sequence)).log_probs[0, len(prompt) - 1 :]
        worst = max(worst, float((torch.tensor(out.log_probs) - expected).abs().max()))

    def rows(outputs):  # type: ignore[no-untyped-def]
        return [[o.prompt_index, o.token_ids] for o in outputs]

    result = {
        "tp_group_size": dist.get_world_size(engine.tp_group),
        "lockstep": engine.lockstep,
        "own": rows(own),
        "everything": rows(everything),
        "sampled_prompt_indices": [o.prompt_index for o in sampled],
        "worst_logprob_gap_after_update": worst,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left to the interpreter's exit can abort it


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
