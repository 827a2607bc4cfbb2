"""``lightrft demo --task vision``: a tiny Qwen2-VL and the colour task -> SFT warm-up (the
answer's form only) -> GRPO through ``lightrft train``'s code -> held-out accuracy, and the
same model on blank pictures as the control (task.py says why)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lightrft_core.config import LightRFTConfig, load_config
from lightrft_core.plugins import PluginManager, get_plugin_manager

from ..tiny import build_tiny_qwen_vl
from .task import ColorTask, write_task_data

#: The configuration files the demo runs (also shipped as examples/demo_vision_*.yaml).
CONFIG_FILES = {"sft": "vision_sft.yaml", "rl": "vision_grpo.yaml"}


def config_path(name: str) -> Path:
    return Path(str(resources.files("lightrft_plugin_qwen_vl.demo").joinpath(CONFIG_FILES[name])))


@dataclass
class VisionDemoPlan:
    """Where and how the demo runs; the defaults are the documented demo."""

    output_dir: Path
    algorithm: str = "grpo"
    family: str = "qwen2_vl"
    task: ColorTask = field(default_factory=ColorTask)
    seed: int = 0
    sft_examples: int = 2_048
    rl_prompts: int = 4_000
    held_out: int = 256
    rl_overrides: Sequence[str] = ()
    sft_overrides: Sequence[str] = ()

    @property
    def paths(self) -> dict[str, Path]:
        o = self.output_dir
        return {
            "base": o / "base",
            "data": o / "data",
            "sft": o / "sft",
            "rl": o / "rl",
            "blank": o / "blank",
        }

    def sft_config(self, manager: PluginManager) -> LightRFTConfig:
        p = self.paths
        return load_config(
            config_path("sft"),
            [
                f"run.output_dir={p['sft']}",
                f"run.seed={self.seed}",
                f"data.train_path={p['data'] / 'sft.jsonl'}",
                f"model.path={p['base']}",
                *self.sft_overrides,
            ],
            manager=manager,
        )

    def rl_config(self, manager: PluginManager) -> LightRFTConfig:
        p = self.paths
        return load_config(
            config_path("rl"),
            [
                f"run.output_dir={p['rl']}",
                f"run.seed={self.seed}",
                f"data.train_path={p['data'] / 'train.jsonl'}",
                f"data.eval_path={p['data'] / 'eval.jsonl'}",
                f"model.path={p['sft'] / 'final'}",
                f"algorithm.name={self.algorithm}",
                *self.rl_overrides,
            ],
            manager=manager,
        )

    def blank_config(self, manager: PluginManager) -> LightRFTConfig:
        """The trained model on the held-out questions with blank pictures (evaluated
        only, never trained)."""
        p = self.paths
        return load_config(
            config_path("rl"),
            [
                f"run.output_dir={p['blank']}",
                f"run.seed={self.seed}",
                f"data.train_path={p['data'] / 'eval_blank.jsonl'}",
                f"data.eval_path={p['data'] / 'eval_blank.jsonl'}",
                f"model.path={p['rl'] / 'final'}",
                f"algorithm.name={self.algorithm}",
                *self.rl_overrides,
            ],
            manager=manager,
        )


@dataclass
class VisionDemoResult:
    accuracy_before: float
    accuracy_after: float
    accuracy_blank: float
    rl_dir: Path
    final_model: Path
    curves: Path
    history: list[dict[str, Any]]


def prepare(plan: VisionDemoPlan) -> None:
    """Build the tiny model and write the task data (deterministic from ``plan.seed``)."""
    p = plan.paths
    build_tiny_qwen_vl(p["base"], family=plan.family, seed=plan.seed)
    write_task_data(
        p["data"],
        plan.task,
        sft=plan.sft_examples,
        rl=plan.rl_prompts,
        held_out=plan.held_out,
        seed=plan.seed,
    )


def run_vision_demo(
    plan: VisionDemoPlan,
    *,
    manager: PluginManager | None = None,
    console: Any = None,
    progress: Any = None,
) -> VisionDemoResult:
    """Prepare, SFT, RL, then the blank-picture control; returns held-out greedy accuracy
    before RL, after RL, and after RL on blank pictures."""
    from lightrft_core.trainer.plot import plot_run
    from lightrft_core.trainer.rl import RLTrainer
    from lightrft_core.trainer.sft import run_sft

    manager = manager or get_plugin_manager()
    rl_cfg = plan.rl_config(manager)  # validate the configurations before any work
    sft_cfg = plan.sft_config(manager)
    if rl_cfg.trainer.eval_every <= 0 or rl_cfg.data.eval_path is None:
        raise ValueError("the demo needs trainer.eval_every > 0 and data.eval_path")
    prepare(plan)
    run_sft(sft_cfg, manager, console=console, progress=progress and progress("SFT warm-up"))
    result = RLTrainer(
        rl_cfg, manager, console=console, progress=progress and progress("RL")
    ).train()
    evals = [r for r in result.history if "eval/accuracy" in r]
    control = RLTrainer(plan.blank_config(manager), manager, console=console)
    blank = control.evaluate()
    control.metrics.close()
    return VisionDemoResult(
        accuracy_before=evals[0]["eval/accuracy"],
        accuracy_after=evals[-1]["eval/accuracy"],
        accuracy_blank=blank["eval/accuracy"],
        rl_dir=result.output_dir,
        final_model=result.final_model,
        curves=plot_run(result.output_dir),
        history=result.history,
    )
