"""``Algorithm``: an advantage estimator plus a policy loss. It never owns the loop.

Shapes: ``B`` samples of ``T`` per-token positions aligned as in ``actor.py`` (``T`` is the
sequence length minus one). Samples of one prompt are contiguous: rows
``[g * G, (g + 1) * G)`` form group ``g`` with ``G = group_size``.

The training loop calls ``compute_advantages`` once per rollout batch (no gradients) and
``policy_loss`` once per micro-batch (with gradients through ``log_probs``).

Dynamic sampling (DAPO, arXiv 2503.14476) -- the contract between an algorithm and the loop:

1. After scoring a rollout round, the loop calls ``filter_groups(rewards, group_size)`` with
   that round's outcome rewards ``[B]`` (as the reward model returned them, before any
   shaping ``compute_advantages`` applies) and keeps the groups marked ``True``.
2. While fewer groups are kept than the step needs (``trainer.prompts_per_step``) and fewer
   than ``max_resample_rounds`` extra rounds have run in this step, the loop takes as many
   new prompts as groups are missing, generates, scores and filters them the same way.
   Kept groups beyond the step's size are left out (the first ones kept are trained).
3. If the batch is still short after ``max_resample_rounds`` extra rounds, the loop fills it
   with groups it dropped (in the order they were dropped), so that every trained batch has
   the same size; such groups get zero advantage from group-relative estimators.
4. The loop reports per step how many groups were filtered, how many extra rounds ran,
   how many extra prompts were sampled and how many dropped groups filled the batch (e.g.
   ``dynamic_sampling/filtered_groups``, ``.../extra_rounds``, ``.../extra_prompts``,
   ``.../filled_groups``).

The base class keeps every group and allows no extra round, so an algorithm that does not
override them never changes the loop's behaviour.

A critic (PPO with GAE, arXiv 1707.06347 and 1506.02438) -- what an algorithm whose
``needs_critic()`` is True declares, and what the loop does with it (critic-free algorithms
declare nothing and none of this happens). The critic is a model the core owns
(``lightrft_core/models/critic.py``: a transformers trunk and a linear value head; values
``[B, T-1]`` aligned with the log-probs, the value at ``t`` being that of the state before
the action at ``t``). The algorithm chooses it (``critic_spec()``) and scores it
(``value_loss``); the loop (``lightrft_core/trainer/critic.py``) does the rest:

1. Once, after the actor is prepared: the loop builds the critic of ``critic_spec()``,
   creates its optimizer and scheduler through the strategy (peak rate
   ``trainer.critic_learning_rate``, the actor's ``trainer.*`` schedule over the same number
   of optimizer steps) and prepares it with ``strategy.prepare``, so that ``fsdp`` and
   ``deepspeed`` shard it like the actor.
2. Every step, after the old (and reference) log-probs and before ``compute_advantages``:
   the critic's values of the rollout, 0 outside the action mask, are passed as
   ``AdvantageInput.values``. The loop keeps them (the *old values*) and
   ``AdvantageOutput.returns`` with the rollout, and logs ``critic/explained_variance``,
   ``critic/value_mean`` and ``critic/return_mean`` over every rank.
3. ``updates_policy(step)`` (``step`` counts from 1) is False during a critic warm-up: the
   loop then skips the actor's forward, policy loss, backward, optimizer step and weight
   sync, and trains only the critic.
4. For every micro-batch, after the policy backward and before the actor's optimizer step:
   the critic's forward, ``value_loss(ValueLossInput(...))`` with the policy loss's own
   ``LossScale``, backward; after the optimizer batch's last micro-batch, the critic's
   optimizer step (``trainer.max_grad_norm``). The metrics are logged as ``critic/<key>``
   (per-token means, as the policy's) with ``critic/grad_norm``. A ``shared`` critic leaves
   the value loss's trunk gradient to the actor's optimizer step; hence the order.
5. Each step checkpoint holds the critic's (model, optimizer, scheduler) in
   ``<step dir>/critic``, written after the actor's with ``strategy.save_checkpoint`` and
   restored on resume; at the end ``strategy.export_hf`` writes ``<output_dir>/final_critic``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch

from .component import Component


def keep_every_group(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B // G]`` all True: the default of ``filter_groups``, after checking that
    ``rewards`` is ``[B]`` with ``B`` a multiple of ``group_size``."""
    if rewards.dim() != 1 or group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"filter_groups needs rewards [B] with B a multiple of group_size; got shape "
            f"{tuple(rewards.shape)} and group_size {group_size!r}"
        )
    return torch.ones(rewards.shape[0] // group_size, dtype=torch.bool, device=rewards.device)


@dataclass(frozen=True)
class AlgorithmContext:
    """What an algorithm needs to know about the run, given once by the loop through
    ``Algorithm.setup`` before the first step (never copied into every batch).

    ``max_new_tokens``: the engine's maximum response length in tokens
    (``engine.max_new_tokens``), for losses normalised by it (Dr.GRPO) and estimators that
    shape rewards by length (DAPO's overlong shaping); ``None`` when unknown. ``group_size``:
    samples per prompt (``engine.n_samples_per_prompt``). ``world_size``: data-parallel
    ranks. ``all_reduce``: the strategy's ``all_reduce(value, op=...)`` when a batch is one
    rank's share of a data-parallel batch (``None`` on one process), for statistics that span
    the global batch (whitening, global group counts).
    """

    max_new_tokens: int | None = None
    group_size: int | None = None
    world_size: int = 1
    all_reduce: Callable[..., torch.Tensor] | None = None


@dataclass
class AdvantageInput:
    """Everything an estimator may use; optional tensors are ``None`` when not computed.

    ``rewards``: ``[B]`` float32 outcome reward per sample. ``action_mask``: ``[B, T]`` bool,
    True on response tokens. ``old_log_probs``/``ref_log_probs``/``values``: ``[B, T]``
    float32 (behaviour policy, reference policy, critic). ``kl_coef``: this step's KL
    coefficient β from the loop's KL controller (``trainer.kl_controller``); ``None`` means
    the algorithm's configured value. What does not change from batch to batch (the maximum
    response length, the collectives) is in ``Algorithm.context``.
    """

    rewards: torch.Tensor
    action_mask: torch.Tensor
    group_size: int
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    kl_coef: float | None = None


@dataclass
class AdvantageOutput:
    """``advantages``: ``[B, T]`` float32, zero outside ``action_mask``. ``returns``:
    ``[B, T]`` critic targets (only estimators with a critic). ``metrics``: scalars to log."""

    advantages: torch.Tensor
    returns: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LossScale:
    """Sizes of the whole optimizer batch, summed over micro-batches and ranks.

    Losses divide by these (never by micro-batch sizes) so that the gradient is identical
    with 1 micro-batch, with N micro-batches of accumulation, and on N ranks. Strategies
    average gradients over ranks, so a loss is also multiplied by ``world_size``.
    """

    num_tokens: int
    num_sequences: int
    world_size: int = 1


@dataclass
class PolicyLossInput:
    """One micro-batch. ``log_probs``: ``[B, T]`` float32 with gradients (current policy).
    ``old_log_probs``: behaviour log-probs. ``advantages``: from ``compute_advantages``.
    ``action_mask``: ``[B, T]`` bool. ``entropy``: ``[B, T]`` when the actor computed it
    (with gradients, for an entropy bonus). ``kl_coef``: this step's β, as in
    ``AdvantageInput``; ``None`` means the configured value."""

    log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    action_mask: torch.Tensor
    scale: LossScale
    ref_log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    kl_coef: float | None = None


@dataclass
class PolicyLossOutput:
    """``loss``: scalar with gradients, this micro-batch's share of the batch loss (see
    ``LossScale``). ``metrics``: detached scalars (``clip_fraction``, ``approx_kl`` ...),
    each already a per-micro-batch mean."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


CriticLayout = Literal["separate", "shared"]


@dataclass(frozen=True)
class CriticSpec:
    """The critic an algorithm asks for (``Algorithm.critic_spec``).

    ``layout``: ``separate``, a model of its own (trunk + value head), which every strategy
    prepares and shards like the actor; ``shared``, a value head on the actor's trunk: the
    optimizer holds the head only, the value loss's trunk gradient is applied by the actor's
    next optimizer step (not during a warm-up, when the actor does not step), and the
    export is the head alone. ``shared`` needs a strategy whose prepared actor can run its
    trunk alone (``local``; ``fsdp`` and ``deepspeed`` train ``separate`` critics).
    ``path``: the folder a separate critic starts from (a causal LM, whose trunk is taken,
    or an exported critic); ``None``: the actor's checkpoint. ``head_init_std``: std of the
    new value head's weights; 0 zero-initialises it (every value starts at 0).
    """

    layout: CriticLayout = "separate"
    path: str | None = None
    head_init_std: float = 0.0

    def __post_init__(self) -> None:
        if self.layout not in get_args(CriticLayout):
            raise ValueError(f"layout must be separate or shared, got {self.layout!r}")
        if self.layout == "shared" and self.path is not None:
            raise ValueError("a shared critic is a head on the actor's trunk; it has no path")
        if self.head_init_std < 0.0:
            raise ValueError(f"head_init_std must be >= 0, got {self.head_init_std}")


@dataclass
class ValueLossInput:
    """One micro-batch for ``Algorithm.value_loss``. ``values``: ``[B, T]`` float32 with
    gradients (the critic now). ``old_values``: the rollout's values (before this step's
    updates). ``returns``: ``AdvantageOutput.returns``. ``action_mask``: ``[B, T]`` bool.
    ``scale``: the policy loss's ``LossScale`` of the optimizer batch."""

    values: torch.Tensor
    old_values: torch.Tensor
    returns: torch.Tensor
    action_mask: torch.Tensor
    scale: LossScale


