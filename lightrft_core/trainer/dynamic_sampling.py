"""Rollout rounds of one step and dynamic sampling (DAPO, arXiv 2503.14476).

The contract is in ``lightrft_core/interfaces/algorithm.py`` ("Dynamic sampling"). One
step collects ``quota`` groups per rank (``trainer.prompts_per_step / world_size``):

1. a first round of ``quota`` prompts; ``algorithm.filter_groups`` marks the groups to keep;
2. while some rank keeps fewer than ``quota`` groups and fewer than
   ``algorithm.max_resample_rounds`` extra rounds ran, every rank runs one more round of
   ``m`` new prompts, ``m`` the largest shortfall of any rank (the counts are reduced, so
   every rank takes the same decisions and draws the same number of prompts);
3. each rank trains its first ``quota`` kept groups, completed (when still short) by the
   groups it dropped, in the order they were dropped.

So every trained batch has exactly ``prompts_per_step × n`` samples on every step. With the
base class (every group kept, no extra round) this is exactly one round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..interfaces import Algorithm, GenerationOutput
from .distributed import RowRanks, reduce_values


@dataclass
class ScoredRound:
    """One rollout round on this rank: ``items[g]`` is the prompt of group ``g`` and
    ``outputs[g * n : (g + 1) * n]`` its samples; ``rewards`` ``[B]`` as the reward model
    returned them (failures replaced), ``sub_scores`` ``{name: [B]}``, ``texts``
    ``{name: [B strings]}`` (``RewardOutput.texts``, saved with the rollouts)."""

    items: list[Any]
    outputs: list[GenerationOutput]
    rewards: torch.Tensor
    sub_scores: dict[str, torch.Tensor]
    failures: int = 0
    texts: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.items and len(self.outputs) % len(self.items):
            raise ValueError(
                f"the engine returned {len(self.outputs)} samples for {len(self.items)} "
                "prompts; it must return n samples per prompt, grouped by prompt"
            )

    @property
    def group_size(self) -> int:
        return len(self.outputs) // max(1, len(self.items))


@dataclass
class CollectedGroups:
    """The groups a step trains on, in order (``(round, group)`` pairs), every round it
    ran, and the dynamic-sampling counts of this step (global over ranks)."""

    rounds: list[ScoredRound]
    chosen: list[tuple[int, int]]
    metrics: dict[str, float] = field(default_factory=dict)

    def generated(self) -> dict[str, torch.Tensor]:
        """Per-sample columns of every sample generated in the step (all rounds): rewards,
        response lengths, truncation, sub-scores (0 where a round lacks one)."""
        names = sorted({name for r in self.rounds for name in r.sub_scores})
        columns: dict[str, list[torch.Tensor]] = {"reward": [], "length": [], "truncated": []}
        columns.update({f"sub/{name}": [] for name in names})
        for r in self.rounds:
            columns["reward"].append(r.rewards.float())
            columns["length"].append(torch.tensor([float(len(o.token_ids)) for o in r.outputs]))
            columns["truncated"].append(
                torch.tensor([float(o.finish_reason == "length") for o in r.outputs])
            )
            for name in names:
                scores = r.sub_scores.get(name, torch.zeros(len(r.outputs)))
                columns[f"sub/{name}"].append(scores.float())
        return {key: torch.cat(parts) for key, parts in columns.items()}

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.rounds)

    def trained_batch(self) -> tuple[list[list[int]], list[GenerationOutput], torch.Tensor]:
        """``(prompt_ids, outputs, rewards)`` of the chosen groups, group after group, with
        each output's ``prompt_index`` pointing into ``prompt_ids``."""
        prompt_ids: list[list[int]] = []
        outputs: list[GenerationOutput] = []
        rewards: list[torch.Tensor] = []
        for index, (r, g) in enumerate(self.chosen):
            scored = self.rounds[r]
            n = scored.group_size
            prompt_ids.append(list(scored.items[g].prompt_ids))
            outputs += [replace(o, prompt_index=index) for o in scored.outputs[g * n : (g + 1) * n]]
            rewards.append(scored.rewards[g * n : (g + 1) * n].float())
        return prompt_ids, outputs, torch.cat(rewards)


def collect_groups(
    algorithm: Algorithm,
    strategy: RowRanks,
    quota: int,
    run_round: Callable[[int, int], ScoredRound],
) -> CollectedGroups:
    """Run the rounds of one step (module docstring). ``run_round(prompts, round)`` draws
    ``prompts`` new prompts on this rank, generates and scores them; ``round`` counts from
    0. Collective: every rank must call it."""
    rounds: list[ScoredRound] = []
    kept: list[tuple[int, int]] = []
    dropped: list[tuple[int, int]] = []
    extra_prompts = 0

    def add(prompts: int) -> None:
        scored = run_round(prompts, len(rounds))
        keep = algorithm.filter_groups(scored.rewards, scored.group_size).tolist()
        if len(keep) != len(scored.items):
            raise ValueError(
                f"{type(algorithm).__name__}.filter_groups returned {len(keep)} flags for "
                f"{len(scored.items)} groups; it must return one per group"
            )
        index = len(rounds)
        rounds.append(scored)
        for g, flag in enumerate(keep):
            (kept if flag else dropped).append((index, g))

    add(quota)
    while len(rounds) - 1 < algorithm.max_resample_rounds:
        missing = int(
            reduce_values(strategy, {"missing": quota - min(quota, len(kept))}, "max")["missing"]
        )
        if missing == 0:
            break
        extra_prompts += missing * strategy.world_size
        add(missing)

    chosen = kept[:quota]
    filled = dropped[: quota - len(chosen)]
    if not filters_groups(algorithm):
        return CollectedGroups(rounds=rounds, chosen=chosen + filled)
    counts = reduce_values(
        strategy,
        {"filtered": len(dropped), "filled": len(filled), "kept": len(chosen)},
        "sum",
    )
    metrics = {
        "dynamic_sampling/rounds": float(len(rounds)),
        "dynamic_sampling/extra_rounds": float(len(rounds) - 1),
        "dynamic_sampling/extra_prompts": float(extra_prompts),
        "dynamic_sampling/filtered_groups": counts["filtered"],
        "dynamic_sampling/filled_groups": counts["filled"],
        "dynamic_sampling/kept_groups": counts["kept"],
    }
    return CollectedGroups(rounds=rounds, chosen=chosen + filled, metrics=metrics)


def filters_groups(algorithm: Algorithm) -> bool:
    """Whether ``algorithm`` may drop groups (it overrides ``filter_groups`` or allows extra
    rounds); only then does the loop log the ``dynamic_sampling/...`` metrics."""
    overrides = type(algorithm).filter_groups is not Algorithm.filter_groups
    return overrides or algorithm.max_resample_rounds > 0


def draw_prompts(sampler: Any, prompts: int) -> list[Any]:
    """This rank's ``prompts`` next items of ``sampler`` (a ``PromptSampler`` whose batch
    size is global: ``prompts × world_size`` items are taken from the data order)."""
    regular = sampler.batch_size
    sampler.batch_size = prompts * sampler.world_size
    try:
        return next(sampler)
    finally:
        sampler.batch_size = regular
