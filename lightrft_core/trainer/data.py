"""The data side of a run: prompt datasets, the sampler, and safe reward scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import LightRFTConfig
from ..data.prompts import PromptDataset, PromptItem, PromptSampler
from ..interfaces import RewardInput, RewardModel
from ..rewards.safe import SafeScore, score_safely


@dataclass
class RunData:
    sampler: PromptSampler
    eval_items: list[PromptItem]
    reward: RewardModel
    failure_reward: float
    pad_id: int
    stop_ids: list[int]

    def score(self, batch: RewardInput) -> SafeScore:
        return score_safely(self.reward, batch, self.failure_reward)


def _dataset(path: str, cfg: LightRFTConfig, tokenizer: Any, reward: RewardModel) -> PromptDataset:
    # read_rows already logs one line about skipped malformed rows
    return PromptDataset.from_source(path, tokenizer, cfg.data, require_label=reward.requires_label)


def load_run_data(
    cfg: LightRFTConfig, tokenizer: Any, reward: RewardModel, *, rank: int = 0, world_size: int = 1
) -> RunData:
    """Datasets and sampler of an RL run (``data.train_path`` is required)."""
    if cfg.data.train_path is None:
        raise ValueError("data.train_path is not set: an RL run needs training prompts")
    train = _dataset(cfg.data.train_path, cfg, tokenizer, reward)
    eval_items: list[PromptItem] = []
    if cfg.data.eval_path is not None:
        eval_items = list(_dataset(cfg.data.eval_path, cfg, tokenizer, reward))
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return RunData(
        sampler=PromptSampler(
            train,
            cfg.trainer.prompts_per_step,
            seed=cfg.run.seed,
            rank=rank,
            world_size=world_size,
        ),
        eval_items=eval_items,
        reward=reward,
        failure_reward=cfg.reward.failure_reward,
        pad_id=pad_id,
        stop_ids=stop_ids,
    )
