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

A preset of GRPO's parts (the ``grpo`` estimator and the ``ppo_clip`` loss) with two other
defaults: ``scale_rewards_by_std: false`` and ``loss_aggregation: seq-mean-token-sum-norm``.

Departures: none in the defaults (the paper has no KL term, ``kl_coef`` defaults to 0);
every GRPO option stays available (a non-zero KL, clip-higher, other aggregation modes,
token selection, entropy bonus).
"""

from __future__ import annotations

from lightrft_core.algorithms.clipped_loss import ClippedPolicyLoss
from lightrft_core.algorithms.parts import preset

from .grpo import GRPO_KL_DEFAULTS, GroupNormalizedEstimator

DrGRPO = preset(
    "dr_grpo",
    advantage=GroupNormalizedEstimator,
    loss=ClippedPolicyLoss,
    defaults={
        **GRPO_KL_DEFAULTS,
        "scale_rewards_by_std": False,
        "loss_aggregation": "seq-mean-token-sum-norm",
    },
    doc="GRPO with unscaled advantages and a constant-normalised token sum.",
    module=__name__,
    class_name="DrGRPO",
)
