"""The RL training loop, shared by every algorithm (DESIGN.md, "The training loop").

Per step: rollout rounds (generate -> reward -> keep the groups the algorithm wants, more
rounds while groups are missing) -> log-probs (policy, reference) and critic values ->
advantages -> shuffled micro-batches for ``epochs`` (policy and critic) -> weight sync ->
log / evaluate / checkpoint.

Under ``torchrun`` every rank runs this same loop on its share of the prompts (see
``distributed.py``): sizes in the configuration are global, the loss scale counts the
tokens of every rank, metrics are reduced over ranks and only rank 0 writes files.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..algorithms import masked_mean
from ..config import LightRFTConfig
from ..interfaces import (
    ActorOutput,
    AdvantageInput,
    AdvantageOutput,
    AlgorithmContext,
    LossScale,
    PolicyLossInput,
    RewardInput,
    SamplingParams,
)
from ..plugins import PluginManager, get_plugin_manager
from ..rewards.safe_rlhf import CostMultiplier
from .bootstrap import finish_run, open_run_log, released_on_error, start_run, unwrapped_actor
from .checkpoints import checkpoint_dir, latest_checkpoint, resolve_resume
from .components import Components, build_components
from .controls import LoopControls, rollout_kl
from .critic import build_critic
from .data import RunData, load_run_data
from .distributed import (
    check_group_agrees,
    check_splittable,
    data_ranks,
    generation_context,
    no_sync,
    reduce_means,
    reduce_values,
)
from .dynamic_sampling import CollectedGroups, ScoredRound, collect_groups, draw_prompts
from .evaluate import evaluate
from .experience import (
    OldLogProbSource,
    RolloutBatch,
    build_rollout,
    old_log_probs_source,
    shuffled_chunks,
)
from .metrics import PhaseTimer
from .micro_batches import actor_forward, agree_over_ranks, plan_micro_batches, resolve_packing
from .multimodal import check_media_support, check_prompt_ids, generate_kwargs, has_media
from .profiling import RangedPhaseTimer, StepProfiler
from .resume import (
    RunIdentity,
    changes_line,
    check_max_steps,
    check_resume,
    read_checkpoint_identity,
    read_run_id,
    write_checkpoint_identity,
    write_run_id,
)
from .rollouts import save_rollouts
from .step_metrics import rollout_metrics

logger = logging.getLogger("lightrft.trainer")


@dataclass
class TrainResult:
    output_dir: Path
    final_model: Path | None
    history: list[dict[str, Any]]
    final_critic: Path | None = None


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
        self.progress = progress
        self.console: Console = console or Console(highlight=False)
        t = cfg.trainer
        manager = manager or get_plugin_manager()
        self.run = start_run(
            cfg,
            manager,
            global_batches={
                "trainer.prompts_per_step": t.prompts_per_step,
                "trainer.optimizer_batch_size": t.optimizer_batch_size,
            },
        )
        with released_on_error(self.run):
            self._set_up(manager, console)

    def _set_up(self, manager: PluginManager, console: Any) -> None:
        """Components, data, optimizer and the resumed state; then the run log."""
        cfg, t = self.cfg, self.cfg.trainer
        self.c: Components = build_components(cfg, manager, self.run)
        s = self.c.strategy
        # for sharing, counting and gathering rows: one rank per sequence-parallel group
        self.row_ranks = row_ranks = data_ranks(s)
        self.data: RunData = load_run_data(
            cfg,
            self.c.tokenizer,
            self.c.reward,
            rank=row_ranks.rank,
            world_size=row_ranks.world_size,
            processor=self.run.processor,
        )
        check_splittable(
            s,
            shared_critic=self.c.algorithm.needs_critic()
            and self.c.algorithm.critic_spec().layout == "shared",
            media=has_media([*self.data.sampler.dataset, *self.data.eval_items]),
            engine=cfg.engine.name,
        )
        rollout_size = t.prompts_per_step * cfg.engine.n_samples_per_prompt
        self.updates_per_step = t.epochs * math.ceil(
            rollout_size / (t.optimizer_batch_size or rollout_size)
        )
        self.c.algorithm.setup(
            AlgorithmContext(
                max_new_tokens=cfg.engine.max_new_tokens,
                group_size=cfg.engine.n_samples_per_prompt,
                world_size=row_ranks.world_size,
                all_reduce=row_ranks.all_reduce if row_ranks.world_size > 1 else None,
            )
        )
        self.controls = LoopControls(
            t,
            self.c.algorithm,
            samples_per_step=rollout_size,
            has_reference=self.c.reference is not None,
        )
        self.cost_multiplier = CostMultiplier.from_config(cfg.reward)  # Safe RLHF's λ
        optimizer = s.create_optimizer(
            self.c.actor,
            lr=t.learning_rate,
            weight_decay=t.weight_decay,
            implementation=t.adamw_implementation,
        )
        scheduler = s.create_scheduler(
            optimizer,
            name=t.lr_scheduler,
            warmup_steps=t.warmup_steps,
            total_steps=t.max_steps * self.updates_per_step,
        )
        self.c.actor, prepared, self.scheduler = s.prepare(self.c.actor, optimizer, scheduler)
        if prepared is None:
            raise TypeError(f"strategy {s.name!r}: prepare(model, optimizer) returned no optimizer")
        self.optimizer: torch.optim.Optimizer = prepared
        if self.c.reference is not None:
            self.c.reference, _, _ = s.prepare(self.c.reference)
        self.c.reward.place(s)  # a reward model sharded or offloaded by the strategy
        policy = unwrapped_actor(s, self.actor)
        # 'auto' resolved once: every pass below (and the critic) reads the bool
        t.packing = resolve_packing(t.packing, policy)
        check_media_support(
            [*self.data.sampler.dataset, *self.data.eval_items],
            self.c.engine,
            policy,
            engine_name=cfg.engine.name,
        )
        self.critic = build_critic(
            self.c.algorithm,
            s,
            policy,
            trainer=t,
            total_steps=t.max_steps * self.updates_per_step,
            actor_path=type(policy).hf_path(cfg.model.options),
        )
        self.start_step = 0
        self.identity = RunIdentity.fresh(cfg, s.world_size)
        resume = self._find_resume()
        changed: dict[str, tuple[Any, Any]] = {}
        if resume is not None:
            recorded = read_checkpoint_identity(resume)
            if recorded is not None:  # checked before loading: nothing is touched if refused
                check_max_steps(t.max_steps, recorded[1], resume)
                changed = self._check_identity(resume, recorded[0])
            state = s.load_checkpoint(
                resume, model=self.actor, optimizer=self.optimizer, scheduler=self.scheduler
            )
            self.start_step = int(state["step"])
            check_max_steps(t.max_steps, self.start_step, resume)
            if recorded is None and "run" in state:  # the identity file was not written
                changed = self._check_identity(resume, RunIdentity.from_state(state["run"]))
            elif recorded is None:
                logger.warning(
                    "%s carries no run identity (an older LightRFT wrote it): its options are "
                    "not checked",
                    resume,
                )
            if "trainer.learning_rate" in changed:
                apply_learning_rate(
                    self.optimizer, self.scheduler, *changed["trainer.learning_rate"]
                )
            self.data.sampler.load_state_dict(state["sampler"])
            self.controls.load_state_dict(state.get("controls", {}))
            if self.cost_multiplier is not None and "cost_multiplier" in state:
                self.cost_multiplier.load_state_dict(state["cost_multiplier"])
            if self.critic is not None:
                self.critic.load(resume)
            self._sync_weights()  # an engine with its own copy still holds model.path's weights
        if s.is_rank_0:
            self._announce_start(resume, changed)
        self.metrics = open_run_log(
            cfg,
            s,
            manager,
            console=console,
            resume_step=self.start_step if resume is not None else None,
            run_id=self.identity.run_id,
        )
        if s.is_rank_0:
            write_run_id(self.out, self.identity.run_id)

    def _check_identity(self, resume: Path, saved: RunIdentity) -> dict[str, tuple[Any, Any]]:
        """Refuse a checkpoint of another run (for ``resume_from=latest``) or of other fixed
        options (``resume.check_resume``); continue its run id. Returns the changed options."""
        latest = self.cfg.trainer.resume_from == "latest"
        folder_run = read_run_id(self.out) if latest else None
        changed = check_resume(saved, self.identity, resume, folder_run=folder_run)
        self.identity.run_id = saved.run_id
        return changed

    @property
    def actor(self) -> torch.nn.Module:
        """The policy as ``strategy.prepare`` returned it (the one object the loop trains)."""
        return self.c.actor

    @property
    def reference(self) -> torch.nn.Module | None:
        """The prepared reference policy, or ``None`` when the algorithm needs none."""
        return self.c.reference

    def _announce_start(self, resume: Path | None, changed: dict[str, tuple[Any, Any]]) -> None:
        if resume is not None:
            logger.warning("resumed from %s at step %d", resume, self.start_step)
            if changed:
                logger.warning(changes_line(changed, self.start_step))
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
        folder after a crash), then on the other ranks, which meet the same error if rank 0
        raised one (e.g. only another run's checkpoints): nobody waits at the barrier."""
        s, resume_from = self.c.strategy, self.cfg.trainer.resume_from
        try:
            resume = resolve_resume(resume_from, self.out) if s.is_rank_0 else None
        finally:
            s.barrier()
        return resume if s.is_rank_0 else resolve_resume(resume_from, self.out)

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Run the steps left; the run folder is released at the end, also on an error.

        The objects set up so far (models, tokenizer, libraries: hundreds of thousands) are
        moved out of the garbage collector's reach while the steps run (``gc.freeze``), so
        that a full collection inside a step does not walk them all (about 0.2 s each on
        the tiny models); they are handed back at the end."""
        gc.collect()
        gc.freeze()
        try:
            with released_on_error(self.run):
                return self._train_steps()
        finally:
            gc.unfreeze()

    def _train_steps(self) -> TrainResult:
        t = self.cfg.trainer
        if t.eval_every and self.data.eval_items and self.start_step == 0:
            self.metrics.log(0, self.evaluate())
        profiler = StepProfiler(
            t.profile_steps,
            self.out,
            rank=self.c.strategy.rank,
            console=self.console,
            final_step=t.max_steps,
        )
        for step in range(self.start_step + 1, t.max_steps + 1):
            with profiler.step(step):
                metrics = self.step(step)
            if (
                t.eval_every
                and self.data.eval_items
                and (step % t.eval_every == 0 or step == t.max_steps)
            ):
                metrics.update(self.evaluate())
            self.metrics.log(step, metrics)
            self.data.failure_watch.end_step(
                step, metrics["reward/failures"], metrics["reward/failure_rate"]
            )
            if t.save_every and step % t.save_every == 0 and step < t.max_steps:
                self.save(step)
            if self.progress is not None:
                self.progress(step, t.max_steps)
        self.save(t.max_steps)
        final_critic = None
        if self.critic is not None:
            final_critic = self.critic.export(self.out, self.c.tokenizer)
        policy = unwrapped_actor(self.c.strategy, self.actor)
        final = finish_run(self.run, policy.hf_model(), self.metrics)
        return TrainResult(self.out, final, self.metrics.history, final_critic)

    def step(self, step: int) -> dict[str, float]:
        """One RL step; returns its metrics."""
        timer = RangedPhaseTimer()  # phases are also profiler ranges (trainer.profile_steps)
        started = time.perf_counter()
        collected = self._collect(step, timer)  # generate + reward rounds, dynamic sampling
        rollout = self._build_rollout(collected)
        check_group_agrees(
            self.c.strategy, {"tokens": rollout.sequences, "rewards": rollout.rewards}
        )
        source = old_log_probs_source(
            self.cfg.trainer.old_logprobs,
            updates_per_step=self.updates_per_step,
            updates_policy=self.c.algorithm.updates_policy(step),
            advantages_use_them=self.c.algorithm.advantages_use_old_log_probs(),
        )
        with timer("logprobs"):
            self._score_rollout(rollout, source)  # old and reference log-probs, critic values
        advantages = self._advantages(rollout)
        with timer("train"):
            train_metrics = self._train(rollout, step)  # policy (unless warm-up) and critic
        if self.c.algorithm.updates_policy(step):
            with timer("sync"):
                self._sync_weights()
        metrics = self._rollout_metrics(collected, rollout, advantages)
        metrics.update(train_metrics)
        every = self.cfg.logging.save_rollouts_every
        if every and step % every == 0:
            save_rollouts(
                self.out,
                step,
                collected,
                rollout,
                strategy=self.row_ranks,
                tokenizer=self.c.tokenizer,
                log_samples=self.metrics.log_samples,
            )
        metrics.update(self._kl_control(rollout))  # logs β, then an adaptive step
        if self.cost_multiplier is not None:  # logs this step's λ, then a dual-ascent step
            metrics.update(self.cost_multiplier.metrics())
            self.cost_multiplier.update(metrics[f"reward/{self.cost_multiplier.cost_key}"])
        metrics.update(self._pace(timer, started, metrics.pop("generated_tokens")))
        return metrics

    # ------------------------------------------------------------------ rollout
    def _collect(self, step: int, timer: PhaseTimer) -> CollectedGroups:
        """This step's rollout rounds (``dynamic_sampling.py``): ``prompts_per_step /
        world_size`` groups on this rank."""
        c = self.c
        quota = self.cfg.trainer.prompts_per_step // self.row_ranks.world_size

        def run_round(prompts: int, round_index: int) -> ScoredRound:
            items = draw_prompts(self.data.sampler, prompts)
            with timer("generate"), self._autocast(), generation_context(c.strategy, self.actor):
                c.engine.wake_up()
                params = self._sampling(step, round_index)
                prompt_ids = [it.prompt_ids for it in items]
                outputs = c.engine.generate(prompt_ids, params, **generate_kwargs(items))
                c.engine.sleep()
            check_prompt_ids(items, outputs)
            with timer("reward"):
                texts = [c.tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outputs]
                scored = self.data.score(
                    RewardInput(
                        prompts=[items[o.prompt_index].prompt_text for o in outputs],
                        responses=texts,
                        labels=[items[o.prompt_index].label for o in outputs],
                        metadata=[items[o.prompt_index].metadata for o in outputs],
                        multimodal=[items[o.prompt_index].multimodal for o in outputs],
                    )
                )
            self.data.failure_watch.record(scored)
            out = scored.output
            if self.cost_multiplier is not None:  # r − λ·c (Safe RLHF)
                out = self.cost_multiplier.penalised(out)
            return ScoredRound(
                items, outputs, out.rewards, dict(out.sub_scores), scored.failures, dict(out.texts)
            )

        return collect_groups(c.algorithm, self.row_ranks, quota, run_round)

    def _build_rollout(self, collected: CollectedGroups) -> RolloutBatch:
        prompt_ids, outputs, rewards = collected.trained_batch()
        if self.cfg.trainer.old_logprobs == "engine" and any(
            o.token_ids and not o.log_probs for o in outputs
        ):
            raise RuntimeError(
                f"trainer.old_logprobs=engine: engine {self.cfg.engine.name!r} returned no "
                "log-probs; use trainer.old_logprobs=auto"
            )
        media = [collected.rounds[r].items[g].multimodal for r, g in collected.chosen]
        return build_rollout(
            prompt_ids,
            outputs,
            rewards,
            group_size=self.cfg.engine.n_samples_per_prompt,
            pad_id=self.data.pad_id,
            multimodal=media,
        )

    def _sampling(self, step: int, round_index: int = 0) -> SamplingParams:
        e = self.cfg.engine
        return SamplingParams(
            n=e.n_samples_per_prompt,
            temperature=e.temperature,
            top_p=e.top_p,
            top_k=e.top_k,
            max_new_tokens=e.max_new_tokens,
            stop_token_ids=[*self.data.stop_ids, *e.stop_token_ids],
            seed=self.cfg.run.seed * 1_000_003
            + step
            + 1_000_000_007 * self.row_ranks.rank
            + 100_003 * round_index,
            first_token_temperature=e.first_token_temperature,
        )

    def _score_rollout(self, rollout: RolloutBatch, source: OldLogProbSource) -> None:
        """Old (behaviour) log-probs from ``source`` (``train``: left to the training
        forward), reference log-probs, and the critic's old values."""
        c = self.c
        if source == "pass":
            rollout.old_log_probs = self._log_probs(self.actor, rollout)
            rollout.trainer_log_probs = rollout.old_log_probs
        elif source == "engine":
            rollout.old_log_probs = rollout.engine_log_probs
        if c.reference is not None:
            rollout.ref_log_probs = self._log_probs(c.reference, rollout)
        if self.critic is not None:
            rollout.values = self.critic.values(rollout, self.cfg.trainer.micro_batch_size)

    def _advantages(self, rollout: RolloutBatch) -> AdvantageOutput:
        """The algorithm's advantages (and the critic's returns) of the whole rollout, from
        the rewards as ``trainer.reward_normalize``/``reward_clip`` shape them."""
        out = self.c.algorithm.compute_advantages(
            AdvantageInput(
                rewards=self.controls.rewards_for_algorithm(rollout.rewards, self.row_ranks),
                action_mask=rollout.action_mask,
                group_size=rollout.group_size,
                old_log_probs=rollout.old_log_probs,
                ref_log_probs=rollout.ref_log_probs,
                values=rollout.values,
                kl_coef=self.controls.kl_coef,  # β of this step (adaptive KL)
            )
        )
        rollout.advantages = out.advantages
        rollout.returns = out.returns
        return out

    def _kl_control(self, rollout: RolloutBatch) -> dict[str, float]:
        """``kl_coef`` of this step and the rollout's KL to the reference; then one step of
        an adaptive controller."""
        metrics = self.controls.metrics()
        if rollout.ref_log_probs is not None and rollout.old_log_probs is not None:
            measured = rollout_kl(
                self.row_ranks, rollout.old_log_probs, rollout.ref_log_probs, rollout.action_mask
            )
            metrics["rollout_kl"] = measured
            samples = len(rollout) * self.row_ranks.world_size
            self.controls.update_kl(measured, samples)
        return metrics

    def _sync_weights(self) -> None:
        """Push the actor's weights to the engine. An engine that generates with the actor's
        own module needs nothing (and gathering sharded weights for it would be wasted)."""
        if self.c.engine.shares_model:
            return
        self.c.engine.update_weights(self.c.strategy.weights_for_sync(self.actor))

    def _rollout_metrics(
        self, collected: CollectedGroups, rollout: RolloutBatch, advantages: AdvantageOutput
    ) -> dict[str, float]:
        """Rewards and lengths, dynamic sampling, the algorithm's advantage metrics and the
        critic's view of the rollout, over every rank."""
        metrics = rollout_metrics(self.row_ranks, collected, rollout)
        metrics.update(collected.metrics)
        metrics.update(self._sample_means(advantages.metrics, len(rollout), "advantage/"))
        if self.critic is not None:
            metrics.update(self.critic.rollout_metrics(rollout))
        return metrics

    def _pace(self, timer: PhaseTimer, started: float, generated: float) -> dict[str, float]:
        """Seconds per phase (the slowest rank's), and generated tokens per second."""
        s = self.c.strategy
        times = reduce_values(s, {**timer.pop(), "time/step": time.perf_counter() - started}, "max")
        times["tokens_per_s"] = generated / max(times["time/generate"], 1e-9)
        return times

    def _sample_means(
        self, means: dict[str, float], samples: int, prefix: str = ""
    ) -> dict[str, float]:
        """Per-rank means over ``samples`` samples -> means over every rank's samples."""
        sums = {f"{prefix}{k}": v * samples for k, v in means.items()}
        return reduce_means(self.row_ranks, sums, samples)

    def _modal_inputs(self, model: torch.nn.Module, mb: RolloutBatch) -> dict[str, Any]:
        """The micro-batch's media as ``model`` (the prepared actor or reference) declares
        its inputs; empty for text-only rows."""
        if mb.multimodal is None:
            return {}
        return unwrapped_actor(self.c.strategy, model).select_inputs(mb.modal_inputs())

    @torch.no_grad()
    def _log_probs(self, actor: Any, rollout: RolloutBatch) -> torch.Tensor:
        out = torch.zeros_like(rollout.engine_log_probs)
        was_training = actor.training
        actor.eval()
        for rows in self._micro_batches(rollout, torch.arange(len(rollout))):
            mb = rollout.select(rows).to(self.c.strategy.device)
            with self._autocast():
                lp = self._forward(actor, mb).log_probs
            out[rows, : lp.shape[1]] = lp.float().cpu()
        actor.train(was_training)
        return out * rollout.action_mask

    def _micro_batches(self, rollout: RolloutBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """``rows`` of ``rollout`` cut into micro-batches: ``trainer.micro_batch_size`` rows,
        or ``trainer.max_tokens_per_micro_batch`` tokens (``micro_batches.py``; a collective
        then)."""
        t = self.cfg.trainer
        plan = plan_micro_batches(
            rollout.attention_mask[rows].sum(-1),
            micro_batch_size=t.micro_batch_size,
            max_tokens=t.max_tokens_per_micro_batch,
            packing=t.packing is True,  # resolved in __init__
            agree=agree_over_ranks(self.c.strategy),
        )
        return [rows[positions] for positions in plan]

    def _forward(
        self, model: torch.nn.Module, mb: RolloutBatch, *, return_entropy: bool = False
    ) -> ActorOutput:
        """``model`` (the prepared actor or reference) on a micro-batch, packed when
        ``trainer.packing`` is on; per-token outputs in the micro-batch's padded layout."""
        return actor_forward(
            model,
            unwrapped_actor(self.c.strategy, model),
            mb.sequences,
            mb.attention_mask,
            packing=self.cfg.trainer.packing is True,  # resolved in __init__
            return_entropy=return_entropy,
            **self._modal_inputs(model, mb),
        )

    # ------------------------------------------------------------------ update
    def _train(self, rollout: RolloutBatch, step: int) -> dict[str, float]:
        """``epochs`` passes over this rank's rollout in shuffled optimizer batches (this
        rank's share of ``optimizer_batch_size``), each in micro-batches of accumulation.
        The policy trains unless ``algorithm.updates_policy(step)`` says no (critic
        warm-up); a critic trains on the same micro-batches. With one optimizer step, the
        training forward's log-probs are those of the rollout's weights: they become the
        rollout's ``trainer_log_probs`` (and its old ones when no pass computed them)."""
        t, s = self.cfg.trainer, self.c.strategy
        updates_policy = self.c.algorithm.updates_policy(step)
        recorded = None
        if updates_policy and self.updates_per_step == 1 and rollout.trainer_log_probs is None:
            recorded = torch.zeros_like(rollout.engine_log_probs)
        generator = torch.Generator().manual_seed(self.cfg.run.seed * 7_919 + step)
        shares = self.row_ranks.world_size
        batch_size = (t.optimizer_batch_size or len(rollout) * shares) // shares
        sums: dict[str, float] = {}
        tokens_seen = 0.0
        grad_norms: list[float] = []
        critic_norms: list[float] = []
        self.actor.train()
        for _ in range(t.epochs):
            for chunk in shuffled_chunks(len(rollout), batch_size, generator):
                scale = self._loss_scale(rollout, chunk)
                micro_batches = self._micro_batches(rollout, chunk)
                for index, rows in enumerate(micro_batches):
                    last = index == len(micro_batches) - 1
                    mb = rollout.select(rows)
                    weight = float(mb.action_mask.sum())
                    metrics: dict[str, float] = {}
                    if updates_policy:
                        with nullcontext() if last else no_sync(s, self.actor):
                            policy_metrics, log_probs = self._train_micro_batch(mb, scale)
                        metrics.update(policy_metrics)
                        if recorded is not None:
                            recorded[rows, : log_probs.shape[1]] = log_probs.cpu()
                    if self.critic is not None:
                        metrics.update(
                            self.critic.train_micro_batch(mb, scale, step=step, sync_gradients=last)
                        )
                    tokens_seen += weight
                    for key, value in metrics.items():
                        sums[key] = sums.get(key, 0.0) + value * weight
                if updates_policy:
                    grad_norms.append(
                        s.optimizer_step(
                            self.actor,
                            self.optimizer,
                            self.scheduler,
                            max_grad_norm=t.max_grad_norm,
                        )
                    )
                if self.critic is not None:
                    critic_norms.append(self.critic.optimizer_step())
        if recorded is not None:
            rollout.trainer_log_probs = recorded
            if rollout.old_log_probs is None:
                rollout.old_log_probs = recorded
        metrics = reduce_means(s, sums, tokens_seen)
        if grad_norms:
            metrics["grad_norm"] = sum(grad_norms) / len(grad_norms)
        if critic_norms:
            metrics["critic/grad_norm"] = sum(critic_norms) / len(critic_norms)
        metrics["lr"] = self.scheduler.get_last_lr()[0] if self.scheduler is not None else 0.0
        return metrics

    def _loss_scale(self, rollout: RolloutBatch, chunk: torch.Tensor) -> LossScale:
        """Token and sequence counts of the optimizer batch summed over every share of the
        rows; ``world_size`` over every rank (gradients are averaged over all)."""
        s = self.c.strategy
        local = torch.tensor([float(rollout.action_mask[chunk].sum()), float(len(chunk))])
        tokens, sequences = (int(v) for v in self.row_ranks.all_reduce(local, op="sum"))
        return LossScale(
            num_tokens=max(1, tokens), num_sequences=sequences, world_size=s.world_size
        )

    def _train_micro_batch(
        self, mb: RolloutBatch, scale: LossScale
    ) -> tuple[dict[str, float], torch.Tensor]:
        """Forward, policy loss and backward of one micro-batch; returns its metrics
        (per-token means) and its log-probs (detached, 0 outside the action mask), which are
        the old ones when the rollout carries none (``old_log_probs_source``)."""
        s = self.c.strategy
        mb = mb.to(s.device)
        if mb.advantages is None:
            raise RuntimeError("internal: a micro-batch reached training unscored")
        with self._autocast():
            out = self._forward(self.actor, mb, return_entropy=True)
        log_probs = out.log_probs.float()
        current = log_probs.detach() * mb.action_mask
        loss = self.c.algorithm.policy_loss(
            PolicyLossInput(
                log_probs=log_probs,
                old_log_probs=current if mb.old_log_probs is None else mb.old_log_probs,
                advantages=mb.advantages,
                action_mask=mb.action_mask,
                scale=scale,
                ref_log_probs=mb.ref_log_probs,
                entropy=out.entropy,
                kl_coef=self.controls.kl_coef,
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
        return metrics, current

    # ------------------------------------------------------------------ evaluate, save
    def _autocast(self) -> Any:
        return self.c.strategy.autocast()

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current policy (``eval/accuracy`` ...), as the loop logs
        them; collective (every rank calls it)."""
        s = self.c.strategy
        with self._autocast(), generation_context(s, self.actor):
            return evaluate(self.c.engine, self.c.tokenizer, self.data, self.cfg, self.row_ranks)

    def save(self, step: int) -> None:
        """The actor's checkpoint (with the loop's state in its client state), then the
        critic's inside it."""
        path = checkpoint_dir(self.out, step)
        self.c.strategy.save_checkpoint(
            path,
            model=self.actor,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            client_state={
                "step": step,
                "sampler": self.data.sampler.state_dict(),
                "controls": self.controls.state_dict(),
                "run": self.identity.state(),
                **(
                    {}
                    if self.cost_multiplier is None
                    else {"cost_multiplier": self.cost_multiplier.state_dict()}
                ),
            },
        )
        if self.critic is not None:
            self.critic.save(path)
        if self.c.strategy.is_rank_0:
            write_checkpoint_identity(path, self.identity, step)


def apply_learning_rate(
    optimizer: torch.optim.Optimizer, scheduler: Any, old: float, new: float
) -> None:
    """Scale the learning rates a checkpoint restored (the optimizer's groups, a scheduler's
    base rates) from ``old`` to ``new``, keeping the schedule's position."""
    ratio = new / old
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
