"""Dr.GRPO: "GRPO done right" (Z. Liu et al., *Understanding R1-Zero-Like Training: A
Critical Perspective*, arXiv 2503.20783).

The paper removes GRPO's two normalisations that bias optimisation:

* the std division of the advantage (question-level difficulty bias): ``A_i = r_i −
  mean_G r``;
* the division by each response's own length (response-level length bias): the token sums
  are divided by one constant, the maximum generation length, instead --
  ``loss = Σ_i Σ_t m·L_t / (MAX_TOKENS · N_seq)`` (``seq-mean-token-sum-norm``).

The per-token loss is GRPO's PPO clip; ``MAX_TOKENS`` is ``max_tokens_norm`` or, when that
is not set, the engine's ``max_new_tokens`` passed by the training loop.

Departures: none in the defaults (the paper has no KL term, ``kl_coef`` defaults to 0);
every GRPO option stays available (a non-zero KL, clip-higher, other aggregation modes,
token selection, entropy bonus).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lightrft_core.algorithms import AGGREGATION_MODES, AggregationMode

from .grpo import GRPO


class DrGRPO(GRPO):
    """GRPO with unscaled advantages and a constant-normalised token sum."""

    name: ClassVar[str] = "dr_grpo"

    @dataclass
    class Config(GRPO.Config):
        """Options of ``algorithm.name: dr_grpo`` (GRPO's, with Dr.GRPO's defaults)."""

        scale_rewards_by_std: bool = field(
            default=False,
            metadata={
                "help": "Divide group-centred rewards by the group std. Dr.GRPO: false "
                "(A = r - mean of the group)."
            },
        )
        loss_aggregation: AggregationMode = field(
            default="seq-mean-token-sum-norm",
            metadata={
                "help": "How per-token losses are averaged: one of "
                + ", ".join(AGGREGATION_MODES)
                + ". Dr.GRPO: seq-mean-token-sum-norm (token sums over a constant)."
            },
        )

    config: Config
