"""``lightrft rm``: a Bradley–Terry reward model trained from preference pairs on the tiny
model, then loaded by ``reward.name: model``; the data checks; micro-batch invariance."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.config import load_config
from lightrft_core.data.preferences import PreferenceDataset
from lightrft_core.data.rows import DataError
from lightrft_core.interfaces import RewardInput
from lightrft_core.models.tiny import build_byte_tokenizer
from lightrft_core.plugins import get_plugin_manager
from lightrft_core.rewards.model import ScalarRewardModel
from lightrft_core.trainer.reward_model import run_reward_model_training


def letter_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """Prompt, a chosen response mostly of 'a', a rejected one without any."""
    rng = random.Random(seed)
    others = "bcdefghijklmnopqrstuvwxyz0123456789"
    return [
        {
            "prompt": f"say a{rng.randrange(100)}:",
            "chosen": "".join(rng.choice("aaab") for _ in range(rng.randint(1, 6))),
            "rejected": "".join(rng.choice(others) for _ in range(rng.randint(1, 6))),
        }
        for _ in range(n)
    ]


def write(rows: list[dict[str, str]], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def overrides(tiny_model_dir: Path, tmp_path: Path, out: str, *extra: str) -> list[str]:
    return [
        f"run.output_dir={tmp_path / out}",
        "run.seed=0",
        f"model.path={tiny_model_dir}",
        f"data.train_path={write(letter_pairs(256, 0), tmp_path / 'train.jsonl')}",
        "data.apply_chat_template=false",
        "sft.batch_size=16",
        "sft.micro_batch_size=8",
        "sft.learning_rate=1e-3",
        "sft.max_length=64",
        "logging.tensorboard=false",
        *extra,
    ]


def test_a_trained_reward_model_prefers_the_chosen_responses(tiny_model_dir, tmp_path) -> None:
    # no plugin is loaded here: lightrft rm needs no algorithm (the default names grpo)
    held_out = write(letter_pairs(64, 1), tmp_path / "eval.jsonl")
    result = CliRunner().invoke(
        app, ["rm", *overrides(tiny_model_dir, tmp_path, "rm", f"data.eval_path={held_out}")]
    )
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output and "reward.name=model" in result.output
    assert "final loss nan" not in result.output
    rows = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").open()]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 16]  # before and after 256 / 16 steps
    assert evals[0]["eval/accuracy"] < 0.8 < 0.95 < evals[-1]["eval/accuracy"]
    steps = [r for r in rows if "rm/loss" in r]
    assert steps[-1]["rm/loss"] < steps[0]["rm/loss"]

    # what RL loads: prompt + chosen scores above prompt + rejected
    reward = ScalarRewardModel(ScalarRewardModel.Config(path=str(tmp_path / "rm" / "final")))
    pairs = letter_pairs(32, 2)
    batch = RewardInput(
        prompts=[p["prompt"] for p in pairs] * 2,
        responses=[p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
    )
    scores = reward.score(batch).rewards
    assert float((scores[:32] > scores[32:]).float().mean()) > 0.9


@pytest.mark.installed_plugins
def test_the_step_does_not_depend_on_the_micro_batch_size(tiny_model_dir, tmp_path) -> None:
    """One optimizer step of 16 pairs in 1 or 8 micro-batches: the same loss and the same
    gradient norm (AdamW would hide a wrong loss scale in the weights; the norm does not)."""

    def first_step(micro: int) -> dict[str, float]:
        manager = get_plugin_manager()
        options = (f"m{micro}", "sft.max_steps=1", f"sft.micro_batch_size={micro}")
        cfg = load_config(None, overrides(tiny_model_dir, tmp_path, *options), manager=manager)
        return run_reward_model_training(cfg, manager).history[-1]

    whole, split = first_step(16), first_step(2)
    assert whole["grad_norm"] > 0
    for key in ("rm/loss", "rm/accuracy", "rm/margin", "grad_norm"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key


@pytest.mark.installed_plugins
def test_preference_rows_are_checked(tmp_path) -> None:
    tokenizer = build_byte_tokenizer()
    bad = write([{"prompt": "p", "chosen": "a"}], tmp_path / "bad.jsonl")
    config = load_config(None, ["data.apply_chat_template=false"]).data
    with pytest.raises(DataError, match="bad.jsonl.*rejected"):
        PreferenceDataset.from_source(str(bad), tokenizer, config)
    rows = [
        {"prompt": "p:", "chosen": "a" * 3, "rejected": "b"},
        {"prompt": "p:", "chosen": "a" * 30, "rejected": "b"},
    ]
    data = PreferenceDataset(rows, tokenizer, apply_chat_template=False, max_length=10)
    assert len(data) == 1 and data.num_filtered == 1  # 2 + 30 tokens > 10: dropped
    assert (data[0].chosen, data[0].rejected) == ("p:aaa", "p:b")
