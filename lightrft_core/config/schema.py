"""The typed configuration tree: one dataclass per section.

Sections ``model``, ``strategy``, ``engine``, ``algorithm`` and ``reward`` select a component
by ``name``; their other keys are the core's common fields below plus the options of the
selected component (its own ``Config`` dataclass), written flat in the same YAML mapping::

    strategy:
      name: deepspeed
      zero_stage: 3        # an option of the deepspeed strategy's Config

Every field carries ``metadata={"help": ...}``; ``lightrft config schema`` prints them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


def _positive(section: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{section}.{key} must be > 0, got {value}")


def _non_negative(section: str, **values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{section}.{key} must be >= 0, got {value}")


def _check_step_range(key: str, steps: list[int]) -> None:
    if len(steps) != 2 or not 1 <= steps[0] <= steps[1]:
        raise ValueError(f"{key} must be [first, last] with 1 <= first <= last, got {steps}")


OPTIONS_FIELD = "options"


#: Metadata of the field holding the selected component's own ``Config`` instance; the
#: loader fills it, and YAML output flattens it into the section.
_OPTIONS_METADATA = {"help": "options of the selected component", "options": True}


# ---------------------------------------------------------------------- plain sections
@dataclass
class RunConfig:
    name: str = field(default="lightrft", metadata={"help": "Name of the run (used in logs)."})
    output_dir: str = field(
        default="runs/lightrft",
        metadata={"help": "Directory for checkpoints, metrics, TensorBoard files and exports."},
    )
    seed: int = field(default=42, metadata={"help": "Global random seed."})
    plugins: list[str] = field(
        default_factory=list,
        metadata={"help": "Plugins to load for this run, like repeated --plugin options."},
    )


@dataclass
class DataConfig:
    train_path: str | None = field(
        default=None,
        metadata={"help": "Training prompts: a JSONL/JSON/Parquet file or a datasets source."},
    )
    eval_path: str | None = field(
        default=None, metadata={"help": "Held-out prompts for evaluation (same formats)."}
    )
    input_key: str = field(default="prompt", metadata={"help": "Field holding the prompt."})
    label_key: str = field(
        default="answer", metadata={"help": "Field holding the reference answer (label)."}
    )
    response_key: str = field(
        default="response", metadata={"help": "Field holding the target response (SFT data)."}
    )
    chosen_key: str = field(
        default="chosen",
        metadata={"help": "Field holding the preferred response (reward-model data)."},
    )
    rejected_key: str = field(
        default="rejected",
        metadata={"help": "Field holding the dispreferred response (reward-model data)."},
    )
    image_key: str = field(
        default="images",
        metadata={
            "help": "Field holding a row's images (a list, or one image): local paths "
            "(relative to the data file's folder), bytes or datasets Image values; they fill "
            "the prompt's {type: image} parts in order, or lead its first user message. "
            "Needs a vision-language model with a processor."
        },
    )
    audio_key: str = field(
        default="audios",
        metadata={
            "help": "Field holding a row's audio (a list, or one item): local wav/flac/ogg paths "
            "(relative to the data file's folder), bytes, datasets Audio values or arrays; they "
            "fill the prompt's {type: audio} parts in order, or lead its first user message. "
            "Needs an audio-language model with a processor and lightrft-core[audio]."
        },
    )
    max_audio_seconds: float = field(
        default=30.0,
        metadata={
            "help": "Rows whose audio is longer than this many seconds are malformed (an "
            "error, or skipped with skip_malformed); so are clips longer than the window of a "
            "Whisper feature extractor (chunk_length: 30 s for Qwen2-Audio), which would cut "
            "them."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message prepended through the chat template."}
    )
    apply_chat_template: bool = field(
        default=True, metadata={"help": "Format prompts with the tokenizer's chat template."}
    )
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompts longer than this many tokens are filtered out."}
    )
    max_dropped_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Stop with an error when more than this share of a prompt file's rows is "
            "longer than max_prompt_length (the count is always shown); 1 never stops."
        },
    )
    skip_malformed: bool = field(
        default=False,
        metadata={"help": "Skip and count malformed rows instead of failing on the first one."},
    )

    def __post_init__(self) -> None:
        _positive(
            "data",
            max_prompt_length=self.max_prompt_length,
            max_audio_seconds=self.max_audio_seconds,
        )
        if not 0 <= self.max_dropped_fraction <= 1:
            raise ValueError(
                f"data.max_dropped_fraction must be in [0, 1], got {self.max_dropped_fraction}"
            )


@dataclass
class TrainerConfig:
    max_steps: int = field(default=100, metadata={"help": "Number of RL steps (rollout + update)."})
    prompts_per_step: int = field(
        default=16, metadata={"help": "Prompts sampled per step (global, over all ranks)."}
    )
    micro_batch_size: int = field(
        default=4, metadata={"help": "Samples per forward/backward pass on one rank."}
    )
    packing: bool | Literal["auto"] = field(
        default="auto",
        metadata={
            "help": "Pack several sequences into each row of a forward pass (positions restart "
            "per sequence, attention stays inside it) instead of padding every row to the "
            "longest: the same log-probs, losses and gradients, less padding computed. RL, SFT "
            "and reward-model loops; text-only actors and those that read packed media rows "
            "(qwen_vl, qwen_audio). 'auto': on for a text-only model on sdpa or "
            "flash-attention (all sequences of a pass in one row, no mask), off otherwise "
            "(media, eager attention); split over ranks too under sequence parallelism."
        },
    )
    max_tokens_per_micro_batch: int | None = field(
        default=None,
        metadata={
            "help": "Form micro-batches by a token budget instead of micro_batch_size rows: at "
            "most this many tokens per forward pass (padding counted when packing is off; a "
            "longer row goes alone), longest rows first, balanced; null: micro_batch_size."
        },
    )
    epochs: int = field(default=1, metadata={"help": "Passes over each rollout batch."})
    optimizer_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Samples per optimizer step (global); null = the whole rollout batch, "
            "i.e. one optimizer step per epoch."
        },
    )
    old_logprobs: Literal["auto", "recompute", "engine"] = field(
        default="auto",
        metadata={
            "help": "Old (behaviour) log-probs: 'auto' takes them from the training forward "
            "(detached) when the rollout is trained in one optimizer step and the algorithm "
            "does not use them in its advantages, else recomputes them in a pass of their "
            "own; 'recompute' always runs the pass; 'engine' uses the engine's log-probs."
        },
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate (AdamW)."})
    critic_learning_rate: float = field(
        default=1e-5,
        metadata={
            "help": "Peak learning rate of the critic (algorithms with a critic, e.g. ppo); "
            "the critic follows the actor's schedule, weight decay and gradient clipping."
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adamw_implementation: Literal["auto", "fused", "foreach", "for-loop"] = field(
        default="auto",
        metadata={
            "help": "AdamW kernel: 'auto' = fused when the parameters are fp32 on the CPU or "
            "a CUDA device (several times faster than the per-tensor loop on the CPU), else "
            "torch's default; 'fused', 'foreach', 'for-loop' force one (results agree to the "
            "last bits of a float)."
        },
    )
    lr_scheduler: Literal["constant", "cosine"] = field(
        default="constant", metadata={"help": "Learning-rate schedule after warm-up."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up optimizer steps."})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Global gradient-norm clipping; 0 disables it."}
    )
    eval_every: int = field(
        default=0, metadata={"help": "Evaluate every N steps (and before/after); 0 disables."}
    )
    eval_max_prompts: int = field(
        default=256,
        metadata={
            "help": "Held-out prompts scored per evaluation (>= 1; to evaluate every held-out "
            "prompt, set it to their number or more; to turn evaluation off, eval_every=0)."
        },
    )
    eval_pass_k: int = field(
        default=0,
        metadata={"help": "Also report pass@k with k samples at the engine temperature; 0 = off."},
    )
    save_every: int = field(
        default=0, metadata={"help": "Write a checkpoint every N steps; 0 only at the end."}
    )
    resume_from: str | None = field(
        default=None, metadata={"help": "Checkpoint directory to resume from ('latest' allowed)."}
    )
    # ------------------------------------------------------------ rewards and KL control
    reward_normalize: bool = field(
        default=False,
        metadata={
            "help": "Normalise the rewards the algorithm sees by the running mean and std of "
            "every reward trained on so far (over all ranks); reward/mean stays raw."
        },
    )
    reward_clip: float | None = field(
        default=None,
        metadata={
            "help": "Clamp the rewards the algorithm sees to [-c, c], after normalisation; "
            "null: off."
        },
    )
    kl_controller: Literal["fixed", "adaptive"] = field(
        default="fixed",
        metadata={
            "help": "The KL coefficient: 'fixed' keeps algorithm.kl_coef; 'adaptive' starts "
            "from it and steers the rollout KL towards trainer.kl_target (Ziegler et al. 2019)."
        },
    )
    kl_target: float = field(
        default=6.0,
        metadata={"help": "Adaptive KL: target KL per sample (summed over its tokens)."},
    )
    kl_horizon: float = field(
        default=10000.0,
        metadata={"help": "Adaptive KL: horizon in samples; larger adapts more slowly."},
    )
    profile_steps: list[int] | None = field(
        default=None,
        metadata={
            "help": "[a, b]: record a torch.profiler trace of steps a..b (Chrome/Perfetto JSON "
            "in output_dir/profile/) and print the top operators per phase after step b; "
            "null: off."
        },
    )

    def __post_init__(self) -> None:
        if self.profile_steps is not None:
            _check_step_range("trainer.profile_steps", self.profile_steps)
        if self.reward_clip is not None:
            _positive("trainer", reward_clip=self.reward_clip)
        _positive("trainer", kl_target=self.kl_target, kl_horizon=self.kl_horizon)
        _positive(
            "trainer",
            max_steps=self.max_steps,
            prompts_per_step=self.prompts_per_step,
            micro_batch_size=self.micro_batch_size,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            critic_learning_rate=self.critic_learning_rate,
            eval_max_prompts=self.eval_max_prompts,
        )
        if self.optimizer_batch_size is not None:
            _positive("trainer", optimizer_batch_size=self.optimizer_batch_size)
        if self.max_tokens_per_micro_batch is not None:
            _positive("trainer", max_tokens_per_micro_batch=self.max_tokens_per_micro_batch)
        _non_negative(
            "trainer",
            eval_pass_k=self.eval_pass_k,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            max_grad_norm=self.max_grad_norm,
            eval_every=self.eval_every,
            save_every=self.save_every,
        )


@dataclass
class SFTConfig:
    epochs: int = field(default=1, metadata={"help": "Passes over the SFT dataset."})
    batch_size: int = field(default=32, metadata={"help": "Samples per optimizer step."})
    micro_batch_size: int = field(
        default=8, metadata={"help": "Samples per forward/backward pass."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adamw_implementation: Literal["auto", "fused", "foreach", "for-loop"] = field(
        default="auto",
        metadata={
            "help": "AdamW kernel: 'auto' = fused when the parameters are fp32 on the CPU or "
            "a CUDA device (several times faster than the per-tensor loop on the CPU), else "
            "torch's default; 'fused', 'foreach', 'for-loop' force one (results agree to the "
            "last bits of a float)."
        },
    )
    lr_scheduler: Literal["constant", "cosine"] = field(
        default="cosine", metadata={"help": "Learning-rate schedule after warm-up."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up optimizer steps."})
    max_steps: int = field(
        default=0, metadata={"help": "Stop after this many optimizer steps; 0 = no limit."}
    )
    max_length: int = field(
        default=1024, metadata={"help": "Longer prompt+response samples are dropped."}
    )

    def __post_init__(self) -> None:
        _positive(
            "sft",
            epochs=self.epochs,
            batch_size=self.batch_size,
            micro_batch_size=self.micro_batch_size,
            learning_rate=self.learning_rate,
            max_length=self.max_length,
        )
        _non_negative("sft", warmup_steps=self.warmup_steps, max_steps=self.max_steps)


@dataclass
class RewardModelTrainingConfig:
    heads: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={
            "help": "lightrft rm: the named heads of a multi-head reward model, e.g. "
            "[{name: helpful, preferred_key: better_response_id}, {name: cost, preferred_key: "
            "safer_response_id, lower_is_better: true, safe_keys: [is_response_0_safe, "
            "is_response_1_safe]}]; data.chosen_key / data.rejected_key then name the two "
            "responses (docs/rewards.md). Empty: one head trained on chosen over rejected."
        },
    )

    def __post_init__(self) -> None:
        from ..rewards.heads import heads_problem

        problem = heads_problem(self.heads)
        if problem:
            raise ValueError(problem)


@dataclass
class LoggingConfig:
    log_every: int = field(default=1, metadata={"help": "Print a metrics line every N steps."})
    progress_bar: bool = field(default=True, metadata={"help": "Show a progress bar."})
    trackers: list[str] = field(
        default_factory=lambda: ["console", "jsonl", "tensorboard"],
        metadata={
            "help": "Trackers that record the run (console, jsonl, tensorboard; plugins add "
            "wandb, mlflow ...). Only rank 0 tracks."
        },
    )
    tracker_options: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "Each tracker's options by name, e.g. {wandb: {mode: offline}}."},
    )
    jsonl: bool = field(
        default=True, metadata={"help": "false leaves the jsonl tracker out of trackers."}
    )
    tensorboard: bool = field(
        default=True, metadata={"help": "false leaves the tensorboard tracker out of trackers."}
    )

    save_rollouts_every: int = field(
        default=0,
        metadata={
            "help": "Every N steps, save the trained samples (prompt, response, rewards, "
            "advantage, length, log-prob mismatch) to rollouts/step_NNNNNN.parquet in "
            "output_dir and hand them to the trackers; 0 disables."
        },
    )

    def __post_init__(self) -> None:
        _positive("logging", log_every=self.log_every)
        _non_negative("logging", save_rollouts_every=self.save_rollouts_every)
        if len(set(self.trackers)) != len(self.trackers):
            raise ValueError(f"logging.trackers lists a tracker twice: {self.trackers}")

    def active_trackers(self) -> list[str]:
        """``trackers`` less those the ``jsonl``/``tensorboard`` switches turn off."""
        off = {
            name
            for name, on in (("jsonl", self.jsonl), ("tensorboard", self.tensorboard))
            if not on
        }
        return [name for name in self.trackers if name not in off]


# ---------------------------------------------------------------------- component sections
@dataclass
class ModelSection:
    name: str = field(
        default="language",
        metadata={"help": "Actor class (language; plugins add vision/audio actors)."},
    )
    options: Any = field(default=None, metadata=_OPTIONS_METADATA)


@dataclass
class StrategySection:
    name: str = field(
        default="local", metadata={"help": "Training strategy (local, fsdp, deepspeed ...)."}
    )
    options: Any = field(default=None, metadata=_OPTIONS_METADATA)


@dataclass
class EngineSection:
    name: str = field(default="hf", metadata={"help": "Rollout engine (hf, vllm, sglang ...)."})
    n_samples_per_prompt: int = field(
        default=8, metadata={"help": "Responses sampled per prompt (the group size)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1 = off)."})
    top_k: int = field(default=-1, metadata={"help": "Top-k sampling (-1 = off)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum response length."})
    stop_token_ids: list[int] = field(
        default_factory=list,
        metadata={"help": "Extra token ids that end a response (EOS always does)."},
    )
    first_token_temperature: float | None = field(
        default=None,
        metadata={"help": "FIRE sampling: temperature of the first response token only."},
    )
    options: Any = field(default=None, metadata=_OPTIONS_METADATA)

    def __post_init__(self) -> None:
        _positive(
            "engine",
            n_samples_per_prompt=self.n_samples_per_prompt,
            max_new_tokens=self.max_new_tokens,
        )
        _non_negative("engine", temperature=self.temperature)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"engine.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"engine.top_k must be -1 (off) or >= 1, got {self.top_k}")


@dataclass
class AlgorithmSection:
    name: str = field(
        default="grpo", metadata={"help": "RL algorithm (grpo, dapo, ppo ...; see plugins)."}
    )
    advantage: str | None = field(
        default=None,
        metadata={
            "help": "Advantage estimator that replaces the algorithm's own (grpo, rloo, "
            "reinforce_pp ...; 'lightrft plugins' lists them); its options join the "
            "section. null: the algorithm's. Only for algorithms built from parts."
        },
    )
    loss: str | None = field(
        default=None,
        metadata={
            "help": "Policy loss that replaces the algorithm's own (ppo_clip, gspo, gmpo ...); "
            "its options join the section. null: the algorithm's. Only for algorithms built "
            "from parts."
        },
    )
    options: Any = field(default=None, metadata=_OPTIONS_METADATA)


@dataclass
class RewardSection:
    name: str = field(default="math", metadata={"help": "Reward model (math, exact_match ...)."})
    failure_reward: float = field(
        default=0.0,
        metadata={"help": "Reward of a sample whose reward function raised or returned NaN."},
    )
    timeout_s: float | None = field(
        default=None,
        metadata={
            "help": "Seconds to wait for the rewards of one batch; a batch still unscored then "
            "gets failure_reward for every sample (the call is left running in a background "
            "thread). null: wait as long as it takes."
        },
    )
    max_failure_rate: float = field(
        default=1.0,
        metadata={
            "help": "Stop the run when at least this share of a step's samples fail to score "
            "on reward.max_failure_steps consecutive steps (1.0: only when every sample fails)."
        },
    )
    max_failure_steps: int = field(
        default=3,
        metadata={
            "help": "Consecutive steps at or above reward.max_failure_rate before the run "
            "stops; 0: never stop."
        },
    )
    # ------------------------------------------------------------ Safe RLHF
    cost_limit: float | None = field(
        default=None,
        metadata={
            "help": "Safe RLHF: keep the mean cost (the reward's cost_key sub-score) under this "
            "limit; the algorithm sees reward − λ·cost, λ a Lagrange multiplier updated each "
            "step (docs/rewards.md). null: off."
        },
    )
    cost_key: str = field(
        default="cost", metadata={"help": "Safe RLHF: the sub-score that holds the cost."}
    )
    cost_multiplier_init: float = field(
        default=1.0, metadata={"help": "Safe RLHF: λ at the first step (>= 0)."}
    )
    cost_multiplier_lr: float = field(
        default=0.1, metadata={"help": "Safe RLHF: step size of the λ update."}
    )
    cost_multiplier_update: Literal["linear", "log"] = field(
        default="linear",
        metadata={
            "help": "Safe RLHF: 'linear' λ ← max(0, λ + lr·(cost − limit)); 'log' as the paper, "
            "ln λ ← ln λ + lr·λ·(cost − limit)."
        },
    )
    options: Any = field(default=None, metadata=_OPTIONS_METADATA)

    def __post_init__(self) -> None:
        if self.cost_limit is not None and not math.isfinite(self.cost_limit):
            raise ValueError(f"reward.cost_limit must be finite or null, got {self.cost_limit}")
        _non_negative("reward", cost_multiplier_init=self.cost_multiplier_init)
        _positive("reward", cost_multiplier_lr=self.cost_multiplier_lr)
        if self.cost_multiplier_update == "log" and self.cost_multiplier_init <= 0:
            raise ValueError(
                "reward.cost_multiplier_update=log keeps ln λ: reward.cost_multiplier_init "
                f"must be > 0, got {self.cost_multiplier_init}"
            )
        if not math.isfinite(self.failure_reward):
            raise ValueError(f"reward.failure_reward must be finite, got {self.failure_reward}")
        if self.timeout_s is not None and not 0 < self.timeout_s < math.inf:
            raise ValueError(
                f"reward.timeout_s must be a number of seconds > 0 or null, got {self.timeout_s}"
            )
        if not 0 < self.max_failure_rate <= 1:
            raise ValueError(
                f"reward.max_failure_rate must be in (0, 1], got {self.max_failure_rate}"
            )
        _non_negative("reward", max_failure_steps=self.max_failure_steps)


@dataclass
class LightRFTConfig:
    """The whole configuration of a run."""

    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "The run itself."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Prompt datasets."})
    model: ModelSection = field(
        default_factory=ModelSection, metadata={"help": "The policy (actor component)."}
    )
    strategy: StrategySection = field(
        default_factory=StrategySection, metadata={"help": "Training strategy component."}
    )
    engine: EngineSection = field(
        default_factory=EngineSection, metadata={"help": "Rollout engine component."}
    )
    algorithm: AlgorithmSection = field(
        default_factory=AlgorithmSection, metadata={"help": "RL algorithm component."}
    )
    reward: RewardSection = field(
        default_factory=RewardSection, metadata={"help": "Reward model component."}
    )
    trainer: TrainerConfig = field(
        default_factory=TrainerConfig, metadata={"help": "RL optimisation and schedule."}
    )
    sft: SFTConfig = field(
        default_factory=SFTConfig, metadata={"help": "Supervised fine-tuning (lightrft sft)."}
    )
    rm: RewardModelTrainingConfig = field(
        default_factory=RewardModelTrainingConfig,
        metadata={"help": "Reward-model heads (lightrft rm; optimisation is the sft section's)."},
    )
    logging: LoggingConfig = field(
        default_factory=LoggingConfig, metadata={"help": "Metrics and progress output."}
    )


#: Sections that select a component, and the component kind they select.
COMPONENT_SECTIONS: dict[str, str] = {
    "model": "actor",
    "strategy": "strategy",
    "engine": "engine",
    "algorithm": "algorithm",
    "reward": "reward",
}
