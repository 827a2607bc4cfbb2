"""The rollout side of a step's metrics: rewards, lengths and log-prob agreement, over the
samples of every rank."""

from __future__ import annotations

import torch

from .distributed import RowRanks, gather_columns, reduce_values
from .dynamic_sampling import CollectedGroups
from .experience import RolloutBatch


def rollout_metrics(
    strategy: RowRanks, collected: CollectedGroups, rollout: RolloutBatch
) -> dict[str, float]:
    """Reward, accuracy and length statistics of every sample generated in the step (every
    round of dynamic sampling; per-sample values are gathered, so the std is that of the
    whole batch), the size of the trained batch, and the agreement of the engine's and the
    trainer's log-probs on it. Collective."""
    generated = collected.generated()
    every = gather_columns(strategy, generated)
    rewards = every["reward"]
    metrics = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "response_length": float(every["length"].mean()),
        "response_truncated": float(every["truncated"].mean()),
    }
    names = [key.removeprefix("sub/") for key in every if key.startswith("sub/")]
    for name in names:
        metrics[f"reward/{name}"] = float(every[f"sub/{name}"].mean())
    if "accuracy" in names:
        metrics["accuracy"] = metrics["reward/accuracy"]
    counts = {
        "failures": float(collected.failures),
        "samples": float(len(rollout)),
        "generated_tokens": float(generated["length"].sum()),
        "diff": 0.0,
        "tokens": 0.0,
        "engine": 0.0,
    }
    trainer = rollout.trainer_log_probs
    if trainer is not None and rollout.engine_log_probs.abs().sum() > 0:
        mask = rollout.action_mask
        diff = (trainer - rollout.engine_log_probs).abs()
        counts.update(
            diff=float(torch.where(mask, diff, torch.zeros_like(diff)).sum()),
            tokens=float(mask.sum()),
            engine=1.0,
        )
    totals = reduce_values(strategy, counts, "sum")
    metrics["reward/failures"] = totals["failures"]
    metrics["reward/failure_rate"] = totals["failures"] / len(rewards)
    metrics["samples"] = totals["samples"]
    metrics["generated_tokens"] = totals["generated_tokens"]
    if totals["engine"] > 0:
        metrics["logprob_mismatch"] = totals["diff"] / max(totals["tokens"], 1.0)
    return metrics
