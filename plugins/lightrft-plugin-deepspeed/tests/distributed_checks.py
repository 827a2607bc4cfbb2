"""Multi-process checks of the deepspeed strategy; ``test_distributed.py`` runs them.

    torchrun --nproc-per-node 2 distributed_checks.py train  WORKDIR
    torchrun --nproc-per-node 2 distributed_checks.py resume WORKDIR

``WORKDIR`` holds what the test prepared (``model/``: a tiny Qwen2 with the byte
tokenizer; ``batches.pt``: fixed GRPO batches; ``zero.json``: a user DeepSpeed file that
makes ZeRO-3 shard even the smallest tensors). Rank 0 (and every rank for per-rank state)
writes what it measured into ``WORKDIR/results``; the test compares. Each launch runs
many checks because a torchrun launch costs seconds.

This module is also imported by the test (by path) for the shared batch arithmetic.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.interfaces import LossScale, PolicyLossInput, SamplingParams
from lightrft_plugin_grpo.grpo import GRPO

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 0.05  # below the batch's gradient norm: clipping is active
MICRO_BATCHES = 2  # per rank and optimizer step (and for the local reference)
SCHEDULE = {"name": "cosine", "warmup_steps": 0, "total_steps": 4}
#: One step each, compared with local: offload paths (same numbers), and bf16 (close ones).
VARIANTS = [
    ("stage2_offload_optimizer", 2, {"offload_optimizer": True}),
    (
        "stage3_offload_all_bf16",
        3,
        {"offload_optimizer": True, "offload_param": True, "precision": "bf16"},
    ),
]
LORA_RANK = 4
PROMPTS = [[72, 105, 33, 32], [49, 43, 50, 61]]  # "Hi! ", "1+2="


# ---------------------------------------------------------------------- shared arithmetic
def load_actor(model_dir: Path, lora_rank: int = 0) -> ActorLanguage:
    torch.manual_seed(0)  # LoRA adapters start from the same random values everywhere
    options = ActorLanguage.Config(
        path=str(model_dir), attn_implementation="eager", lora_rank=lora_rank
    )
    return ActorLanguage(options)


def grpo_step(strategy: Any, model: Any, optimizer: Any, scheduler: Any, batch: dict, rows: Any):
    """One optimizer step of GRPO on ``batch[rows]`` (this rank's share) in ``MICRO_BATCHES``
    micro-batches, scaled for the whole batch of every rank. Returns the gradient norm."""
    algorithm = GRPO(GRPO.Config())
    scale = LossScale(
        num_tokens=int(batch["action_mask"].sum()),
        num_sequences=batch["sequences"].shape[0],
        world_size=strategy.world_size,
    )
    for part in torch.as_tensor(rows).chunk(MICRO_BATCHES):
        out = model(batch["sequences"][part], batch["attention_mask"][part])
        loss = algorithm.policy_loss(
            PolicyLossInput(
                log_probs=out.log_probs.float(),
                old_log_probs=batch["old_log_probs"][part],
                advantages=batch["advantages"][part],
                action_mask=batch["action_mask"][part],
                scale=scale,
            )
        )
        strategy.backward(loss.loss, model)
    return strategy.optimizer_step(model, optimizer, scheduler, max_grad_norm=MAX_GRAD_NORM)


def build_training(strategy: Any, model_dir: Path, lora_rank: int = 0) -> tuple[Any, Any, Any]:
    actor = load_actor(model_dir, lora_rank)
    optimizer = strategy.create_optimizer(actor, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = strategy.create_scheduler(optimizer, **SCHEDULE)
    return strategy.prepare(actor, optimizer, scheduler)


# ---------------------------------------------------------------------- worker helpers
def rank_rows(strategy: Any, batch: dict) -> torch.Tensor:
    rows = torch.arange(batch["sequences"].shape[0])
    return rows.chunk(strategy.world_size)[strategy.rank]


def make_strategy(workdir: Path, stage: int, **options: Any) -> Any:
    from lightrft_plugin_deepspeed.strategy import DeepSpeedStrategy

    options = DeepSpeedStrategy.Config(
        zero_stage=stage,
        config_file=str(workdir / "zero.json"),
        timeout_s=120,  # a collective waiting on a rank that never joins fails, not hangs
        **options,
    )
    strategy = DeepSpeedStrategy(options)
    strategy.setup_distributed()
    return strategy


def full_weights(strategy: Any, model: Any) -> dict[str, torch.Tensor]:
    """The transformers model's whole state dict (rank 0; empty elsewhere)."""
    from lightrft_plugin_deepspeed.zero3 import full_state_dict

    return full_state_dict(strategy.unwrap(model).model, rank=strategy.rank)


def optimizer_tensors(optimizer: Any) -> dict[str, torch.Tensor]:
    """This rank's shard of the optimizer state (master weights, Adam moments), flat."""
    inner = optimizer.optimizer  # the torch optimizer inside DeepSpeed's ZeRO optimizer
    found: dict[str, torch.Tensor] = {}
    for g, group in enumerate(inner.param_groups):
        for p, param in enumerate(group["params"]):
            found[f"param.{g}.{p}"] = param.detach().clone()
            for key, value in inner.state.get(param, {}).items():
                if torch.is_tensor(value):
                    found[f"state.{g}.{p}.{key}"] = value.detach().clone()
    return found


def all_available(module: torch.nn.Module) -> bool:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return all(p.ds_status == ZeroParamStatus.AVAILABLE for p in module.parameters())


def shard_fraction(module: torch.nn.Module) -> float:
    """Elements this rank stores / elements of the model (about 1/world_size under ZeRO-3)."""
    stored = sum(
        p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in module.parameters()
    )
    full = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in module.parameters())
    return stored / full


