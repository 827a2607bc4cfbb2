"""What the loop adjusts between the reward and the algorithm, step by step, and keeps in
its checkpoints:

* **reward normalisation and clipping** (``trainer.reward_normalize``,
  ``trainer.reward_clip``): the rewards the algorithm sees are ``(r − μ) / (σ + ε)`` with the
  running mean and std of every reward trained on so far (over all ranks), then clamped to
  ``[−c, c]`` (``lightrft_core.algorithms.RewardNormalizer``). Dynamic sampling filters on
  the raw rewards, and the logged ``reward/*`` metrics stay raw.
* **the KL coefficient** (``trainer.kl_controller``): ``fixed`` keeps the algorithm's
  configured β (``Algorithm.initial_kl_coef()``, its ``kl_coef`` option); ``adaptive`` starts
  from it and, after each step, updates it from the step's measured KL to the reference
  (``lightrft_core.algorithms.kl_control``). The loop passes the current value
  (``LoopControls.kl_coef``) explicitly in the step's ``AdvantageInput.kl_coef`` and
  ``PolicyLossInput.kl_coef``; the algorithm's configuration is never changed. The
  measured KL is per sample, summed over its response tokens and averaged over the samples
  of every rank, with the ``k1`` estimator ``lp_old − lp_ref`` (unbiased on samples of the
  rollout policy, as in Ziegler et al. 2019).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..algorithms import RewardNormalizer, build_kl_controller
from ..algorithms.kl_control import ADAPTIVE_KL_ERROR_CLIP, KLController
from ..config.errors import ConfigError, ConfigIssue
from ..interfaces import Algorithm
from .distributed import RowRanks

logger = logging.getLogger("lightrft.trainer")


class LoopControls:
    """The reward normaliser and the KL controller of one run (module docstring)."""

    def __init__(
        self,
        trainer_cfg: Any,
        algorithm: Algorithm,
        *,
        samples_per_step: int,
        has_reference: bool,
    ) -> None:
        t = trainer_cfg
        self.normalizer: RewardNormalizer | None = None
        if t.reward_normalize or t.reward_clip is not None:
            self.normalizer = RewardNormalizer(normalize=t.reward_normalize, clip=t.reward_clip)
        coef = algorithm.initial_kl_coef()
        if t.kl_controller == "adaptive":
            _check_adaptive(t, algorithm, coef, samples_per_step, has_reference)
        self.kl: KLController | None = None
        if coef is not None:
            self.kl = build_kl_controller(
                t.kl_controller, coef, target=t.kl_target, horizon=t.kl_horizon
            )
        self.adaptive = t.kl_controller == "adaptive"

    # ------------------------------------------------------------------ per step
    def rewards_for_algorithm(self, rewards: torch.Tensor, strategy: RowRanks) -> torch.Tensor:
        """The rewards ``compute_advantages`` gets: normalised and clipped when asked for
        (the running statistics are updated with this batch, of every rank)."""
        if self.normalizer is None:
            return rewards
        if strategy.world_size == 1:
            return self.normalizer(rewards)
        return self.normalizer(rewards, all_reduce=strategy.all_reduce)

    @property
    def kl_coef(self) -> float | None:
        """This step's β, which the loop passes to the algorithm (``None``: the algorithm
        has no KL coefficient and uses its own configuration)."""
        return self.kl.value if self.kl is not None else None

    def update_kl(self, measured_kl: float | None, samples: int) -> None:
        """One controller step after the step's update (``adaptive`` only)."""
        if self.kl is not None and self.adaptive and measured_kl is not None:
            self.kl.update(measured_kl, samples)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.kl is not None:
            out["kl_coef"] = self.kl.value
        if self.normalizer is not None and self.normalizer.normalize:
            out["reward/running_mean"] = self.normalizer.stats.mean
            out["reward/running_std"] = self.normalizer.stats.std
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.normalizer is not None:
            state["reward_normalizer"] = self.normalizer.state_dict()
        if self.kl is not None:
            state["kl_controller"] = self.kl.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the running statistics and an adaptive β from a checkpoint's client
        state. A fixed β always comes from the configuration."""
        if self.normalizer is not None and self.normalizer.normalize:
            if "reward_normalizer" in state:
                self.normalizer.load_state_dict(state["reward_normalizer"])
            else:
                logger.warning(
                    "the checkpoint holds no reward statistics (trainer.reward_normalize was "
                    "off in the run that wrote it); they start afresh"
                )
        if self.kl is not None and "kl_controller" in state:
            saved = state["kl_controller"]
            if saved.get("kind") != self.kl.state_dict()["kind"]:
                raise ConfigError(
                    [
                        ConfigIssue(
                            "trainer.kl_controller",
                            f"the checkpoint was written with a {saved.get('kind')!r} KL "
                            f"controller and this run asks for a "
                            f"{self.kl.state_dict()['kind']!r} one; keep the same "
                            "controller when resuming",
                        )
                    ]
                )
            if self.adaptive:
                self.kl.load_state_dict(saved)


def rollout_kl(
    strategy: RowRanks,
    old_log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    action_mask: torch.Tensor,
) -> float:
    """Mean over the samples of every rank of ``Σ_t (lp_old_t − lp_ref_t)`` over each
    sample's response tokens (``[B, T]`` inputs). One collective."""
    diff = torch.where(action_mask, old_log_probs - ref_log_probs, 0.0)
    local = torch.tensor([float(diff.sum()), float(action_mask.shape[0])], dtype=torch.float64)
    total = strategy.all_reduce(local, op="sum")
    return float(total[0]) / max(float(total[1]), 1.0)


def _check_adaptive(
    t: Any, algorithm: Algorithm, coef: float | None, samples: int, has_reference: bool
) -> None:
    issues = []
    if coef is None:
        issues.append(
            ConfigIssue(
                "trainer.kl_controller",
                f"'adaptive' adjusts algorithm.kl_coef, and the algorithm {algorithm.name!r} "
                "has no such option; use 'fixed'",
            )
        )
    elif coef <= 0 or not has_reference:
        issues.append(
            ConfigIssue(
                "trainer.kl_controller",
                f"'adaptive' scales β = algorithm.kl_coef by a factor per step, so it needs "
                f"a start value > 0 (got {coef}) and a reference model; set "
                "algorithm.kl_coef, e.g. 0.05",
            )
        )
    largest_step = ADAPTIVE_KL_ERROR_CLIP * samples / t.kl_horizon
    if largest_step >= 1:
        issues.append(
            ConfigIssue(
                "trainer.kl_horizon",
                f"{t.kl_horizon:g} is too short for {samples} samples per step: one update "
                f"could multiply β by 1 − {ADAPTIVE_KL_ERROR_CLIP}·{samples}/{t.kl_horizon:g} "
                f"<= 0; use a horizon above {ADAPTIVE_KL_ERROR_CLIP * samples:g}",
            )
        )
    if issues:
        raise ConfigError(issues)
