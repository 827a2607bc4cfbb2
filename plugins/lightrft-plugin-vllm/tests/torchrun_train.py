"""A worker for ``torchrun``: RL training with ``engine.name=vllm`` on every rank (one vLLM
engine per rank, joined to the trainer's world through vLLM's ``external_launcher``).

Usage: ``torchrun --nproc-per-node=2 torchrun_train.py JOB.json``; the job names ``out``
and config ``overrides``. Rank 0 writes ``out/history.json``; every rank writes
``out/rank<r>.json`` (how its engine was started and how many prompts it generated for).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# before any vllm import: in-process engine, small CPU KV cache
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main(job_path: str) -> None:
    import torch.distributed as dist

    import lightrft_plugin_deepspeed.plugin
    import lightrft_plugin_fsdp.plugin
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_vllm.plugin
    from lightrft_core.config import load_config
    from lightrft_core.plugins import PluginManager
    from lightrft_core.testing.training import LetterPlugin
    from lightrft_core.trainer.rl import RLTrainer

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    out = Path(job["out"])
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    pm.register(lightrft_plugin_deepspeed.plugin, name="deepspeed")
    pm.register(lightrft_plugin_vllm.plugin, name="vllm")
    pm.register(LetterPlugin(), name="letter")
    cfg = load_config(None, [f"run.output_dir={out}", *job["overrides"]], manager=pm)
    trainer = RLTrainer(cfg, pm)
    engine = trainer.c.engine
    prompts_seen: list[int] = []
    generate = engine.generate

    def counting_generate(prompt_token_ids, params):  # type: ignore[no-untyped-def]
        prompts_seen.append(len(prompt_token_ids))
        return generate(prompt_token_ids, params)

    engine.generate = counting_generate
    history = trainer.train().history
    rank = dist.get_rank()
    parallel = engine.llm.llm_engine.vllm_config.parallel_config
    info = {
        "rank": rank,
        "lockstep": engine.lockstep,
        "backend": parallel.distributed_executor_backend,
        "data_parallel_size": parallel.data_parallel_size,
        "data_parallel_rank": parallel.data_parallel_rank,
        "prompts_per_call": prompts_seen,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info), encoding="utf-8")
    if rank == 0:
        (out / "history.json").write_text(json.dumps(history), encoding="utf-8")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
