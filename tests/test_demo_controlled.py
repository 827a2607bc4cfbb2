"""The demo with an input-ablation control (``lightrft_core/demo/controlled.py``, the flow of
the vision and audio demos): where each stage reads and writes, and the report. The runs
themselves are the plugins' demo tests."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from lightrft_core.demo import controlled
from lightrft_core.demo.controlled import ControlledDemoPlan, ControlledDemoResult
from lightrft_core.demo.run import config_path
from lightrft_core.plugins import PluginManager


@dataclass
class GuessPlan(ControlledDemoPlan):
    """A plan with the core demo's configurations and a task of five answers."""

    rl_prompts: int = 10

    control = "empty"
    title = "the guessing task"
    control_inputs = "empty inputs"

    def config_file(self, stage: str) -> Path:
        return config_path(stage)

    def prepare(self) -> None:
        raise AssertionError("not run here")

    def chance(self) -> float:
        return 1 / 5

    def try_it(self, result: ControlledDemoResult) -> str:
        return f"try it: lightrft generate {result.rl_dir}"


@pytest.fixture
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    return pm


def test_each_stage_reads_the_last_ones_model(manager: PluginManager, tmp_path: Path) -> None:
    plan = GuessPlan(output_dir=tmp_path, seed=7, rl_overrides=["trainer.max_steps=3"])
    assert plan.rl_prompts == 10 and plan.held_out == 256  # a subclass's default, the base's
    sft, rl = plan.sft_config(manager), plan.rl_config(manager)
    control = plan.control_config(manager)
    assert (sft.model.options.path, sft.run.output_dir) == (
        str(tmp_path / "base"),
        str(tmp_path / "sft"),
    )
    assert sft.data.train_path == str(tmp_path / "data/sft.jsonl")
    assert (rl.model.options.path, rl.run.output_dir) == (
        str(tmp_path / "sft/final"),
        str(tmp_path / "rl"),
    )
    assert (rl.data.train_path, rl.data.eval_path) == (
        str(tmp_path / "data/train.jsonl"),
        str(tmp_path / "data/eval.jsonl"),
    )
    # the control: the trained model, its own folder, the held-out rows without their input
    assert control.model.options.path == str(tmp_path / "rl/final")
    assert control.run.output_dir == str(tmp_path / "empty")
    empty = str(tmp_path / "data/eval_empty.jsonl")
    assert (control.data.train_path, control.data.eval_path) == (empty, empty)
    assert {c.run.seed for c in (sft, rl, control)} == {7}
    assert rl.trainer.max_steps == control.trainer.max_steps == 3
    assert rl.algorithm.name == "grpo"


def test_the_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result = ControlledDemoResult(
        accuracy_before=0.25,
        accuracy_after=0.875,
        rl_dir=tmp_path / "rl",
        final_model=tmp_path / "rl/final",
        curves=tmp_path / "rl/curves.png",
        history=[],
        accuracy_control=0.1875,
    )
    monkeypatch.setattr(controlled, "run_controlled_demo", lambda plan, **_: result)
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False)
    plan = GuessPlan(output_dir=tmp_path)
    assert controlled.run_and_report(plan, console=console, plugins=[], progress=None) is result
    text = out.getvalue()
    assert "Demo: grpo on the guessing task" in text
    for label, value in [
        ("after SFT (before RL)", "25.0%"),
        ("after grpo", "87.5%"),
        ("change", "+62.5 points"),
        ("after grpo, empty inputs", "18.8%"),
        ("chance", "20.0%"),
    ]:
        assert any(label in line and value in line for line in text.splitlines()), label
    assert f"try it: lightrft generate {tmp_path / 'rl'}" in text