def generate(model: torch.nn.Module, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    """Greedy continuations by the ``hf`` engine (no EOS: always ``tokens`` long)."""
    from lightrft_core.engines.hf import HFEngine

    engine = HFEngine()
    engine.setup(model=model)
    engine.eos_token_ids = []
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=tokens)
    return [o.token_ids for o in engine.generate(prompts, params)]


# ---------------------------------------------------------------------- modes
def run_train(workdir: Path) -> None:
    batches = torch.load(workdir / "batches.pt")
    first, second = batches
    out = workdir / "results"
    results: dict[str, Any] = {}
    for stage in (1, 2, 3):
        strategy = make_strategy(workdir, stage)
        model, optimizer, scheduler = build_training(strategy, workdir / "model")
        norm = grpo_step(strategy, model, optimizer, scheduler, first, rank_rows(strategy, first))
        entry: dict[str, Any] = {
            "norm": norm,
            "weights": full_weights(strategy, model),
            "lr": scheduler.get_last_lr(),
            "shard_fraction": shard_fraction(strategy.unwrap(model)),
        }
        if stage in (2, 3):
            strategy.export_hf(model.model, out / f"export_stage{stage}", tokenizer=None)
            with torch.no_grad():
                entry["log_probs"] = model(first["sequences"], first["attention_mask"]).log_probs
        if stage == 3:
            entry.update(zero3_checks(strategy, model, workdir))
            entry.update(checkpoint_checks(strategy, model, optimizer, scheduler, second, out))
        results[f"stage{stage}"] = entry
    for name, stage, options in VARIANTS:
        strategy = make_strategy(workdir, stage, **options)
        model, optimizer, scheduler = build_training(strategy, workdir / "model")
        norm = grpo_step(strategy, model, optimizer, scheduler, first, rank_rows(strategy, first))
        results[name] = {"norm": norm, "weights": full_weights(strategy, model)}
    strategy = make_strategy(workdir, 2)  # LoRA: adapters trained, exported merged
    model, optimizer, scheduler = build_training(strategy, workdir / "model", LORA_RANK)
    norm = grpo_step(strategy, model, optimizer, scheduler, first, rank_rows(strategy, first))
    strategy.export_hf(model.model, out / "export_lora", tokenizer=None)
    results["stage2_lora"] = {"norm": norm}
    if strategy.is_rank_0:
        torch.save(results, out / "train.pt")


def zero3_checks(strategy: Any, model: Any, workdir: Path) -> dict[str, Any]:
    """Generation through the hf engine on the shared (partitioned) transformers model in
    the strategy's generation context -- each rank a different amount, as ranks do with
    their own prompts; and the reference model prepared without optimizer."""
    hf_model = model.model
    prompts, tokens = generation_share(strategy.rank)
    with strategy.generation_context(model):
        found: dict[str, Any] = {f"tokens_rank{strategy.rank}": generate(hf_model, prompts, tokens)}
        found["held_during_generation"] = all_available(hf_model)
    found["released_after_context"] = not all_available(hf_model)
    gathered = strategy.all_gather(torch.tensor([float(found["held_during_generation"])]))
    found["held_on_every_rank"] = bool(gathered.all())
    found["tokens_rank1"] = tokens_of_rank_1(strategy, found.get("tokens_rank1"))
    reference = load_actor(workdir / "model")
    reference.requires_grad_(False)
    prepared, none, _ = strategy.prepare(reference)
    found["reference_optimizer_is_none"] = none is None
    found["reference_shard_fraction"] = shard_fraction(strategy.unwrap(prepared))
    batch = torch.load(workdir / "batches.pt")[0]
    with torch.no_grad():
        found["reference_log_probs"] = prepared(
            batch["sequences"], batch["attention_mask"]
        ).log_probs
    return found