@dataclass
class ValueLossOutput:
    """``loss``: scalar with gradients, this micro-batch's share of the batch value loss
    (see ``LossScale``). ``metrics``: detached per-micro-batch means (``value_loss`` ...)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Algorithm(Component):
    """RL algorithm: turns rewards into advantages and log-probs into a loss."""

    kind: ClassVar[str] = "algorithm"
    #: Group estimators (GRPO, RLOO ...) need ``n_samples_per_prompt >= 2``; the
    #: configuration loader refuses smaller values.
    requires_groups: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.context = AlgorithmContext()

    def setup(self, context: AlgorithmContext) -> None:
        """Called once by the loop before the first step with what the algorithm needs to
        know about the run. The default keeps it as ``self.context``; an override must call
        ``super().setup(context)`` and may refuse a run it cannot train (``ValueError``)."""
        self.context = context

    def initial_kl_coef(self) -> float | None:
        """The configured KL coefficient β (the start value of an adaptive controller), or
        ``None`` when the algorithm has no KL term. The loop passes each step's β explicitly
        (``AdvantageInput.kl_coef``, ``PolicyLossInput.kl_coef``); the default is ``None``."""
        return None

    def needs_reference(self) -> bool:
        """Whether the loop must compute reference-policy log-probs (KL on)."""
        return False

    def needs_critic(self) -> bool:
        """Whether the loop must compute critic values (PPO with GAE)."""
        return False

    def advantages_use_old_log_probs(self) -> bool:
        """Whether ``compute_advantages`` reads ``AdvantageInput.old_log_probs`` (a KL
        penalty in the reward), so that the loop computes them in a pass of their own before
        training. When False and a rollout is trained in one optimizer step, the loop takes
        them from the training forward (detached; ``trainer.old_logprobs``). The default,
        ``needs_reference()``, holds for estimators whose one use of them is a KL to the
        reference."""
        return self.needs_reference()

    def filter_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[B // G]`` bool: True for each group of one rollout round to train on.

        ``rewards``: ``[B]`` outcome rewards of the round, groups of ``group_size``
        contiguous samples. The base class keeps every group; see the module docstring for
        what the loop does with dropped groups.
        """
        return keep_every_group(rewards, group_size)

    @property
    def max_resample_rounds(self) -> int:
        """How many extra rollout rounds per step the loop may run to replace groups that
        ``filter_groups`` dropped (0: never resample)."""
        return 0

    def critic_spec(self) -> CriticSpec:
        """The critic the loop builds when ``needs_critic()`` is True (module docstring, "A
        critic"). The base class asks for a separate critic started from the actor's
        checkpoint with a zero value head."""
        return CriticSpec()

    def value_loss(self, batch: ValueLossInput) -> ValueLossOutput:
        """The critic's loss of one micro-batch (with gradients through ``batch.values``),
        aggregated like the policy loss. An algorithm whose ``needs_critic()`` is True must
        override it; the base class raises ``NotImplementedError``."""
        raise NotImplementedError(
            f"{type(self).__name__} needs a critic but does not define value_loss"
        )

    def updates_policy(self, step: int) -> bool:
        """Whether the loop updates the policy at ``step`` (counted from 1). False during a
        critic warm-up, when only the critic is trained; the base class always updates."""
        return True

    @abstractmethod
    def compute_advantages(self, batch: AdvantageInput) -> AdvantageOutput:
        """Advantages for a whole rollout batch (no gradients)."""

    @abstractmethod
    def policy_loss(self, batch: PolicyLossInput) -> PolicyLossOutput:
        """The policy loss of one micro-batch."""
