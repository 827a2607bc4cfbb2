"""``lightrft demo --task audio``: a tiny Qwen2-Audio and the pitch task -> SFT
warm-up (the answer's form only) -> GRPO through ``lightrft train``'s code -> held-out
accuracy, and the same model on silent clips as the control (task.py says why)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lightrft_core.config import LightRFTConfig
from lightrft_core.demo.run import DemoResult, demo_config, sft_then_rl
from lightrft_core.plugins import PluginManager, get_plugin_manager

from ..tiny import build_tiny_qwen2_audio
from .task import PitchTask, write_task_data

#: The configuration files the demo runs (also shipped as examples/demo_audio_*.yaml).
CONFIG_FILES = {"sft": "audio_sft.yaml", "rl": "audio_grpo.yaml"}


def config_path(name: str) -> Path:
    return Path(
        str(resources.files("lightrft_plugin_qwen_audio.demo").joinpath(CONFIG_FILES[name]))
    )


@dataclass
class AudioDemoPlan:
    """Where and how the demo runs; the defaults are the documented demo."""

    output_dir: Path
    algorithm: str = "grpo"
    task: PitchTask = field(default_factory=PitchTask)
    seed: int = 0
    sft_examples: int = 2_048
    rl_prompts: int = 6_400
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
            "silent": o / "silent",
        }

    def sft_config(self, manager: PluginManager) -> LightRFTConfig:
        p = self.paths
        return demo_config(
            config_path("sft"),
            manager,
            output_dir=p["sft"],
            seed=self.seed,
            model_path=p["base"],
            data={"train_path": p["data"] / "sft.jsonl"},
            overrides=self.sft_overrides,
        )

    def rl_config(self, manager: PluginManager) -> LightRFTConfig:
        p = self.paths
        return self._grpo_config(manager, p["rl"], p["sft"] / "final", "train.jsonl", "eval.jsonl")

    def silent_config(self, manager: PluginManager) -> LightRFTConfig:
        """The trained model on the held-out questions with silent clips (evaluated only,
        never trained)."""
        p = self.paths
        silent = "eval_silent.jsonl"
        return self._grpo_config(manager, p["silent"], p["rl"] / "final", silent, silent)

    def _grpo_config(
        self, manager: PluginManager, output_dir: Path, model: Path, train: str, held_out: str
    ) -> LightRFTConfig:
        data = self.paths["data"]
        return demo_config(
            config_path("rl"),
            manager,
            output_dir=output_dir,
            seed=self.seed,
            model_path=model,
            data={"train_path": data / train, "eval_path": data / held_out},
            overrides=[f"algorithm.name={self.algorithm}", *self.rl_overrides],
        )


@dataclass
class AudioDemoResult(DemoResult):
    """The demo's result plus the trained model's accuracy on silent clips."""

    accuracy_silent: float


def prepare(plan: AudioDemoPlan) -> None:
    """Build the tiny model and write the task data (deterministic from ``plan.seed``)."""
    p = plan.paths
    build_tiny_qwen2_audio(p["base"], seed=plan.seed)
    write_task_data(
        p["data"],
        plan.task,
        sft=plan.sft_examples,
        rl=plan.rl_prompts,
        held_out=plan.held_out,
        seed=plan.seed,
    )


def run_audio_demo(
    plan: AudioDemoPlan,
    *,
    manager: PluginManager | None = None,
    console: Any = None,
    progress: Any = None,
) -> AudioDemoResult:
    """Prepare, SFT, RL (the core demo's ``sft_then_rl``), then the silent-clip control;
    returns held-out greedy accuracy before RL, after RL, and after RL on silent clips."""
    from lightrft_core.trainer.rl import RLTrainer

    manager = manager or get_plugin_manager()
    rl_cfg = plan.rl_config(manager)  # validate the configurations before any work
    sft_cfg = plan.sft_config(manager)
    result = sft_then_rl(
        sft_cfg,
        rl_cfg,
        lambda: prepare(plan),
        manager=manager,
        console=console,
        progress=progress,
    )
    control = RLTrainer(plan.silent_config(manager), manager, console=console)
    silent = control.evaluate()
    control.metrics.close()
    return AudioDemoResult(**vars(result), accuracy_silent=silent["eval/accuracy"])
