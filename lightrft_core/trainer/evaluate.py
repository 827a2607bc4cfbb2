"""Held-out evaluation: greedy accuracy and, optionally, pass@k."""

from __future__ import annotations

from typing import Any

import torch

from ..config import LightRFTConfig
from ..interfaces import InferenceEngine, RewardInput, SamplingParams
from .data import RunData


def _score(data: RunData, items: list[Any], outputs: list[Any], tokenizer: Any) -> Any:
    return data.score(
        RewardInput(
            prompts=[items[o.prompt_index].prompt_text for o in outputs],
            responses=[tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outputs],
            labels=[items[o.prompt_index].label for o in outputs],
            metadata=[items[o.prompt_index].metadata for o in outputs],
        )
    ).output


def _correct(output: Any) -> torch.Tensor:
    """Per-sample success: the ``accuracy`` sub-score when the reward gives one, else
    reward > 0.5."""
    if "accuracy" in output.sub_scores:
        return output.sub_scores["accuracy"].float()
    return (output.rewards > 0.5).float()


def evaluate(
    engine: InferenceEngine, tokenizer: Any, data: RunData, cfg: LightRFTConfig
) -> dict[str, float]:
    """``eval/accuracy`` and ``eval/reward`` of greedy answers on the held-out prompts;
    ``eval/pass@k`` when ``trainer.eval_pass_k`` > 0."""
    items = data.eval_items[: cfg.trainer.eval_max_prompts]
    prompts = [it.prompt_ids for it in items]
    stops = [*data.stop_ids, *cfg.engine.stop_token_ids]
    greedy = SamplingParams(
        n=1, temperature=0.0, max_new_tokens=cfg.engine.max_new_tokens, stop_token_ids=stops
    )
    engine.wake_up()
    output = _score(data, items, engine.generate(prompts, greedy), tokenizer)
    metrics = {
        "eval/accuracy": float(_correct(output).mean()),
        "eval/reward": float(output.rewards.mean()),
    }
    k = cfg.trainer.eval_pass_k
    if k > 0:
        sampled = SamplingParams(
            n=k,
            temperature=cfg.engine.temperature or 1.0,
            top_p=cfg.engine.top_p,
            top_k=cfg.engine.top_k,
            max_new_tokens=cfg.engine.max_new_tokens,
            stop_token_ids=stops,
            seed=cfg.run.seed,
        )
        output = _score(data, items, engine.generate(prompts, sampled), tokenizer)
        per_prompt = _correct(output).view(len(items), k)
        metrics[f"eval/pass@{k}"] = float(per_prompt.max(dim=1).values.mean())
    engine.sleep()
    return metrics
