"""The data side of a run: prompt datasets, the sampler, and safe reward scoring."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import LightRFTConfig
from ..data.prompts import PromptDataset, PromptItem, PromptSampler
from ..data.rows import DataError
from ..interfaces import MultiModalInputs, RewardInput, RewardModel
from ..rewards.safe import SafeScore, score_safely
from .reward_failures import RewardFailureWatch


@dataclass
class RunData:
    sampler: PromptSampler
    eval_items: list[PromptItem]
    reward: RewardModel
    failure_reward: float
    pad_id: int
    stop_ids: list[int]
    failure_watch: RewardFailureWatch
    reward_timeout_s: float | None = None

    def score(self, batch: RewardInput) -> SafeScore:
        """The rewards of ``batch``, failures replaced (``rewards/safe.py``), within
        ``reward.timeout_s``."""
        return score_safely(
            self.reward, batch, self.failure_reward, timeout_s=self.reward_timeout_s
        )


def _dataset(
    path: str, cfg: LightRFTConfig, tokenizer: Any, processor: Any, reward: RewardModel
) -> PromptDataset:
    # read_rows already logs one line about skipped malformed rows
    dataset = PromptDataset.from_source(
        path, tokenizer, cfg.data, require_label=reward.requires_label, processor=processor
    )
    with_media = sum(item.multimodal is not None for item in dataset)
    if with_media and not reward.accepts_image_prompts:
        media = media_kinds(item.multimodal for item in dataset)
        raise DataError(
            f"{path}: {with_media} prompt(s) carry {media}, but reward {reward.name!r} scores "
            f"text only and would not see them; use a rule or remote reward for prompts with "
            f"{media}, or text-only data"
        )
    return dataset


def media_kinds(media: Iterable[MultiModalInputs | None]) -> str:
    """What rows' media are, for messages: ``images``, ``audio`` or ``images and audio``."""
    kinds: set[str] = set()
    for item in media:
        if item is not None:
            kinds.update(
                kind for kind, held in (("images", item.images), ("audio", item.audios)) if held
            )
    return " and ".join(sorted(kinds, key=["images", "audio"].index)) or "media"


def load_run_data(
    cfg: LightRFTConfig,
    tokenizer: Any,
    reward: RewardModel,
    *,
    rank: int = 0,
    world_size: int = 1,
    processor: Any = None,
) -> RunData:
    """Datasets and sampler of an RL run (``data.train_path`` is required); ``processor``
    (the model's ``AutoProcessor``, ``None`` for a text-only model) encodes image rows."""
    if cfg.data.train_path is None:
        raise ValueError("data.train_path is not set: an RL run needs training prompts")
    train = _dataset(cfg.data.train_path, cfg, tokenizer, processor, reward)
    eval_items: list[PromptItem] = []
    if cfg.data.eval_path is not None:
        eval_items = list(_dataset(cfg.data.eval_path, cfg, tokenizer, processor, reward))
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
        failure_watch=RewardFailureWatch(
            reward.name, cfg.reward.max_failure_rate, cfg.reward.max_failure_steps
        ),
        reward_timeout_s=cfg.reward.timeout_s,
    )
