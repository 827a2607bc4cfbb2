"""Held-out evaluation: greedy accuracy and, optionally, pass@k."""

from __future__ import annotations

from typing import Any

import torch

from ..config import LightRFTConfig
from ..interfaces import InferenceEngine, RewardInput, SamplingParams
from .data import RunData
from .distributed import RowRanks, reduce_values
from .multimodal import generate_kwargs


def _score(data: RunData, items: list[Any], outputs: list[Any], tokenizer: Any) -> Any:
    return data.score(
        RewardInput(
            prompts=[items[o.prompt_index].prompt_text for o in outputs],
            responses=[tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outputs],
            labels=[items[o.prompt_index].label for o in outputs],
            metadata=[items[o.prompt_index].metadata for o in outputs],
            multimodal=[items[o.prompt_index].multimodal for o in outputs],
        )
    ).output


def _correct(output: Any) -> torch.Tensor:
    """Per-sample success: the ``accuracy`` sub-score when the reward gives one, else
    reward > 0.5."""
    if "accuracy" in output.sub_scores:
        return output.sub_scores["accuracy"].float()
    return (output.rewards > 0.5).float()


def evaluate(
    engine: InferenceEngine,
    tokenizer: Any,
    data: RunData,
    cfg: LightRFTConfig,
    strategy: RowRanks | None = None,
) -> dict[str, float]:
    """``eval/accuracy`` and ``eval/reward`` of greedy answers on the held-out prompts;
    ``eval/pass@k`` when ``trainer.eval_pass_k`` > 0.

    With a ``strategy`` of several ranks, each rank answers every ``world_size``-th prompt
    and the sums are reduced, so every rank returns the metrics of all the prompts. Every
    rank calls ``generate`` the same number of times, with an empty list when it has no
    prompt. The caller makes the trainer's model collective-free (``generation_context``)."""
    rank, world_size = (strategy.rank, strategy.world_size) if strategy else (0, 1)
    items = data.eval_items[: cfg.trainer.eval_max_prompts][rank::world_size]
    prompts = [it.prompt_ids for it in items]
    stops = [*data.stop_ids, *cfg.engine.stop_token_ids]
    k = cfg.trainer.eval_pass_k
    sums = {"correct": 0.0, "reward": 0.0, "prompts": float(len(items)), "pass": 0.0}
    engine.wake_up()
    # every rank calls generate, with no prompts too: a data-parallel engine (vllm under
    # torchrun) steps together with the other ranks' engines
    greedy = SamplingParams(
        n=1, temperature=0.0, max_new_tokens=cfg.engine.max_new_tokens, stop_token_ids=stops
    )
    answers = engine.generate(prompts, greedy, **generate_kwargs(items))
    if items:
        output = _score(data, items, answers, tokenizer)
        sums["correct"] = float(_correct(output).sum())
        sums["reward"] = float(output.rewards.sum())
    if k > 0:
        sampled = SamplingParams(
            n=k,
            temperature=cfg.engine.temperature or 1.0,
            top_p=cfg.engine.top_p,
            top_k=cfg.engine.top_k,
            max_new_tokens=cfg.engine.max_new_tokens,
            stop_token_ids=stops,
            seed=cfg.run.seed + rank,
        )
        samples = engine.generate(prompts, sampled, **generate_kwargs(items))
        if items:
            output = _score(data, items, samples, tokenizer)
            per_prompt = _correct(output).view(len(items), k)
            sums["pass"] = float(per_prompt.max(dim=1).values.sum())
    engine.sleep()
    if strategy is not None:
        sums = reduce_values(strategy, sums, "sum")
    count = max(sums["prompts"], 1.0)
    metrics = {"eval/accuracy": sums["correct"] / count, "eval/reward": sums["reward"] / count}
    if k > 0:
        metrics[f"eval/pass@{k}"] = sums["pass"] / count
    return metrics