def generation_share(rank: int) -> tuple[list[list[int]], int]:
    """Rank 0 generates both prompts for 6 tokens, rank 1 one prompt for 2 tokens."""
    return (PROMPTS, 6) if rank == 0 else (PROMPTS[:1], 2)


def tokens_of_rank_1(strategy: Any, tokens: list[list[int]] | None) -> list[list[int]]:
    """Rank 1's generated tokens, known on every rank (to be saved by rank 0)."""
    import torch.distributed as dist

    box = [tokens]
    dist.broadcast_object_list(box, src=1)
    return box[0]


def checkpoint_checks(
    strategy: Any, model: Any, optimizer: Any, scheduler: Any, batch: dict, out: Path
) -> dict[str, Any]:
    """Save after the first step; a failing save over it must leave it intact; then the
    next step (what a resumed run must reproduce)."""
    from lightrft_plugin_deepspeed import checkpointing

    path = out / "checkpoint"
    client = {"step": 1, "sampler": {"epoch": 0, "position": 4}}
    strategy.save_checkpoint(
        path, model=model, optimizer=optimizer, scheduler=scheduler, client_state=client
    )
    rank = strategy.rank
    torch.save(
        {"optimizer": optimizer_tensors(optimizer), "rng": torch.rand(4)},
        out / f"saved_rank{rank}.pt",
    )
    saved_weights = full_weights(strategy, model)
    original = checkpointing.save_rank_states

    def disk_full_on_rank_1(folder: Any, rank: int) -> None:  # after DeepSpeed wrote shards
        if rank == 1:
            raise OSError("disk full (injected on rank 1)")
        original(folder, rank)

    checkpointing.save_rank_states = disk_full_on_rank_1
    try:
        strategy.save_checkpoint(
            path, model=model, optimizer=optimizer, scheduler=scheduler, client_state={"step": 2}
        )
        raised = "nothing"
    except (OSError, RuntimeError) as err:
        raised = type(err).__name__
    finally:
        checkpointing.save_rank_states = original
    strategy.barrier()
    norm = grpo_step(strategy, model, optimizer, scheduler, batch, rank_rows(strategy, batch))
    return {
        "saved_weights": saved_weights,
        "failed_save_raised": raised,
        "checkpoint_files": sorted(p.name for p in path.iterdir()),
        "siblings": sorted(p.name for p in path.parent.iterdir() if "checkpoint" in p.name),
        "next_norm": norm,
        "next_weights": full_weights(strategy, model),
        "next_lr": scheduler.get_last_lr(),
    }


def run_resume(workdir: Path) -> None:
    """A new process group loads the checkpoint into a fresh model and takes the next step."""
    second = torch.load(workdir / "batches.pt")[1]
    out = workdir / "results"
    strategy = make_strategy(workdir, 3)
    model, optimizer, scheduler = build_training(strategy, workdir / "model")
    client = strategy.load_checkpoint(
        out / "checkpoint", model=model, optimizer=optimizer, scheduler=scheduler
    )
    rank = strategy.rank
    torch.save(
        {"optimizer": optimizer_tensors(optimizer), "rng": torch.rand(4)},
        out / f"loaded_rank{rank}.pt",
    )
    found = {
        "client_state": client,
        "loaded_weights": full_weights(strategy, model),
        "loaded_lr": scheduler.get_last_lr(),
    }
    found["next_norm"] = grpo_step(
        strategy, model, optimizer, scheduler, second, rank_rows(strategy, second)
    )
    found["next_weights"] = full_weights(strategy, model)
    found["next_lr"] = scheduler.get_last_lr()
    if strategy.is_rank_0:
        torch.save(found, out / "resume.pt")


if __name__ == "__main__":
    mode, workdir = sys.argv[1], Path(sys.argv[2])
    {"train": run_train, "resume": run_resume}[mode](workdir)
