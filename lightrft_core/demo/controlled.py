"""A demo with an input-ablation control: SFT warm-up -> RL (the core demo's
``sft_then_rl``) -> held-out accuracy, then the trained model on the held-out questions with
the input taken away (a blank picture, a silent clip), evaluated only. A task that needs its
input learns above chance; its control stays near chance.

A plugin's demo subclasses :class:`ControlledDemoPlan` with its task: the configuration
files, ``prepare`` (model and data, including ``eval_<control>.jsonl``) and the report's
words."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import LightRFTConfig
from ..plugins import PluginManager, get_plugin_manager
from .run import DemoResult, demo_config, sft_then_rl


@dataclass
class ControlledDemoPlan(ABC):
    """Where and how the demo runs; a subclass sets its task's defaults."""

    output_dir: Path
    algorithm: str = "grpo"
    seed: int = 0
    sft_examples: int = 2_048
    rl_prompts: int = 4_000
    held_out: int = 256
    rl_overrides: Sequence[str] = ()
    sft_overrides: Sequence[str] = ()

    #: The control's name: its run folder and data file (``eval_<control>.jsonl``).
    control: ClassVar[str]
    #: The report's title after "Demo: <algorithm> on ".
    title: ClassVar[str]
    #: The report's words for the control's inputs ("blank pictures").
    control_inputs: ClassVar[str]

    @abstractmethod
    def config_file(self, stage: str) -> Path:
        """The configuration file of ``stage`` (``sft`` or ``rl``)."""

    @abstractmethod
    def prepare(self) -> None:
        """Build the tiny model and write the task data (deterministic from ``seed``)."""

    @abstractmethod
    def chance(self) -> float:
        """Accuracy of a guess."""

    @abstractmethod
    def try_it(self, result: ControlledDemoResult) -> str:
        """A ``lightrft generate`` command line for the trained model."""

    @property
    def paths(self) -> dict[str, Path]:
        o = self.output_dir
        names = ("base", "data", "sft", "rl", self.control)
        return {name: o / name for name in names}

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

    def control_config(self, manager: PluginManager) -> LightRFTConfig:
        """The trained model on the held-out questions without their input (evaluated
        only, never trained)."""
        p = self.paths
        held_out = f"eval_{self.control}.jsonl"
        return self._rl_config(manager, p[self.control], p["rl"] / "final", held_out, held_out)

    def _rl_config(
        self, manager: PluginManager, output_dir: Path, model: Path, train: str, held_out: str
    ) -> LightRFTConfig:
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
class ControlledDemoResult(DemoResult):
    """The demo's result plus the trained model's accuracy on the control."""

    accuracy_control: float


def run_controlled_demo(
    plan: ControlledDemoPlan,
    *,
    manager: PluginManager | None = None,
    console: Any = None,
    progress: Any = None,
) -> ControlledDemoResult:
    """Prepare, SFT, RL, then the control; returns held-out greedy accuracy before RL,
    after RL, and after RL without the input."""
    from ..trainer.rl import RLTrainer

    manager = manager or get_plugin_manager()
    rl_cfg = plan.rl_config(manager)  # validate the configurations before any work
    sft_cfg = plan.sft_config(manager)
    result = sft_then_rl(
        sft_cfg, rl_cfg, plan.prepare, manager=manager, console=console, progress=progress
    )
    control = RLTrainer(plan.control_config(manager), manager, console=console)
    accuracy = control.evaluate()["eval/accuracy"]
    control.metrics.close()
    return ControlledDemoResult(**vars(result), accuracy_control=accuracy)


def run_and_report(
    plan: ControlledDemoPlan, *, console: Any, plugins: Sequence[str], progress: Any
) -> ControlledDemoResult:
    """What ``lightrft demo --task ...`` does for such a demo: load ``plugins``, run it
    with ``progress`` bars, print held-out accuracy after SFT, after RL and on the control,
    and where to find the curves and the model."""
    from rich.markup import escape
    from rich.table import Table

    started = time.perf_counter()
    manager = get_plugin_manager()
    for spec in plugins:
        manager.load_plugin(spec)
    result = run_controlled_demo(plan, manager=manager, console=console, progress=progress)
    algorithm = plan.algorithm
    table = Table(title=f"Demo: {algorithm} on {plan.title}")
    for column in ("", "accuracy"):
        table.add_column(column)
    table.add_row("after SFT (before RL)", f"{result.accuracy_before:.1%}")
    table.add_row(f"after {algorithm}", f"{result.accuracy_after:.1%}")
    change = result.accuracy_after - result.accuracy_before
    table.add_row("change", f"{change * 100:+.1f} points")
    table.add_row(f"after {algorithm}, {plan.control_inputs}", f"{result.accuracy_control:.1%}")
    table.add_row("chance", f"{plan.chance():.1%}")
    console.print(table)
    console.print(escape(f"curves: {result.curves}"))
    console.print(escape(f"model (Hugging Face format, with its processor): {result.final_model}"))
    console.print(escape(plan.try_it(result)))
    console.print(f"total time {time.perf_counter() - started:.0f} s")
    return result
