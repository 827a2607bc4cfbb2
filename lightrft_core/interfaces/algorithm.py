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

A critic (PPO with GAE, arXiv 1707.06347 and 1506.02438) -- the contract between an algorithm
whose ``needs_critic()`` is True and the loop (critic-free algorithms return ``None`` from
``build_critic`` and nothing below happens):

1. Once, after the actor is prepared, inside ``strategy.model_init_context()``:
   ``critic = algorithm.build_critic(cfg, strategy, actor)``. The critic builds its model,
   its own optimizer and scheduler through ``strategy`` and prepares them itself.
2. Every step, after the old (and reference) log-probs and before ``compute_advantages``:
   ``values = critic.compute_values(sequences, attention_mask, micro_batch_size=...) *
   action_mask`` (``[B, T-1]``, aligned with the log-probs). Pass it as
   ``AdvantageInput.values``; keep it (the *old values*) and ``AdvantageOutput.returns``
   with the rollout; log ``critic.rollout_metrics(values, returns, action_mask)``.
3. ``algorithm.updates_policy(step)`` (``step`` counts from 1) is False during the critic's
   warm-up: the loop then skips the actor's forward, policy loss, backward, optimizer step
   and weight sync, and trains only the critic.
4. For every micro-batch, after the policy backward and before the actor's
   ``optimizer_step``: ``critic.train_micro_batch(CriticBatch(...), step=step,
   sync_gradients=<last micro-batch of the optimizer batch>)`` with the policy loss's own
   ``LossScale``. It runs forward, value loss and backward, and returns metrics that are
   per-token means of the micro-batch (weight them by its response tokens, as the policy
   metrics). After the optimizer batch's last micro-batch: ``critic.optimizer_step()``,
   which returns the gradient norm. (A critic that shares the actor's trunk leaves the value
   loss's trunk gradient for the actor's ``optimizer_step``; hence the order.)
5. ``critic.save(dir)`` after each actor checkpoint (e.g. into ``<step dir>/critic``),
   ``critic.load(dir)`` on resume, ``critic.export_hf(dir, tokenizer)`` at the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .component import Component

if TYPE_CHECKING:
    from .strategy import StrategyBase


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


@dataclass
class CriticBatch:
    """One micro-batch for ``Critic.train_micro_batch``. ``sequences``/``attention_mask``:
    ``[B, T]`` as for the actor. ``old_values``: ``[B, T-1]`` the values computed before
    ``compute_advantages`` (``Critic.compute_values``). ``returns``: ``[B, T-1]`` from
    ``AdvantageOutput.returns``. ``action_mask``: ``[B, T-1]`` bool. ``scale``: the policy
    loss's ``LossScale`` of the optimizer batch."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    old_values: torch.Tensor
    returns: torch.Tensor
    action_mask: torch.Tensor
    scale: LossScale


class Critic(ABC):
    """A trainable value function as the loop drives it (see the module docstring, "A
    critic"); built by ``Algorithm.build_critic``. It owns its model, optimizer and scheduler,
    and calls the strategy itself."""

    @abstractmethod
    def compute_values(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, *, micro_batch_size: int
    ) -> torch.Tensor:
        """``[B, T-1]`` float32 values, no gradients, on ``sequences.device``: position ``t``
        is the value of the state ``sequences[:, : t + 1]``, the state before the action
        whose log-prob is at ``t``; 0 where a token is padding."""

    @abstractmethod
    def rollout_metrics(
        self, values: torch.Tensor, returns: torch.Tensor, action_mask: torch.Tensor
    ) -> dict[str, float]:
        """Metrics of a rollout's old values against its returns over the response tokens of
        every rank (e.g. ``critic/explained_variance``). Collective: every rank calls it."""

    @abstractmethod
    def train_micro_batch(
        self, batch: CriticBatch, *, step: int, sync_gradients: bool = True
    ) -> dict[str, float]:
        """Forward, value loss and backward of one micro-batch (gradients accumulate until
        ``optimizer_step``). ``sync_gradients=False`` on every micro-batch of an optimizer
        batch but the last. Returns per-token means of the micro-batch (``critic/...``)."""

    @abstractmethod
    def optimizer_step(self) -> float:
        """Clip, step the critic's optimizer and scheduler, zero its gradients; returns the
        gradient norm before clipping."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write a resumable checkpoint of the critic (model, optimizer, scheduler) at
        ``path``. Collective."""

    @abstractmethod
    def load(self, path: str | Path) -> None:
        """Restore what ``save`` wrote. Collective."""

    @abstractmethod
    def export_hf(self, path: str | Path, tokenizer: Any = None) -> None:
        """Write the trained critic as a folder its model class reloads. Collective."""


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

    def filter_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[B // G]`` bool: True for each group of one rollout round to train on.

        ``rewards``: ``[B]`` outcome rewards of the round, groups of ``group_size``
        contiguous samples. The base class keeps every group; see the module docstring for
        what the loop does with dropped groups.
        """
        if rewards.dim() != 1 or group_size < 1 or rewards.shape[0] % group_size != 0:
            raise ValueError(
                f"filter_groups needs rewards [B] with B a multiple of group_size; got shape "
                f"{tuple(rewards.shape)} and group_size {group_size!r}"
            )
        return torch.ones(rewards.shape[0] // group_size, dtype=torch.bool, device=rewards.device)

    @property
    def max_resample_rounds(self) -> int:
        """How many extra rollout rounds per step the loop may run to replace groups that
        ``filter_groups`` dropped (0: never resample)."""
        return 0

    def build_critic(
        self, cfg: Any, strategy: StrategyBase, actor: torch.nn.Module
    ) -> Critic | None:
        """The critic the loop trains beside the actor (module docstring, "A critic"), or
        ``None``. ``cfg``: the run's ``LightRFTConfig``; ``actor``: the prepared actor (a
        critic may share its trunk). An algorithm whose ``needs_critic()`` is True must
        return one; the base class returns ``None``."""
        return None

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
