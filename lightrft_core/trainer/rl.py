"""The RL training loop, shared by every algorithm (DESIGN.md, "The training loop").

Per step: rollout -> reward -> log-probs (policy, reference) -> advantages -> shuffled
micro-batches for ``epochs`` -> weight sync -> log / evaluate / checkpoint.

Under ``torchrun`` every rank runs this same loop on its share of the prompts (see
``distributed.py``): sizes in the configuration are global, the loss scale counts the
tokens of every rank, metrics are reduced over ranks and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..algorithms import masked_mean
from ..config import LightRFTConfig, dump_config
from ..interfaces import (
    AdvantageInput,
    LossScale,
    PolicyLossInput,
    RewardInput,
    SamplingParams,
    StrategyBase,
)
from ..plugins import PluginManager, get_plugin_manager
from .checkpoints import checkpoint_dir, latest_checkpoint, resolve_resume
from .components import Components, build_components
from .data import RunData, load_run_data
from .distributed import (
    check_divisible,
    gather_columns,
    generation_context,
    no_sync,
    reduce_means,
    reduce_values,
)
from .evaluate import evaluate
from .experience import RolloutBatch, build_rollout, shuffled_chunks
from .metrics import MetricsLogger, PhaseTimer

logger = logging.getLogger("lightrft.trainer")


@dataclass
class TrainResult:
    output_dir: Path
    final_model: Path | None
    history: list[dict[str, Any]]


class RLTrainer:
    """Owns the components of one run and runs ``trainer.max_steps`` RL steps."""

    def __init__(
        self,
        cfg: LightRFTConfig,
        manager: PluginManager | None = None,
        *,
        console: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(cfg.run.output_dir)
        self.c: Components = build_components(cfg, manager or get_plugin_manager())
        t, s = cfg.trainer, self.c.strategy
        check_divisible(
            s.world_size,
            {
                "trainer.prompts_per_step": t.prompts_per_step,
                "trainer.optimizer_batch_size": t.optimizer_batch_size,
            },
        )
        self.data: RunData = load_run_data(
            cfg, self.c.tokenizer, self.c.reward, rank=s.rank, world_size=s.world_size
        )
        self.progress = progress
        rollout_size = t.prompts_per_step * cfg.engine.n_samples_per_prompt
        self.updates_per_step = t.epochs * math.ceil(
            rollout_size / (t.optimizer_batch_size or rollout_size)
        )
        optimizer = s.create_optimizer(
            self.c.actor, lr=t.learning_rate, weight_decay=t.weight_decay
        )
        scheduler = s.create_scheduler(
            optimizer,
            name=t.lr_scheduler,
            warmup_steps=t.warmup_steps,
            total_steps=t.max_steps * self.updates_per_step,
        )
        self.actor, self.optimizer, self.scheduler = s.prepare(self.c.actor, optimizer, scheduler)
        if self.c.reference is not None:
            self.c.reference, _, _ = s.prepare(self.c.reference)
        self.start_step = 0
        resume = self._find_resume()
        if resume is not None:
            state = s.load_checkpoint(
                resume, model=self.actor, optimizer=self.optimizer, scheduler=self.scheduler
            )
            self.start_step = int(state["step"])
            self.data.sampler.load_state_dict(state["sampler"])
        if s.is_rank_0:
            self._announce_start(resume)
        self.metrics = MetricsLogger(
            self.out,
            enabled=s.is_rank_0,
            jsonl=cfg.logging.jsonl,
            tensorboard=cfg.logging.tensorboard,
            log_every=cfg.logging.log_every,
            console=console,
            resume_step=self.start_step if resume is not None else None,
        )
        if s.is_rank_0:
            (self.out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")

    def _announce_start(self, resume: Path | None) -> None:
        if resume is not None:
            logger.warning("resumed from %s at step %d", resume, self.start_step)
        elif self.cfg.trainer.resume_from == "latest":
            logger.warning(
                "trainer.resume_from=latest: no checkpoint in %s; starting at step 1", self.out
            )
        elif latest_checkpoint(self.out) is not None:
            logger.warning(
                "%s already holds checkpoints of an earlier run; this run starts at step 1 and "
                "overwrites them as it goes (set trainer.resume_from=latest to continue instead)",
                self.out,
            )

    def _find_resume(self) -> Path | None:
        """``trainer.resume_from`` resolved on rank 0 first (it may repair a checkpoint
        folder after a crash), then on the other ranks."""
        s, resume_from = self.c.strategy, self.cfg.trainer.resume_from
        resume = resolve_resume(resume_from, self.out) if s.is_rank_0 else None
        s.barrier()
        return resume if s.is_rank_0 else resolve_resume(resume_from, self.out)

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        t = self.cfg.trainer
        if t.eval_every and self.data.eval_items and self.start_step == 0:
            self.metrics.log(0, self._evaluate())
        for step in range(self.start_step + 1, t.max_steps + 1):
            metrics = self.step(step)
            if (
                t.eval_every
                and self.data.eval_items
                and (step % t.eval_every == 0 or step == t.max_steps)
            ):
                metrics.update(self._evaluate())
            self.metrics.log(step, metrics)
            if t.save_every and step % t.save_every == 0 and step < t.max_steps:
                self.save(step)
            if self.progress is not None:
                self.progress(step, t.max_steps)
        self.save(t.max_steps)
        final = self.out / "final"
        self.c.strategy.export_hf(getattr(self.actor, "model", self.actor), final, self.c.tokenizer)
        self.metrics.close()
        return TrainResult(self.out, final, self.metrics.history)

    def step(self, step: int) -> dict[str, float]:
        """One RL step; returns its metrics."""
        c, cfg = self.c, self.cfg
        timer = PhaseTimer()
        started = time.perf_counter()
        items = next(self.data.sampler)

        with timer("generate"), self._autocast(), generation_context(c.strategy, self.actor):
            c.engine.wake_up()
            outputs = c.engine.generate([it.prompt_ids for it in items], self._sampling(step))
            c.engine.sleep()
        with timer("reward"):
            responses = [c.tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outputs]
            scored = self.data.score(
                RewardInput(
                    prompts=[items[o.prompt_index].prompt_text for o in outputs],
                    responses=responses,
                    labels=[items[o.prompt_index].label for o in outputs],
                    metadata=[items[o.prompt_index].metadata for o in outputs],
                )
            )
        rollout = build_rollout(
            [it.prompt_ids for it in items],
            outputs,
            scored.output.rewards,
            group_size=cfg.engine.n_samples_per_prompt,
            pad_id=self.data.pad_id,
        )
        with timer("logprobs"):
            rollout.old_log_probs = self._log_probs(self.actor, rollout)
            if c.reference is not None:
                rollout.ref_log_probs = self._log_probs(c.reference, rollout)
        advantages = c.algorithm.compute_advantages(
            AdvantageInput(
                rewards=rollout.rewards,
                action_mask=rollout.action_mask,
                group_size=rollout.group_size,
                old_log_probs=rollout.old_log_probs,
                ref_log_probs=rollout.ref_log_probs,
            )
        )
        rollout.advantages = advantages.advantages
        with timer("train"):
            train_metrics = self._train(rollout, step)
        with timer("sync"):
            sync = getattr(self.actor, "named_weights_for_sync", None)
            c.engine.update_weights(sync() if sync is not None else iter(()))

        metrics = rollout_metrics(c.strategy, rollout, scored.output.sub_scores, scored.failures)
        metrics.update(self._sample_means(advantages.metrics, len(rollout), "advantage/"))
        metrics.update(train_metrics)
        metrics["lr"] = self.scheduler.get_last_lr()[0] if self.scheduler is not None else 0.0
        times = {**timer.pop(), "time/step": time.perf_counter() - started}
        metrics.update(reduce_values(c.strategy, times, "max"))  # the slowest rank's pace
        generated = float(c.strategy.all_reduce(float(rollout.action_mask.sum()), op="sum"))
        metrics["tokens_per_s"] = generated / max(metrics["time/generate"], 1e-9)
        return metrics

    # ------------------------------------------------------------------ parts
    def _sampling(self, step: int) -> SamplingParams:
        e = self.cfg.engine
        return SamplingParams(
            n=e.n_samples_per_prompt,
            temperature=e.temperature,
            top_p=e.top_p,
            top_k=e.top_k,
            max_new_tokens=e.max_new_tokens,
            stop_token_ids=[*self.data.stop_ids, *e.stop_token_ids],
            seed=self.cfg.run.seed * 1_000_003 + step + 1_000_000_007 * self.c.strategy.rank,
            first_token_temperature=e.first_token_temperature,
        )

    def _sample_means(
        self, means: dict[str, float], samples: int, prefix: str = ""
    ) -> dict[str, float]:
        """Per-rank means over ``samples`` samples -> means over every rank's samples."""
        sums = {f"{prefix}{k}": v * samples for k, v in means.items()}
        return reduce_means(self.c.strategy, sums, samples)

    @torch.no_grad()
    def _log_probs(self, actor: Any, rollout: RolloutBatch) -> torch.Tensor:
        out = torch.zeros_like(rollout.engine_log_probs)
        size = self.cfg.trainer.micro_batch_size
        was_training = actor.training
        actor.eval()
        for rows in torch.arange(len(rollout)).split(size):
            mb = rollout.select(rows).to(self.c.strategy.device)
            with self._autocast():
                lp = actor(mb.sequences, mb.attention_mask).log_probs
            out[rows, : lp.shape[1]] = lp.float().cpu()
        actor.train(was_training)
        return out * rollout.action_mask

    def _train(self, rollout: RolloutBatch, step: int) -> dict[str, float]:
        """``epochs`` passes over this rank's rollout in shuffled optimizer batches (this
        rank's share of ``optimizer_batch_size``), each in micro-batches of accumulation."""
        t, s = self.cfg.trainer, self.c.strategy
        generator = torch.Generator().manual_seed(self.cfg.run.seed * 7_919 + step)
        batch_size = (t.optimizer_batch_size or len(rollout) * s.world_size) // s.world_size
        sums: dict[str, float] = {}
        tokens_seen = 0.0
        grad_norms = []
        self.actor.train()
        for _ in range(t.epochs):
            for chunk in shuffled_chunks(len(rollout), batch_size, generator):
                scale = self._loss_scale(rollout, chunk)
                micro_batches = chunk.split(t.micro_batch_size)
                for index, rows in enumerate(micro_batches):
                    last = index == len(micro_batches) - 1
                    with nullcontext() if last else no_sync(s, self.actor):
                        weight, metrics = self._train_micro_batch(rollout.select(rows), scale)
                    tokens_seen += weight
                    for key, value in metrics.items():
                        sums[key] = sums.get(key, 0.0) + value * weight
                grad_norms.append(
                    s.optimizer_step(
                        self.actor, self.optimizer, self.scheduler, max_grad_norm=t.max_grad_norm
                    )
                )
        metrics = reduce_means(s, sums, tokens_seen)
        metrics["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return metrics

    def _loss_scale(self, rollout: RolloutBatch, chunk: torch.Tensor) -> LossScale:
        """Token and sequence counts of the optimizer batch summed over every rank."""
        s = self.c.strategy
        local = torch.tensor([float(rollout.action_mask[chunk].sum()), float(len(chunk))])
        tokens, sequences = (int(v) for v in s.all_reduce(local, op="sum"))
        return LossScale(
            num_tokens=max(1, tokens), num_sequences=sequences, world_size=s.world_size
        )

    def _train_micro_batch(
        self, mb: RolloutBatch, scale: LossScale
    ) -> tuple[float, dict[str, float]]:
        """Forward, loss and backward of one micro-batch; returns its token count and its
        metrics (per-token means)."""
        s = self.c.strategy
        mb = mb.to(s.device)
        with self._autocast():
            out = self.actor(mb.sequences, mb.attention_mask, return_entropy=True)
        loss = self.c.algorithm.policy_loss(
            PolicyLossInput(
                log_probs=out.log_probs.float(),
                old_log_probs=mb.old_log_probs,
                advantages=mb.advantages,
                action_mask=mb.action_mask,
                scale=scale,
                ref_log_probs=mb.ref_log_probs,
                entropy=out.entropy,
            )
        )
        s.backward(loss.loss, self.actor)
        weight = float(mb.action_mask.sum())
        # this micro-batch's share of the batch loss, as a per-token mean of its own
        per_token = loss.loss.detach() * scale.num_tokens / (max(weight, 1.0) * scale.world_size)
        metrics = {key: float(value) for key, value in loss.metrics.items()}
        metrics["loss"] = float(per_token)
        if out.entropy is not None:
            metrics["entropy"] = float(masked_mean(out.entropy.detach(), mb.action_mask))
        return weight, metrics

    def _autocast(self) -> Any:
        return self.c.strategy.autocast()

    def _evaluate(self) -> dict[str, float]:
        s = self.c.strategy
        with self._autocast(), generation_context(s, self.actor):
            return evaluate(self.c.engine, self.c.tokenizer, self.data, self.cfg, s)

    def save(self, step: int) -> None:
        self.c.strategy.save_checkpoint(
            checkpoint_dir(self.out, step),
            model=self.actor,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            client_state={"step": step, "sampler": self.data.sampler.state_dict()},
        )


def rollout_metrics(
    strategy: StrategyBase,
    rollout: RolloutBatch,
    sub_scores: dict[str, torch.Tensor],
    failures: int,
) -> dict[str, float]:
    """Reward, accuracy, length and engine/trainer log-prob agreement of the rollout of
    every rank (per-sample values are gathered, so the std is that of the whole batch)."""
    columns = {"reward": rollout.rewards.float(), "length": rollout.response_lengths.float()}
    columns.update({f"sub/{name}": scores.float() for name, scores in sub_scores.items()})
    every = gather_columns(strategy, columns)
    rewards = every["reward"]
    metrics = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "response_length": float(every["length"].mean()),
        "samples": float(len(rewards)),
    }
    for name in sub_scores:
        metrics[f"reward/{name}"] = float(every[f"sub/{name}"].mean())
    if "accuracy" in sub_scores:
        metrics["accuracy"] = metrics["reward/accuracy"]
    counts = {"failures": float(failures), "diff": 0.0, "tokens": 0.0, "engine": 0.0}
    if rollout.old_log_probs is not None and rollout.engine_log_probs.abs().sum() > 0:
        mask = rollout.action_mask
        diff = (rollout.old_log_probs - rollout.engine_log_probs).abs()
        counts.update(
            diff=float(torch.where(mask, diff, torch.zeros_like(diff)).sum()),
            tokens=float(mask.sum()),
            engine=1.0,
        )
    totals = reduce_values(strategy, counts, "sum")
    metrics["reward/failures"] = totals["failures"]
    if totals["engine"] > 0:
        metrics["logprob_mismatch"] = totals["diff"] / max(totals["tokens"], 1.0)
    return metrics
