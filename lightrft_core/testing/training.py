"""Helpers for algorithm plugins' tests: a 2-rank stand-in in threads, an easy graded task,
a fast tiny model, and a short real RL run through the core loop.

``ThreadGroup`` runs per-rank code in threads that all-reduce through shared slots (a real
collective in one process). ``LetterReward`` scores the fraction of a response's characters
equal to a letter (``LetterPlugin`` registers it; ``write_letter_prompts`` writes its
prompts). ``build_fast_tiny_model`` writes a one-layer tiny Qwen2 with the byte tokenizer;
``short_rl_rewards`` trains it with a plugin's algorithm on the letter task and returns the
mean reward of every step. The pytest fixtures over these are in ``.fixtures``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .. import hookimpl
from ..interfaces import RewardInput, RewardModel, RewardOutput


class ThreadGroup:
    """``world_size`` threads that all-reduce through shared slots: a real collective in one
    process, so per-rank code runs unchanged and sees the statistics of the global batch."""

    def __init__(self, world_size: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=30)

    def all_reduce_for(self, rank: int) -> Callable[..., torch.Tensor]:
        def all_reduce(value: torch.Tensor, op: str = "mean") -> torch.Tensor:
            self.slots[rank] = torch.as_tensor(value).detach().clone()
            self.barrier.wait()
            stacked = torch.stack([s for s in self.slots if s is not None])
            self.barrier.wait()  # every rank has read the slots before they are reused
            reduce = {"sum": stacked.sum, "mean": stacked.mean}
            if op in reduce:
                return reduce[op](0)
            return stacked.max(0).values if op == "max" else stacked.min(0).values

        return all_reduce

    def run(self, fns: list[Callable[[Callable[..., torch.Tensor]], Any]]) -> list[Any]:
        results: list[Any] = [None] * len(fns)
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                results[rank] = fns[rank](self.all_reduce_for(rank))
            except BaseException as exc:  # pragma: no cover - re-raised below
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(len(fns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


class LetterReward(RewardModel):
    """Fraction of response characters equal to ``letter`` (an easy, graded task)."""

    name = "letter"

    @dataclass
    class Config:
        letter: str = field(default="a", metadata={"help": "The rewarded character."})

    def score(self, batch: RewardInput) -> RewardOutput:
        values = [r.count(self.config.letter) / max(1, len(r)) for r in batch.responses]
        rewards = torch.tensor(values, dtype=torch.float32)
        return RewardOutput(rewards=rewards, sub_scores={"accuracy": (rewards > 0.5).float()})


class LetterPlugin:
    """A plugin object that registers ``LetterReward`` (``reward.name=letter``)."""

    @hookimpl
    def lightrft_register_reward_models(self, register: Any) -> None:
        register(LetterReward)


def write_letter_prompts(path: Path, count: int = 32) -> Path:
    """``count`` prompts ``say a<i>:`` with answer ``a`` as a JSONL file at ``path``."""
    rows = [{"prompt": f"say a{i}:", "answer": "a"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


#: The tiny Qwen2's shape with ``tiny_model_dir``: the ``5m`` size cut to 2 layers.
TINY_MODEL_SHAPE: dict[str, Any] = {"num_hidden_layers": 2}
#: ``fast_tiny_model_dir``: one layer, hidden 64 (a learning test in seconds on 2 CPU cores).
FAST_TINY_MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
}


def build_fast_tiny_model(path: Path) -> Path:
    """A one-layer tiny Qwen2 (hidden 64) with the byte tokenizer at ``path``: fast enough
    for a learning test of a few seconds on 2 CPU cores."""
    from ..models.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(path, **FAST_TINY_MODEL_SHAPE)


def short_rl_rewards(
    plugin: ModuleType,
    plugin_name: str,
    model_dir: Path,
    workdir: Path,
    algorithm: str,
    overrides: Sequence[str] = (),
) -> list[float]:
    """Run the core RL loop with ``plugin``'s ``algorithm`` on the letter task (32 prompts,
    4 per step, 4 samples each); returns the mean reward of every step."""
    from ..config import load_config
    from ..plugins import PluginManager
    from ..trainer.rl import RLTrainer

    prompts = write_letter_prompts(workdir / "prompts.jsonl")
    pm = PluginManager(autoload=False)
    pm.register(plugin, name=plugin_name)
    pm.register(LetterPlugin(), name="letter")
    cfg = load_config(
        None,
        [
            f"run.output_dir={workdir / algorithm}",
            "run.seed=3",
            f"data.train_path={prompts}",
            "data.apply_chat_template=false",
            f"model.path={model_dir}",
            f"algorithm.name={algorithm}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=4",
            "reward.name=letter",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=16",
            "trainer.learning_rate=1e-2",
            "trainer.max_grad_norm=1.0",
            "logging.tensorboard=false",
            *overrides,
        ],
        manager=pm,
    )
    history = RLTrainer(cfg, pm).train().history
    return [record["reward/mean"] for record in history if "reward/mean" in record]
