"""The vision demo: its task, its shipped configs, the wiring, and (marked slow) that GRPO
learns to look -- a lift over the SFT checkpoint, the blank-picture control near chance, and
the same numbers for the same seed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.demo.controlled import run_controlled_demo
from lightrft_core.plugins import PluginManager
from lightrft_plugin_qwen_vl.demo.run import (
    CONFIG_FILES,
    VisionDemoPlan,
    config_path,
)
from lightrft_plugin_qwen_vl.demo.task import COLORS, QUESTION, ColorTask, write_task_data

ROOT = Path(__file__).resolve().parents[3]


def _dominant_color(image) -> str:  # type: ignore[no-untyped-def]
    """The colour of ``COLORS`` that most pixels of the picture are."""
    counts = dict.fromkeys(COLORS, 0)
    for pixel in image.get_flattened_data():
        for name, rgb in COLORS.items():
            if pixel == rgb:
                counts[name] += 1
    return max(counts, key=lambda name: counts[name])


def test_the_answer_is_the_colour_drawn() -> None:
    rng = random.Random(3)
    answers = []
    for _ in range(40):
        image, answer = ColorTask().draw(rng)
        assert image.size == (56, 56)
        assert _dominant_color(image) == answer
        answers.append(answer)
    assert set(answers) == set(COLORS)  # every colour occurs


def test_task_files(tmp_path: Path) -> None:
    paths = write_task_data(tmp_path, ColorTask(), sft=20, rl=30, held_out=10, seed=0)
    rows = {name: [json.loads(x) for x in path.open()] for name, path in paths.items()}
    assert [len(rows[n]) for n in ("sft", "train", "eval", "eval_blank")] == [20, 30, 10, 10]
    # SFT: the question with no picture, answered with a colour word (the form only)
    assert all(r["prompt"] == QUESTION and "images" not in r for r in rows["sft"])
    assert {r["response"] for r in rows["sft"]} <= set(COLORS)
    # held-out pictures are files of their own; the control has the same answers, blank
    held = [r["images"][0] for r in rows["eval"]]
    assert not set(held) & {r["images"][0] for r in rows["train"]}
    assert all((tmp_path / p).is_file() for p in held)
    assert [r["answer"] for r in rows["eval_blank"]] == [r["answer"] for r in rows["eval"]]
    assert {r["images"][0] for r in rows["eval_blank"]} == {"images/blank.png"}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_shipped_example_configs_are_the_demo_configs(name: str) -> None:
    example = ROOT / "examples" / ("demo_" + CONFIG_FILES[name])
    assert example.read_text() == config_path(name).read_text()


@pytest.fixture
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_qwen_vl.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_qwen_vl.plugin, name="qwen-vl")
    return pm


def _plan(output: Path, *, steps: int, sft: int, rl: int, held_out: int) -> VisionDemoPlan:
    return VisionDemoPlan(
        output_dir=output,
        sft_examples=sft,
        rl_prompts=rl,
        held_out=held_out,
        sft_overrides=["logging.tensorboard=false"],
        rl_overrides=[
            f"trainer.max_steps={steps}",
            f"trainer.eval_every={steps}",
            "logging.tensorboard=false",
        ],
    )


def _learning_curve(history: list[dict]) -> list[dict]:
    """The history without wall-clock figures (those differ from run to run)."""
    return [
        {k: v for k, v in row.items() if not k.startswith("time/") and k != "tokens_per_s"}
        for row in history
    ]


def test_demo_wiring_and_same_seed_same_numbers(manager: PluginManager, tmp_path: Path) -> None:
    first = run_controlled_demo(
        _plan(tmp_path / "a", steps=3, sft=64, rl=64, held_out=16), manager=manager
    )
    second = run_controlled_demo(
        _plan(tmp_path / "b", steps=3, sft=64, rl=64, held_out=16), manager=manager
    )
    assert _learning_curve(first.history) == _learning_curve(second.history)
    assert first.accuracy_control == second.accuracy_control
    assert (first.final_model / "processor_config.json").is_file()  # the export has it
    assert first.curves.is_file()


def test_unknown_demo_task_is_one_clear_error() -> None:
    out = CliRunner().invoke(app, ["demo", "--task", "smell"])
    assert out.exit_code == 2
    assert "choose one of: text, vision" in out.output


@pytest.mark.slow
def test_grpo_learns_to_look(manager: PluginManager, tmp_path: Path) -> None:
    """A short demo (150 RL steps, 128 held-out pictures): GRPO lifts held-out greedy accuracy
    by >= 15 points over the SFT checkpoint (which guesses: chance), and the trained model on
    blank pictures stays near chance -- the task needs the picture. (The full demo: 200
    steps, 256 pictures, 25% -> 99%; docs/multimodal.md.) 150 steps, not fewer: the
    trajectory depends on torch's thread count (float reduction order); measured +22.7
    points with 2 threads and +23.4 with 1 at 150 steps, but only +13.3 with 1 at 100."""
    result = run_controlled_demo(
        _plan(tmp_path, steps=150, sft=1024, rl=1600, held_out=128), manager=manager
    )
    chance = 1 / len(COLORS)
    assert result.accuracy_before < chance + 0.1
    assert result.accuracy_after - result.accuracy_before >= 0.15
    assert result.accuracy_control < chance + 0.1
