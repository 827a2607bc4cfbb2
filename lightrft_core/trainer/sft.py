"""Supervised fine-tuning (``lightrft sft``): the same strategy, data and logging parts as
RL, with the negative log-likelihood of the response tokens as the loss.

Under ``torchrun`` every rank draws the same shuffled batches and trains on its contiguous
share of each (``sft.batch_size`` is global); the loss divides by the batch's token count
over all ranks, so a step is the same whatever the number of ranks.

With sequence parallelism (``strategy.sequence_parallel_size`` P > 1) the P ranks of a group
take the same share (``data_ranks``) and split each of its sequences in the actor's forward
(every rank of the group gets the whole log-probs): the batch's tokens are counted once per
group, the loss keeps the scale of every rank (``strategy.world_size``, over which the
strategy averages gradients), and the logged loss sums one rank per group. Packed rows
are split like padded ones; media are refused (``check_splittable``).

Rows with images (see docs/multimodal.md) are encoded by the model's processor; each
micro-batch passes the actor the rows' image tensors it declares
(``Actor.get_supported_parameters``), concatenated in row order."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import LightRFTConfig
from ..data.sft import SFTDataset, SFTItem, collate
from ..interfaces import Actor
from ..interfaces.multimodal import collate_modal_inputs
from ..plugins import PluginManager, get_plugin_manager
from .bootstrap import (
    RunStart,
    finish_run,
    open_run_log,
    released_on_error,
    start_run,
    unwrapped_actor,
)
from .data import media_kinds
from .distributed import (
    check_group_agrees,
    check_splittable,
    data_ranks,
    model_init_context,
    no_sync,
)
from .micro_batches import actor_forward, agree_over_ranks, plan_micro_batches, resolve_packing
from .supervised import prepare_supervised


@dataclass
class SFTResult:
    output_dir: Path
    final_model: Path
    history: list[dict[str, Any]]


def run_sft(
    cfg: LightRFTConfig,
    manager: PluginManager | None = None,
    *,
    console: Any = None,
    progress: Any = None,
) -> SFTResult:
    """Train ``model`` on ``data.train_path`` (prompt/response rows); export to ``final/``."""
    d, s = cfg.data, cfg.sft
    if d.train_path is None:
        raise ValueError("data.train_path is not set: SFT needs prompt/response rows")
    manager = manager or get_plugin_manager()
    start = start_run(cfg, manager, global_batches={"sft.batch_size": s.batch_size})
    with released_on_error(start):  # finish_run releases the run folder after a clean run
        return _train_sft(cfg, manager, start, d.train_path, console, progress)


def _train_sft(
    cfg: LightRFTConfig,
    manager: PluginManager,
    start: RunStart,
    train_path: str,
    console: Any,
    progress: Any,
) -> SFTResult:
    d, s = cfg.data, cfg.sft
    strategy, tokenizer = start.strategy, start.tokenizer
    with model_init_context(strategy):
        built = manager.get_actor(cfg.model.name)(cfg.model.options)
    dataset = SFTDataset.from_source(
        train_path,
        tokenizer,
        d,
        response_key=d.response_key,
        max_length=s.max_length,
        processor=start.processor,
    )
    check_actor_takes_media(built, dataset)
    cfg.trainer.packing = resolve_packing(cfg.trainer.packing, built)  # 'auto' resolved
    check_splittable(
        strategy,
        shared_critic=False,
        media=any(item.multimodal is not None for item in dataset),
    )
    actor, optimizer, scheduler, total = prepare_supervised(cfg, strategy, built, len(dataset))
    policy = unwrapped_actor(strategy, actor)
    metrics = open_run_log(cfg, strategy, manager, console=console)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    generator = torch.Generator().manual_seed(cfg.run.seed)
    row_ranks = data_ranks(strategy)  # the rows: one rank per sequence-parallel group
    world_size = strategy.world_size  # the loss scale: gradients are averaged over every rank
    step = 0
    actor.train()
    for _epoch in range(s.epochs):
        for batch_rows in torch.randperm(len(dataset), generator=generator).split(s.batch_size):
            if step >= total:
                break
            # a short last batch is cut to a multiple of the ranks (equal shares)
            share = len(batch_rows) // row_ranks.world_size
            if share == 0:
                continue
            started = time.perf_counter()
            items = [dataset[int(i)] for i in batch_rows]
            batch = {k: v.to(strategy.device) for k, v in collate(items, pad_id).items()}
            target = batch["loss_mask"][:, 1:].float()  # [B, T-1], aligned with log-probs
            num_tokens = max(1.0, float(target[: share * row_ranks.world_size].sum()))
            own = torch.arange(row_ranks.rank * share, (row_ranks.rank + 1) * share)
            check_group_agrees(strategy, {"tokens": batch["input_ids"][own]})
            plan = plan_micro_batches(
                batch["attention_mask"][own].sum(-1).cpu(),
                micro_batch_size=s.micro_batch_size,
                max_tokens=cfg.trainer.max_tokens_per_micro_batch,
                packing=cfg.trainer.packing,
                agree=agree_over_ranks(strategy),
            )
            mine = [own[positions] for positions in plan]
            loss_sum = 0.0
            for index, rows in enumerate(mine):
                last = index == len(mine) - 1
                media = modal_inputs(policy, [items[int(r)] for r in rows], strategy.device)
                with nullcontext() if last else no_sync(strategy, actor):
                    with strategy.autocast():
                        ids, mask = batch["input_ids"][rows], batch["attention_mask"][rows]
                        lp = actor_forward(
                            actor, policy, ids, mask, packing=cfg.trainer.packing, **media
                        )
                    loss = -(lp.log_probs.float() * target[rows]).sum() / num_tokens * world_size
                    strategy.backward(loss, actor)
                loss_sum += float(loss.detach())
            grad_norm = strategy.optimizer_step(
                actor, optimizer, scheduler, max_grad_norm=cfg.trainer.max_grad_norm
            )
            step += 1
            as_double = torch.tensor([loss_sum, time.perf_counter() - started], dtype=torch.float64)
            loss_sum = float(row_ranks.all_reduce(as_double[:1], op="sum"))
            elapsed = float(strategy.all_reduce(as_double[1:], op="max"))
            metrics.log(
                step,
                {
                    "sft/loss": loss_sum / world_size,
                    "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": float(batch["attention_mask"].sum()) / elapsed,
                    "time/step": elapsed,
                },
            )
            if progress is not None:
                progress(step, total)
    final = finish_run(start, policy.hf_model(), metrics)
    return SFTResult(start.output_dir, final, metrics.history)


def check_actor_takes_media(actor: Actor, dataset: SFTDataset) -> None:
    """Rows with media need an actor that declares their inputs; one error if it does not."""
    keys = {k for item in dataset if item.multimodal is not None for k in item.multimodal.tensors}
    missing = keys - actor.get_supported_parameters()
    if missing:
        media = media_kinds(item.multimodal for item in dataset)
        raise ValueError(
            f"the SFT rows carry {media} but actor {type(actor).__name__} "
            f"({actor.modality.value}) does not take {sorted(missing)}; use an actor that "
            f"reads {media} (vision-language for images, audio-language for audio, omni for "
            f"both), or remove the {media} from the data"
        )


def modal_inputs(actor: Actor, items: list[SFTItem], device: torch.device) -> dict[str, Any]:
    """The media of a micro-batch's rows as ``actor`` takes them (empty for text rows)."""
    media = collate_modal_inputs(
        [item.multimodal for item in items], actor.get_supported_parameters()
    )
    return {k: v.to(device) for k, v in actor.select_inputs(media).items()}
