"""The torchrun worker of ``test_distributed_multimodal.py``: GRPO on image rows (a text row
mixed in) with the tiny Qwen2-VL ``qwen_vl`` actor, or on audio rows with the tiny
Qwen2-Audio ``qwen_audio`` actor, under any strategy.

``torchrun tests/multimodal_distributed_worker.py PLAN`` runs each job of the JSON list
``PLAN`` (``{"job": "step" | "train" | "audio_patch", "out": ..., "overrides": [...],
"ranks": [0]?}``) on every rank it names. ``train`` is ``RLTrainer(...).train()``.
``audio_patch`` (``{"model": FOLDER}``) runs the patch ``qwen2_audio_position_embedding`` on
a Qwen2-Audio encoder sharded with FSDP2 over the ranks (module ``audio_patch_check``).
``step`` (the model is the run's ``model.name``):

1. builds ``RLTrainer`` (the strategy shards the actor and the reference) and generates one
   round on this rank's prompts with the ``hf`` engine (images in the prompts, the sharded
   model gathered by ``generation_context``); records the largest difference between the
   engine's and the actor's log-probs of what it generated;
2. takes one GRPO optimizer step on a fixed rollout of every prompt of the data (random
   responses, the same on every rank and in every run; each rank takes its contiguous
   share), then exports the model;
3. on rank 0 writes ``result.json``: the step's metrics, the generation check, the largest
   log-prob difference between the trained (sharded) model and its reloaded export, the
   classes of the FSDP units (empty under other strategies) and how many rows of each
   rank's share have media.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch


def plugin_manager() -> Any:
    """grpo, qwen_vl, qwen_audio and both sharded strategies, registered explicitly."""
    import lightrft_plugin_deepspeed.plugin
    import lightrft_plugin_fsdp.plugin
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_qwen_audio.plugin
    import lightrft_plugin_qwen_vl.plugin
    from lightrft_core.plugins import PluginManager

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_qwen_vl.plugin, name="qwen_vl")
    pm.register(lightrft_plugin_qwen_audio.plugin, name="qwen_audio")
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    pm.register(lightrft_plugin_deepspeed.plugin, name="deepspeed")
    return pm


def fixed_rollout(items: list[Any], pad_id: int, eos_id: int, *, group: int, seed: int) -> Any:
    """``len(items) * group`` samples of the prompts ``items`` (their media kept): random byte
    responses of 2..6 tokens (some ending in EOS), rewards in [0, 1]."""
    from lightrft_core.interfaces import GenerationOutput
    from lightrft_core.trainer.experience import build_rollout

    g = torch.Generator().manual_seed(seed)
    outputs = []
    for index in range(len(items)):
        for _ in range(group):
            length = int(torch.randint(2, 7, (1,), generator=g))
            tokens = torch.randint(97, 123, (length,), generator=g).tolist()
            if torch.rand(1, generator=g) < 0.5:
                tokens[-1] = eos_id
            outputs.append(GenerationOutput(prompt_index=index, token_ids=tokens))
    return build_rollout(
        [item.prompt_ids for item in items],
        outputs,
        torch.rand(len(outputs), generator=g),
        group_size=group,
        pad_id=pad_id,
        multimodal=[item.multimodal for item in items],
    )


class _NoTimer:
    """A ``PhaseTimer`` stand-in that times nothing."""

    def __call__(self, name: str) -> Any:
        return nullcontext()


def _rows_with_media(rollout: Any) -> int:
    return sum(item is not None for item in rollout.multimodal or [])


def _masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b) * mask).abs().max())


def grpo_step(job: dict[str, Any], pm: Any) -> None:
    import dataclasses

    from lightrft_core.config import load_config
    from lightrft_core.interfaces import AdvantageInput
    from lightrft_core.trainer.bootstrap import unwrapped_actor
    from lightrft_core.trainer.rl import RLTrainer

    cfg = load_config(None, [f"run.output_dir={job['out']}", *job["overrides"]], manager=pm)
    trainer = RLTrainer(cfg, pm)
    s, c = trainer.c.strategy, trainer.c

    # generation with the media on this rank's prompts, then the actor's log-probs of it
    generated = trainer._build_rollout(trainer._collect(1, _NoTimer()))
    actor_lp = trainer._log_probs(trainer.actor, generated)
    engine_diff = _masked_max_diff(actor_lp, generated.engine_log_probs, generated.action_mask)
    engine_diff = float(s.all_reduce(torch.tensor(engine_diff), op="max"))

    # one GRPO step on the fixed rollout, each rank its contiguous share
    items = list(trainer.data.sampler.dataset)
    everything = fixed_rollout(
        items, trainer.data.pad_id, c.tokenizer.eos_token_id, group=4, seed=0
    )
    share = len(everything) // s.world_size
    rollout = everything.select(list(range(s.rank * share, (s.rank + 1) * share)))
    with_media = s.all_gather(torch.tensor([_rows_with_media(rollout)])).tolist()
    rollout.old_log_probs = trainer._log_probs(trainer.actor, rollout)
    if c.reference is not None:
        rollout.ref_log_probs = trainer._log_probs(c.reference, rollout)
    rollout.advantages = c.algorithm.compute_advantages(
        AdvantageInput(
            rewards=rollout.rewards,
            action_mask=rollout.action_mask,
            group_size=rollout.group_size,
            old_log_probs=rollout.old_log_probs,
            ref_log_probs=rollout.ref_log_probs,
        )
    ).advantages
    metrics = trainer._train(rollout, step=1)
    out = Path(job["out"])
    policy = unwrapped_actor(s, trainer.actor)
    s.export_hf(policy.hf_model(), out / "export", trainer.run.processor)
    trained = trainer._log_probs(trainer.actor, everything)  # the sharded model, all rows
    if s.is_rank_0:
        from torch.distributed.fsdp import FSDPModule

        actor_cls = pm.get_actor(cfg.model.name)
        exported = actor_cls(dataclasses.replace(cfg.model.options, path=str(out / "export")))
        with torch.no_grad():
            reloaded = exported(
                everything.sequences,
                everything.attention_mask,
                **exported.select_inputs(everything.modal_inputs()),
            ).log_probs
        result = {
            "metrics": metrics,
            "fsdp_units": sorted(
                {type(m).__name__ for m in trainer.actor.modules() if isinstance(m, FSDPModule)}
            ),
            "world_size": s.world_size,
            "rows_with_media_per_rank": with_media,
            "engine_logprob_diff": engine_diff,
            "export_logprob_diff": _masked_max_diff(trained, reloaded, everything.action_mask),
        }
        (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


def train(job: dict[str, Any], pm: Any) -> None:
    from lightrft_core.config import load_config
    from lightrft_core.trainer.rl import RLTrainer

    cfg = load_config(None, [f"run.output_dir={job['out']}", *job["overrides"]], manager=pm)
    RLTrainer(cfg, pm).train()


def _encoder_run(encoder: Any, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's output on ``features`` and the gradient on ``conv1`` of a fixed random
    projection of it (a plain sum would be flat: the output is layer-normed)."""
    encoder.zero_grad()
    out = encoder(features).last_hidden_state
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * projection).sum().backward()
    return out.detach(), encoder.conv1.weight.grad.clone()


