"""Safe RLHF (arXiv 2310.12773): maximise the reward under a constraint on the mean cost,
``E[c] ≤ d`` (``reward.cost_limit``), by the Lagrangian ``max_θ min_{λ≥0} E[r] − λ·(E[c] − d)``.

The cost is a sub-score of the run's reward (``reward.cost_key``, e.g. the ``cost`` head of
a multi-head reward model, ``heads.py``). The loop hands the algorithm ``r − λ·c`` per
sample, λ fixed during a step; after the step λ takes one step of dual ascent on the step's
mean cost ``C̄`` (every sample generated in the step, over every rank):

* ``linear`` (projected gradient ascent): ``λ ← max(0, λ + lr·(C̄ − d))``;
* ``log`` (the paper's: gradient ascent on ``ln λ``, which keeps λ > 0):
  ``ln λ ← ln λ + lr·λ·(C̄ − d)``.

λ grows while the mean cost is over the limit and shrinks under it. Departure from the
paper: it combines the reward and cost *advantages* of a critic, ``(A_r − λ·A_c)/(1 + λ)``;
here the rewards are combined before the algorithm's advantage, which is the same up to
the ``1/(1 + λ)`` scale for advantages linear in the reward (group-normalised ones, as
GRPO's, ignore the scale anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ..interfaces import RewardOutput

UpdateRule = Literal["linear", "log"]


@dataclass
class CostMultiplier:
    """The Lagrange multiplier λ of the cost constraint (module docstring)."""

    limit: float
    value: float = 1.0
    lr: float = 0.1
    rule: UpdateRule = "linear"
    cost_key: str = "cost"

    @classmethod
    def from_config(cls, reward_section: Any) -> CostMultiplier | None:
        """The multiplier ``reward.cost_limit`` asks for, or ``None`` (off)."""
        r = reward_section
        if r.cost_limit is None:
            return None
        return cls(
            limit=float(r.cost_limit),
            value=float(r.cost_multiplier_init),
            lr=float(r.cost_multiplier_lr),
            rule=r.cost_multiplier_update,
            cost_key=r.cost_key,
        )

    def penalised(self, output: RewardOutput) -> RewardOutput:
        """``output`` with rewards ``r − λ·c``; the sub-scores (the cost among them) and texts
        as they were, and the unpenalised reward as ``reward_unpenalised``."""
        cost = output.sub_scores.get(self.cost_key)
        if cost is None:
            raise ValueError(
                f"reward.cost_limit is set, but the reward reported no {self.cost_key!r} "
                f"sub-score to read the cost from (its sub-scores: "
                f"{', '.join(output.sub_scores) or 'none'}); set reward.cost_key to the one "
                "that holds the cost, e.g. the cost head of a multi-head reward model"
            )
        rewards = output.rewards - self.value * cost.to(output.rewards.dtype)
        sub_scores = {**output.sub_scores, "reward_unpenalised": output.rewards.clone()}
        return RewardOutput(rewards=rewards, sub_scores=sub_scores, texts=output.texts)

    def update(self, mean_cost: float) -> None:
        """One dual-ascent step on the step's mean cost."""
        violation = mean_cost - self.limit
        if self.rule == "linear":
            self.value = max(0.0, self.value + self.lr * violation)
        else:
            self.value = math.exp(math.log(self.value) + self.lr * self.value * violation)

    def metrics(self) -> dict[str, float]:
        return {"safe_rlhf/lambda": self.value}

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "rule": self.rule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rule"] != self.rule:
            raise ValueError(
                f"the checkpoint's cost multiplier was updated by the {state['rule']!r} rule "
                f"and this run asks for {self.rule!r}; keep reward.cost_multiplier_update "
                "when resuming"
            )
        self.value = float(state["value"])
