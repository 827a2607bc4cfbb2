"""Reward models that read images on the tiny Qwen2-VL (``qwen_vl``): ``lightrft rm`` on
image preference pairs (the chosen answer names the picture's colour) trains, does not
depend on the micro-batch size, and exports a folder that ``reward.name: model`` with
``reward.actor: qwen_vl`` loads and scores image prompts with, in an RL step too."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lightrft_core.config import load_config
from lightrft_core.interfaces import RewardInput
from lightrft_core.interfaces.multimodal import MultiModalInputs
from lightrft_core.plugins import PluginManager, get_plugin_manager
from lightrft_core.rewards.model import ScalarRewardModel
from lightrft_core.trainer.reward_model import run_reward_model_training
from lightrft_core.trainer.rl import RLTrainer

pytest.importorskip("lightrft_plugin_qwen_vl")
pytestmark = pytest.mark.installed_plugins

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def colour_pairs(folder: Path, n: int, size: int = 28) -> Path:
    """``n`` pairs about a one-colour square, red or blue in turn: chosen names its colour,
    rejected the other; each word is chosen as often as rejected, so only the picture tells
    them apart. One text-only pair is mixed in."""
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        shown, other = ("red", "blue") if i % 2 else ("blue", "red")
        Image.new("RGB", (size, size), COLOURS[shown]).save(folder / f"{i}.png")
        rows.append(
            {"prompt": "colour?", "images": [f"{i}.png"], "chosen": shown, "rejected": other}
        )
    rows.append({"prompt": "say hello", "chosen": "hello", "rejected": "red"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rm_overrides(model_dir: Path, tmp_path: Path, out: str, *extra: str) -> list[str]:
    return [
        f"run.output_dir={tmp_path / out}",
        "run.seed=0",
        "model.name=qwen_vl",
        f"model.path={model_dir}",
        f"data.train_path={colour_pairs(tmp_path / 'train', 31)}",
        "sft.batch_size=8",
        "sft.micro_batch_size=4",
        "sft.learning_rate=1e-2",
        "logging.tensorboard=false",
        *extra,
    ]


def train_rm(model_dir: Path, tmp_path: Path, out: str, *extra: str) -> Any:
    manager = get_plugin_manager()
    cfg = load_config(None, rm_overrides(model_dir, tmp_path, out, *extra), manager=manager)
    return run_reward_model_training(cfg, manager)


@dataclass
class TrainedRM:
    final_model: Path
    history: list[dict[str, Any]]
    output: str


@pytest.fixture(scope="module")
def trained_rm(tiny_qwen_vl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRM:
    """``lightrft rm`` for 16 steps (4 epochs of 32 pairs), held-out pairs of larger pictures."""
    from lightrft_cli.main import app

    tmp_path = tmp_path_factory.mktemp("vl-rm")
    held_out = colour_pairs(tmp_path / "eval", 16, size=56)
    extra = ("sft.epochs=4", f"data.eval_path={held_out}")
    args = ["rm", "--plugin", "qwen-vl", *rm_overrides(tiny_qwen_vl_dir, tmp_path, "rm", *extra)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()
    return TrainedRM(tmp_path / "rm" / "final", [json.loads(line) for line in lines], result.output)


def test_the_reward_model_learns_to_name_the_pictures_colour(trained_rm: TrainedRM) -> None:
    assert "reward.name=model reward.actor=qwen_vl" in " ".join(trained_rm.output.split())
    history = trained_rm.history
    evals = [r for r in history if "eval/accuracy" in r]
    assert evals[0]["eval/accuracy"] == 0.0  # a zero score head: every margin is 0
    assert evals[-1]["eval/accuracy"] > 0.8
    losses = [r["rm/loss"] for r in history if "rm/loss" in r]
    assert losses[0] == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-5)
    assert sum(losses[-4:]) / 4 < 0.5 * losses[0]
    final = trained_rm.final_model
    assert (final / "processor_config.json").is_file() and (final / "critic.json").is_file()


def test_one_or_two_micro_batches_give_the_same_step(tiny_qwen_vl_dir, tmp_path) -> None:
    def second_step(micro: int) -> dict[str, float]:
        # the second step: the first one's head is zero, so its trunk gets no gradient
        options = (f"m{micro}", "sft.max_steps=2", f"sft.micro_batch_size={micro}")
        return train_rm(tiny_qwen_vl_dir, tmp_path, *options).history[-1]

    whole, split = second_step(8), second_step(4)
    assert whole["grad_norm"] > 0
    for key in ("rm/loss", "rm/accuracy", "rm/margin", "grad_norm"):
        assert split[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key


def image_reward(final: Path) -> ScalarRewardModel:
    return ScalarRewardModel(ScalarRewardModel.Config(path=str(final), actor="qwen_vl"))


def test_the_exported_folder_scores_image_prompts(trained_rm: TrainedRM) -> None:
    reward = image_reward(trained_rm.final_model)
    assert reward.accepts_image_prompts
    prompt = reward.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    pictures = {
        name: MultiModalInputs([Image.new("RGB", (28, 28), rgb)], {})
        for name, rgb in COLOURS.items()
    }
    names = list(COLOURS)
    batch = RewardInput(
        prompts=[prompt] * 4,
        responses=[answer for _ in names for answer in names],
        multimodal=[pictures[shown] for shown in names for _ in names],
    )
    scores = reward.score(batch).rewards.reshape(2, 2)  # [picture, answer]
    # the same texts score differently with another picture: each picture's best answer is
    # its colour
    assert scores.argmax(dim=1).tolist() == [0, 1]


def test_reward_model_scores_image_prompts_in_an_rl_step(
    trained_rm: TrainedRM, tiny_qwen_vl_dir: Path, tmp_path: Path
) -> None:
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_qwen_vl.plugin

    manager = PluginManager(autoload=False)
    manager.register(lightrft_plugin_grpo.plugin, name="grpo")
    manager.register(lightrft_plugin_qwen_vl.plugin, name="qwen_vl")
    rows = []
    for i, name in enumerate(COLOURS):
        Image.new("RGB", (28, 28), COLOURS[name]).save(tmp_path / f"{i}.png")
        rows.append({"prompt": "colour?", "images": [f"{i}.png"]})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    overrides = [
        f"run.output_dir={tmp_path / 'run'}",
        "run.seed=1",
        f"data.train_path={prompts}",
        "model.name=qwen_vl",
        f"model.path={tiny_qwen_vl_dir}",
        "engine.n_samples_per_prompt=2",
        "engine.max_new_tokens=3",
        "reward.name=model",
        f"reward.path={trained_rm.final_model}",
        "reward.actor=qwen_vl",
        "trainer.prompts_per_step=3",
        "trainer.max_steps=1",
        "logging.tensorboard=false",
    ]
    seen: list[RewardInput] = []
    trainer = RLTrainer(load_config(None, overrides, manager=manager), manager)
    score = trainer.data.reward.score

    def spy(batch: RewardInput) -> Any:
        seen.append(batch)
        return score(batch)

    trainer.data.reward.score = spy  # type: ignore[method-assign]
    history = trainer.train().history
    assert history[-1]["step"] == 1 and "reward/model_score" in history[-1]
    assert seen and all(m is not None and len(m.images) == 1 for m in seen[0].multimodal or [])
