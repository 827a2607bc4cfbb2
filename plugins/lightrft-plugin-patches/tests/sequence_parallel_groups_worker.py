"""Run on 4 ranks (``torchrun ... sequence_parallel_groups_worker.py OUT``, gloo on the CPU)
by ``test_sequence_parallel_groups.py``: the loops under fsdp with two sequence-parallel
groups of 2 (ranks 0-1 and 2-3; data-parallel size 2), then the RL reference on 2 ranks.

With ``OUT/plan.json`` (``rl_split``, ``sft_split``, ``rl_pairs``: lists of overrides):
``lightrft train``'s loop (``RLTrainer``) and ``lightrft sft``'s (``run_sft``) with
``sequence_parallel_size=2`` on the 4 ranks; then ranks 2 and 3 leave, and ranks 0 and 1 form
a group of 2 (through a file store) and run the RL loop with ``sequence_parallel_size=1``:
the same two data ranks (so the same prompts and sampling seeds) with every sequence whole.
Rank 0 writes ``OUT/result.json``: the split run's group sizes and whether its actor and
reference forwards were the split one. Every group made here is destroyed before exit."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from lightrft_plugin_patches.sequence_parallel import sequence_parallel_forward


def plugin_manager() -> Any:
    """The plugins the runs use (grpo, fsdp and the letter reward), registered explicitly."""
    import lightrft_plugin_fsdp.plugin
    import lightrft_plugin_grpo.plugin
    from lightrft_core.plugins import PluginManager
    from lightrft_core.testing.training import LetterPlugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    pm.register(LetterPlugin(), name="letter")
    return pm


def fsdp(sequence_parallel_size: int) -> list[str]:
    return [
        "strategy.name=fsdp",
        "strategy.backend=gloo",
        f"strategy.sequence_parallel_size={sequence_parallel_size}",
    ]


def rl_run(overrides: list[str], sequence_parallel_size: int) -> Any:
    """The RL loop; returns its trainer."""
    from lightrft_core.config import load_config
    from lightrft_core.trainer.rl import RLTrainer

    pm = plugin_manager()
    cfg = load_config(None, [*overrides, *fsdp(sequence_parallel_size)], manager=pm)
    trainer = RLTrainer(cfg, pm)
    trainer.train()
    return trainer


def split_summary(trainer: Any) -> dict[str, Any]:
    """The strategy's group sizes and whether the actor's and the reference's forwards were
    the split one."""

    def splits(model: Any) -> bool:
        return vars(model)["forward"].func is sequence_parallel_forward

    s = trainer.c.strategy
    return {
        "world_size": s.world_size,
        "data_parallel_size": s.data_parallel_size,
        "sequence_parallel_size": s.sequence_parallel_size,
        "actor": splits(trainer.actor),
        "reference": splits(trainer.reference),
    }


def sft_run(overrides: list[str]) -> None:
    from lightrft_core.config import load_config
    from lightrft_core.trainer.sft import run_sft

    pm = plugin_manager()
    run_sft(load_config(None, [*overrides, *fsdp(2)], manager=pm), pm)


def main(out: Path) -> None:
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    split = split_summary(rl_run(plan["rl_split"], 2))
    if rank == 0:
        (out / "result.json").write_text(json.dumps(split), encoding="utf-8")
    sft_run(plan["sft_split"])
    dist.barrier()
    dist.destroy_process_group()
    if rank >= 2:
        return
    store = dist.FileStore(str(out / "pair.store"), 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    rl_run(plan["rl_pairs"], 1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
