"""``lightrft demo``: tiny model + arithmetic task -> SFT warm-up -> RL -> report."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import LightRFTConfig, load_config
from ..models.tiny import build_tiny_checkpoint
from ..plugins import PluginManager, get_plugin_manager
from .task import ArithmeticTask, write_task_data

#: The configuration files the demo runs (also shipped as examples/demo_*.yaml).
CONFIG_FILES = {"sft": "sft.yaml", "rl": "grpo.yaml"}


def config_path(name: str) -> Path:
    return Path(str(resources.files("lightrft_core.demo").joinpath(CONFIG_FILES[name])))


@dataclass
class StagedDemoPlan(ABC):
    """Where and how a demo runs its stages (the SFT warm-up, then RL); a demo's plan
    subclasses it with its task and its defaults."""

    output_dir: Path
    algorithm: str = "grpo"
    seed: int = 0
    sft_examples: int = 2_048
    rl_prompts: int = 4_000
    held_out: int = 256
    rl_overrides: Sequence[str] = ()
    sft_overrides: Sequence[str] = ()

    @abstractmethod
    def config_file(self, stage: str) -> Path:
        """The configuration file of ``stage`` (``sft`` or ``rl``)."""

    @abstractmethod
    def prepare(self) -> None:
        """Build the tiny model and write the task data (deterministic from ``seed``)."""

    @property
    def paths(self) -> dict[str, Path]:
        o = self.output_dir
        return {"base": o / "base", "data": o / "data", "sft": o / "sft", "rl": o / "rl"}

    def sft_config(self, manager: PluginManager) -> LightRFTConfig:
        p = self.paths
        return demo_config(
            self.config_file("sft"),
            manager,
            output_dir=p["sft"],
            seed=self.seed,
            model_path=p["base"],
            data={"train_path": p["data"] / "sft.jsonl"},
            overrides=self.sft_overrides,
        )

    def rl_config(self, manager: PluginManager) -> LightRFTConfig:
        p = self.paths
        return self._rl_config(manager, p["rl"], p["sft"] / "final", "train.jsonl", "eval.jsonl")

    def _rl_config(
        self, manager: PluginManager, output_dir: Path, model: Path, train: str, held_out: str
    ) -> LightRFTConfig:
        """The RL configuration writing to ``output_dir``, starting from ``model``, with the
        data files ``train`` and ``held_out`` of the data folder."""
        data = self.paths["data"]
        return demo_config(
            self.config_file("rl"),
            manager,
            output_dir=output_dir,
            seed=self.seed,
            model_path=model,
            data={"train_path": data / train, "eval_path": data / held_out},
            overrides=[f"algorithm.name={self.algorithm}", *self.rl_overrides],
        )


@dataclass
class DemoPlan(StagedDemoPlan):
    """The arithmetic demo (``lightrft demo``); the defaults are the documented demo."""

    model_size: str = "5m"
    task: ArithmeticTask = field(default_factory=ArithmeticTask)
    sft_examples: int = 8_000
    rl_prompts: int = 20_000
    #: Share of SFT demonstrations that only estimate the answer (``~10``); see task.py.
    sft_estimate_fraction: float = 0.3

    def config_file(self, stage: str) -> Path:
        return config_path(stage)

    def prepare(self) -> None:
        prepare(self)


@dataclass
class DemoResult:
    accuracy_before: float
    accuracy_after: float
    rl_dir: Path
    final_model: Path | None
    curves: Path
    history: list[dict[str, Any]]


def prepare(plan: DemoPlan) -> None:
    """Build the tiny model and write the task data (deterministic from ``plan.seed``)."""
    p = plan.paths
    build_tiny_checkpoint(p["base"], plan.model_size, seed=plan.seed)
    write_task_data(
        p["data"],
        plan.task,
        sft=plan.sft_examples,
        rl=plan.rl_prompts,
        held_out=plan.held_out,
        seed=plan.seed,
        estimate_fraction=plan.sft_estimate_fraction,
    )


def demo_config(
    file: Path,
    manager: PluginManager,
    *,
    output_dir: Path,
    seed: int,
    model_path: Path,
    data: dict[str, Path],
    overrides: Sequence[str] = (),
) -> LightRFTConfig:
    """A demo's configuration ``file`` with the plan's folders, seed and data files
    (``data``: ``train_path``/``eval_path`` -> file); ``overrides`` come last and win."""
    return load_config(
        file,
        [
            f"run.output_dir={output_dir}",
            f"run.seed={seed}",
            *(f"data.{key}={path}" for key, path in data.items()),
            f"model.path={model_path}",
            *overrides,
        ],
        manager=manager,
    )


def sft_then_rl(
    sft_cfg: LightRFTConfig,
    rl_cfg: LightRFTConfig,
    prepare: Callable[[], None],
    *,
    manager: PluginManager,
    console: Any = None,
    progress: Any = None,
) -> DemoResult:
    """What every demo does once its configurations are valid: ``prepare()`` (model and
    data), the SFT warm-up, RL; returns held-out greedy accuracy before and after RL."""
    from ..trainer.plot import plot_run
    from ..trainer.rl import RLTrainer
    from ..trainer.sft import run_sft

    if rl_cfg.trainer.eval_every <= 0 or rl_cfg.data.eval_path is None:
        raise ValueError("the demo needs trainer.eval_every > 0 and data.eval_path")
    prepare()
    run_sft(sft_cfg, manager, console=console, progress=progress and progress("SFT warm-up"))
    result = RLTrainer(
        rl_cfg, manager, console=console, progress=progress and progress("RL")
    ).train()
    evals = [r for r in result.history if "eval/accuracy" in r]
    return DemoResult(
        accuracy_before=evals[0]["eval/accuracy"],
        accuracy_after=evals[-1]["eval/accuracy"],
        rl_dir=result.output_dir,
        final_model=result.final_model,
        curves=plot_run(result.output_dir),
        history=result.history,
    )


def run_demo(
    plan: DemoPlan,
    *,
    manager: PluginManager | None = None,
    console: Any = None,
    progress: Any = None,
) -> DemoResult:
    """Prepare, SFT, RL; returns held-out greedy accuracy before and after RL."""
    manager = manager or get_plugin_manager()
    rl_cfg = plan.rl_config(manager)  # validate both configurations before any work
    sft_cfg = plan.sft_config(manager)
    return sft_then_rl(
        sft_cfg,
        rl_cfg,
        plan.prepare,
        manager=manager,
        console=console,
        progress=progress,
    )
