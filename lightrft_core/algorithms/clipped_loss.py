"""The clipped policy loss, ``ppo_clip``: the one policy loss PPO, GRPO and its variants,
REINFORCE++ and RLOO share, with its config options (and the KL options estimators share).

Loss per token: the PPO clip (``ppo_clip.ppo_clip_loss``)::

    L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)     (+ optional dual clip)

aggregated over the optimizer batch with ``aggregate_loss`` (exact under gradient
accumulation and data parallel), plus ``β·aggregate(kl(lp, lp_ref))`` when the KL is a loss
term (``kl_mode: loss``), minus ``c·aggregate(H)`` with an entropy bonus
(``entropy_coef``). With ``kl_mode: reward`` the estimator puts the KL in its advantages
instead (``rollout_kl``). With ``high_entropy_token_fraction`` only the selected tokens carry
the surrogate (``token_selection``); the normalisers stay those of the whole response.

A loss that changes only the per-token surrogate (GSPO's sequence ratio, GMPO's geometric
mean) subclasses ``ClippedPolicyLoss`` and overrides ``surrogate``; aggregation, KL term,
token selection and entropy bonus stay the same.

``seq-mean-token-sum-norm`` divides token sums by a constant: ``max_tokens_norm`` when set,
else the engine's ``max_new_tokens`` that the loop gives in ``AlgorithmContext``
(``resolve_max_tokens``). β is the step's (``PolicyLossInput.kl_coef``) when the loop passes
one, else ``kl_coef``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple, get_args

import torch

from ..interfaces import (
    AdvantageInput,
    AlgorithmContext,
    PolicyLoss,
    PolicyLossInput,
    PolicyLossOutput,
)
from .aggregation import AGGREGATION_MODES, AggregationMode, aggregate_loss, masked_mean
from .kl import KL_ESTIMATORS, KLEstimator, kl_estimate, step_kl_coef
from .options import check_aggregation, check_kl, check_one_of
from .ppo_clip import check_clip_parameters, ppo_clip_loss
from .token_selection import entropy_bonus_loss, high_entropy_token_mask

KLMode = Literal["reward", "loss"]
KL_MODES: tuple[str, ...] = get_args(KLMode)


@dataclass
class KLOptions:
    """The KL-to-the-reference options; an estimator's and a loss's ``Config`` extend it and
    share the values (the estimator applies ``kl_mode: reward``, the loss ``kl_mode: loss``)."""

    kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "β, the weight of KL(policy || reference). 0 disables the reference model."
        },
    )
    kl_estimator: KLEstimator = field(
        default="k1",
        metadata={"help": "Per-token KL estimator: one of " + ", ".join(KL_ESTIMATORS) + "."},
    )
    kl_mode: KLMode = field(
        default="reward",
        metadata={
            "help": "'reward': the KL penalises the rewards (how depends on the advantage "
            "estimator). 'loss': kl_coef * KL is added to the policy loss."
        },
    )

    def __post_init__(self) -> None:
        check_kl(self.kl_coef, self.kl_estimator)
        check_one_of("kl_mode", self.kl_mode, KL_MODES)

    @property
    def kl_in_reward(self) -> bool:
        return self.kl_mode == "reward" and self.kl_coef > 0.0

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_mode == "loss" and self.kl_coef > 0.0


@dataclass
class ClippedLossOptions(KLOptions):
    """Options of the clipped policy loss (clip, aggregation, KL); PPO's ``Config`` extends
    it (and may redeclare a field to change its default)."""

    # ------------------------------------------------------------ clipping
    clip_eps_low: float = field(
        default=0.2,
        metadata={"help": "PPO clip: the ratio is clipped below at 1 - clip_eps_low."},
    )
    clip_eps_high: float = field(
        default=0.2,
        metadata={
            "help": "PPO clip: the ratio is clipped above at 1 + clip_eps_high (DAPO's "
            "clip-higher uses 0.28)."
        },
    )
    dual_clip: float | None = field(
        default=None,
        metadata={
            "help": "Dual-clip constant c > 1: the loss of a token with negative advantage is "
            "capped at c*|A|. None disables it."
        },
    )
    # ------------------------------------------------------------ loss aggregation
    loss_aggregation: AggregationMode = field(
        default="token-mean",
        metadata={
            "help": "How per-token losses are averaged: one of "
            + ", ".join(AGGREGATION_MODES)
            + "."
        },
    )
    max_tokens_norm: int | None = field(
        default=None,
        metadata={
            "help": "The constant token sums are divided by in seq-mean-token-sum-norm "
            "(Dr.GRPO: the maximum generation length). None: engine.max_new_tokens, as the "
            "training loop gives it."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # KL
        self._check_clipping()
        check_aggregation(self.loss_aggregation, self.max_tokens_norm, norm_required=False)

    def _check_clipping(self) -> None:
        """The clip parameters (a loss with other clipping rules overrides this)."""
        check_clip_parameters(self.clip_eps_low, self.clip_eps_high, self.dual_clip)


@dataclass
class PolicyLossOptions(ClippedLossOptions):
    """Options of ``ppo_clip`` and the losses that subclass it: the clipped loss's, then
    token selection and the entropy bonus."""

    high_entropy_token_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Only the top fraction (0, 1] of each response's tokens by entropy enter "
            "the policy loss (arXiv 2506.01939 keeps 0.2); at least 1 token per response. "
            "None: every token."
        },
    )
    entropy_coef: float = field(
        default=0.0,
        metadata={
            "help": "Entropy bonus: adds -entropy_coef * entropy (aggregated like the loss) "
            "to the loss. 0 disables it."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction = self.high_entropy_token_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(
                f"high_entropy_token_fraction must be in (0, 1] (or null for every token), "
                f"got {fraction}"
            )
        if self.entropy_coef < 0.0:
            raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")


def resolve_max_tokens(
    loss_aggregation: str,
    max_tokens_norm: int | None,
    context: AlgorithmContext,
    algorithm: str,
) -> int | None:
    """The constant of ``seq-mean-token-sum-norm``: ``max_tokens_norm`` if set, else the
    engine's ``max_new_tokens`` (``context.max_new_tokens``); ``max_tokens_norm`` for the
    other modes (unused there)."""
    if loss_aggregation != "seq-mean-token-sum-norm":
        return max_tokens_norm
    value = max_tokens_norm if max_tokens_norm is not None else context.max_new_tokens
    if value is None or value < 1:
        raise ValueError(
            f"{algorithm}: loss_aggregation 'seq-mean-token-sum-norm' divides by the maximum "
            "generation length: set algorithm.max_tokens_norm, or let the training loop pass "
            f"engine.max_new_tokens (Algorithm.setup's AlgorithmContext); got {value!r}"
        )
    return value


def rollout_kl(options: KLOptions, batch: AdvantageInput, algorithm: str) -> torch.Tensor:
    """``[B, T]`` per-token ``kl(lp_old, lp_ref)`` of a rollout, 0 outside the mask."""
    if batch.old_log_probs is None or batch.ref_log_probs is None:
        raise ValueError(
            f"{algorithm} with kl_mode 'reward' and kl_coef > 0 needs old_log_probs and "
            "ref_log_probs in AdvantageInput (the loop computes them when needs_reference() "
            "is True)"
        )
    kl = kl_estimate(batch.old_log_probs, batch.ref_log_probs, options.kl_estimator)
    return torch.where(batch.action_mask.bool(), kl, torch.zeros_like(kl))


class Surrogate(NamedTuple):
    """``loss``: ``[B, T]`` per-token policy loss, already zero on tokens that must not count
    (it is aggregated over the response mask). ``metrics``: detached scalars."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class ClippedPolicyLoss(PolicyLoss):
    """``ppo_clip``: the PPO clipped surrogate per token (module docstring)."""

    name: ClassVar[str] = "ppo_clip"
    Config: ClassVar[type] = PolicyLossOptions
    config: PolicyLossOptions

    def initial_kl_coef(self) -> float:
        return self.config.kl_coef

    def needs_reference(self) -> bool:
        return self.config.kl_in_loss

    def __call__(self, batch: PolicyLossInput) -> PolicyLossOutput:
        """This micro-batch's share of the loss and its metrics: the surrogate's
        (``clip_fraction``, ``ratio_mean``, ``dual_clip_fraction``), ``approx_kl`` (k3 to the
        old policy), and ``kl`` / ``selected_token_fraction`` when they apply."""
        cfg = self.config
        mask = batch.action_mask.bool()  # [B, T]
        policy_mask = mask
        if cfg.high_entropy_token_fraction is not None:
            entropy = self._entropy(batch, "high_entropy_token_fraction")
            policy_mask = high_entropy_token_mask(entropy, mask, cfg.high_entropy_token_fraction)
        aggregation = cfg.loss_aggregation
        max_tokens = resolve_max_tokens(aggregation, cfg.max_tokens_norm, self.context, self.label)
        surrogate = self.surrogate(batch, policy_mask)
        loss = aggregate_loss(surrogate.loss, mask, aggregation, batch.scale, max_tokens=max_tokens)
        kl = None
        if cfg.kl_in_loss:
            if batch.ref_log_probs is None:
                raise ValueError(
                    f"{self.label} with kl_mode 'loss' and kl_coef > 0 needs ref_log_probs in "
                    "PolicyLossInput (the loop computes them when needs_reference() is True)"
                )
            kl = kl_estimate(batch.log_probs, batch.ref_log_probs, cfg.kl_estimator)  # [B, T]
            loss = loss + step_kl_coef(batch.kl_coef, cfg.kl_coef) * aggregate_loss(
                kl, mask, aggregation, batch.scale, max_tokens=max_tokens
            )
        if cfg.entropy_coef > 0.0:
            entropy = self._entropy(batch, "entropy_coef")
            loss = loss + entropy_bonus_loss(
                entropy.float(),
                mask,
                aggregation,
                batch.scale,
                coef=cfg.entropy_coef,
                max_tokens=max_tokens,
            )

        with torch.no_grad():
            metrics = dict(surrogate.metrics)
            approx_kl = kl_estimate(batch.log_probs, batch.old_log_probs, "k3")
            metrics["approx_kl"] = masked_mean(approx_kl, mask)
            if cfg.high_entropy_token_fraction is not None:
                metrics["selected_token_fraction"] = masked_mean(policy_mask.float(), mask)
            if kl is None and batch.ref_log_probs is not None:
                kl = kl_estimate(batch.log_probs, batch.ref_log_probs, cfg.kl_estimator)
            if kl is not None:
                metrics["kl"] = masked_mean(kl.detach(), mask)
        return PolicyLossOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})

    def surrogate(self, batch: PolicyLossInput, policy_mask: torch.Tensor) -> Surrogate:
        """The per-token PPO-clip loss, zero outside ``policy_mask`` (``[B, T]`` bool: the
        response tokens, or the selected high-entropy ones)."""
        cfg = self.config
        ppo = ppo_clip_loss(
            batch.log_probs,
            batch.old_log_probs,
            batch.advantages,
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            dual_clip=cfg.dual_clip,
        )
        loss = torch.where(policy_mask, ppo.loss, torch.zeros_like(ppo.loss))
        with torch.no_grad():
            metrics = {
                "clip_fraction": masked_mean(ppo.clipped.float(), policy_mask),
                "ratio_mean": masked_mean(ppo.ratio.detach(), policy_mask),
            }
            if cfg.dual_clip is not None:
                metrics["dual_clip_fraction"] = masked_mean(ppo.dual_clipped.float(), policy_mask)
        return Surrogate(loss, metrics)

    def _entropy(self, batch: PolicyLossInput, option: str) -> torch.Tensor:
        if batch.entropy is None:
            raise ValueError(
                f"{self.label} with {option} set needs the per-token entropy in "
                "PolicyLossInput.entropy (the loop asks the actor for it with "
                "return_entropy=True)"
            )
        return batch.entropy
