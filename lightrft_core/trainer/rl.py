"""The RL training loop, shared by every algorithm (DESIGN.md, "The training loop").

Per step: rollout -> reward -> log-probs (policy, reference) -> advantages -> shuffled
micro-batches for ``epochs`` -> weight sync -> log / evaluate / checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..algorithms import masked_mean
from ..config import LightRFTConfig, dump_config
from ..interfaces import AdvantageInput, LossScale, PolicyLossInput, RewardInput, SamplingParams
from ..plugins import PluginManager, get_plugin_manager
from .checkpoints import checkpoint_dir, latest_checkpoint, resolve_resume
from .components import Components, build_components
from .data import RunData, load_run_data
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
        self.data: RunData = load_run_data(
            cfg,
            self.c.tokenizer,
            self.c.reward,
            rank=self.c.strategy.rank,
            world_size=self.c.strategy.world_size,
        )
        self.progress = progress
        t = cfg.trainer
        rollout_size = t.prompts_per_step * cfg.engine.n_samples_per_prompt
        self.updates_per_step = t.epochs * math.ceil(
            rollout_size / (t.optimizer_batch_size or rollout_size)
        )
        s = self.c.strategy
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
        resume = resolve_resume(t.resume_from, self.out)
        if resume is not None:
            state = s.load_checkpoint(
                resume, model=self.actor, optimizer=self.optimizer, scheduler=self.scheduler
            )
            self.start_step = int(state["step"])
            self.data.sampler.load_state_dict(state["sampler"])
            logger.warning("resumed from %s at step %d", resume, self.start_step)
        elif t.resume_from == "latest":
            logger.warning(
                "trainer.resume_from=latest: no checkpoint in %s; starting at step 1", self.out
            )
        elif latest_checkpoint(self.out) is not None:
            logger.warning(
                "%s already holds checkpoints of an earlier run; this run starts at step 1 and "
                "overwrites them as it goes (set trainer.resume_from=latest to continue instead)",
                self.out,
            )
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

        with timer("generate"), self._autocast():
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

        metrics = rollout_metrics(rollout, scored.output.sub_scores, scored.failures)
        metrics.update({f"advantage/{k}": v for k, v in advantages.metrics.items()})
        metrics.update(train_metrics)
        metrics.update(timer.pop())
        generated = int(rollout.action_mask.sum())
        metrics["tokens_per_s"] = generated / max(metrics["time/generate"], 1e-9)
        metrics["lr"] = self.scheduler.get_last_lr()[0] if self.scheduler is not None else 0.0
        metrics["time/step"] = time.perf_counter() - started
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
            seed=self.cfg.run.seed * 1_000_003 + step,
            first_token_temperature=e.first_token_temperature,
        )

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
        t, s = self.cfg.trainer, self.c.strategy
        generator = torch.Generator().manual_seed(self.cfg.run.seed * 7_919 + step)
        sums: dict[str, float] = {}
        tokens_seen = 0.0
        grad_norms = []
        self.actor.train()
        for _ in range(t.epochs):
            for chunk in shuffled_chunks(
                len(rollout), t.optimizer_batch_size or len(rollout), generator
            ):
                scale = LossScale(
                    num_tokens=max(1, int(rollout.action_mask[chunk].sum())),
                    num_sequences=len(chunk),
                    world_size=s.world_size,
                )
                for rows in chunk.split(t.micro_batch_size):
                    mb = rollout.select(rows).to(s.device)
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
                    tokens_seen += weight
                    extra = {"loss": loss.loss.detach() * scale.num_tokens / max(weight, 1.0)}
                    if out.entropy is not None:
                        extra["entropy"] = float(masked_mean(out.entropy.detach(), mb.action_mask))
                    for key, value in {**loss.metrics, **extra}.items():
                        sums[key] = sums.get(key, 0.0) + float(value) * weight
                grad_norms.append(
                    s.optimizer_step(
                        self.actor, self.optimizer, self.scheduler, max_grad_norm=t.max_grad_norm
                    )
                )
        metrics = {k: v / max(tokens_seen, 1.0) for k, v in sums.items()}
        metrics["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return metrics

    def _autocast(self) -> Any:
        return self.c.strategy.autocast()

    def _evaluate(self) -> dict[str, float]:
        with self._autocast():
            return evaluate(
                self.c.engine,
                self.c.tokenizer,
                self.data,
                self.cfg,
            )

    def save(self, step: int) -> None:
        self.c.strategy.save_checkpoint(
            checkpoint_dir(self.out, step),
            model=self.actor,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            client_state={"step": step, "sampler": self.data.sampler.state_dict()},
        )


def rollout_metrics(
    rollout: RolloutBatch, sub_scores: dict[str, torch.Tensor], failures: int
) -> dict[str, float]:
    """Reward, accuracy, length and engine/trainer log-prob agreement of one rollout."""
    metrics = {
        "reward/mean": float(rollout.rewards.mean()),
        "reward/std": float(rollout.rewards.std()) if len(rollout) > 1 else 0.0,
        "reward/failures": float(failures),
        "response_length": float(rollout.response_lengths.float().mean()),
        "samples": float(len(rollout)),
    }
    for name, scores in sub_scores.items():
        metrics[f"reward/{name}"] = float(scores.float().mean())
    if "accuracy" in sub_scores:
        metrics["accuracy"] = float(sub_scores["accuracy"].float().mean())
    if rollout.old_log_probs is not None and rollout.engine_log_probs.abs().sum() > 0:
        diff = (rollout.old_log_probs - rollout.engine_log_probs).abs()
        metrics["logprob_mismatch"] = float(masked_mean(diff, rollout.action_mask))
    return metrics