def audio_patch(job: dict[str, Any], pm: Any) -> None:
    """The Qwen2-Audio encoder of ``job["model"]`` sharded with FSDP2 over every rank, its
    position table a unit of its own, each rank its own features: transformers' forward
    fails on the shard; with the patch each rank's output equals the unsharded encoder's and
    the gathered ``conv1`` gradient equals the mean of the ranks' unsharded gradients."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import Qwen2AudioForConditionalGeneration

    from lightrft_core import distributed
    from lightrft_plugin_qwen_audio.position_embedding import AudioPositionEmbeddingPatch
    from lightrft_plugin_qwen_audio.tiny import FRAMES, N_MELS

    if not dist.is_initialized():
        distributed.init_process_group("gloo", timeout_s=120)
    rank, world = dist.get_rank(), dist.get_world_size()
    patch = AudioPositionEmbeddingPatch(AudioPositionEmbeddingPatch.Config())
    was_applied = AudioPositionEmbeddingPatch.is_applied()
    patch.revert()
    model = Qwen2AudioForConditionalGeneration.from_pretrained(job["model"])
    encoder = model.model.audio_tower.eval()
    features = [
        torch.randn(2, N_MELS, FRAMES, generator=torch.Generator().manual_seed(r))
        for r in range(world)
    ]
    unsharded = [_encoder_run(encoder, x) for x in features]
    sharded = copy.deepcopy(encoder)
    mesh = init_device_mesh("cpu", (world,))
    fully_shard(sharded.embed_positions, mesh=mesh)
    for layer in sharded.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    try:
        sharded(features[rank])
        unpatched_error = ""
    except RuntimeError as exc:
        unpatched_error = str(exc)
    patch.apply()
    try:
        out, sharded_grad = _encoder_run(sharded, features[rank])
        grad = sharded_grad.full_tensor()  # a DTensor: the ranks' mean, gathered
    finally:
        if not was_applied:
            patch.revert()
    out_diff = torch.tensor(float((out - unsharded[rank][0]).abs().max()))
    mean_grad = torch.stack([g for _, g in unsharded]).mean(0)
    grad_diff = torch.tensor(float((grad - mean_grad).abs().max()))
    dist.all_reduce(out_diff, op=dist.ReduceOp.MAX)
    if rank == 0:
        out_dir = Path(job["out"])
        out_dir.mkdir(parents=True, exist_ok=True)
        result = {
            "world_size": world,
            "unpatched_error": unpatched_error,
            "output_diff": float(out_diff),
            "grad_diff": float(grad_diff),
            "grad_norm": float(mean_grad.norm()),
        }
        (out_dir / "result.json").write_text(json.dumps(result), encoding="utf-8")


JOBS = {"step": grpo_step, "train": train, "audio_patch": audio_patch}


def main(plan_path: str) -> None:
    from distributed_utils import run_jobs  # beside this script

    run_jobs(plan_path, JOBS, plugin_manager())


if __name__ == "__main__":
    main(sys.argv[1])
