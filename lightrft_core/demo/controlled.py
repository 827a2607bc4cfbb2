"""A demo with an input-ablation control: SFT warm-up -> RL (the core demo's
``sft_then_rl``) -> held-out accuracy, then the trained model on the held-out questions with
the input taken away (a blank picture, a silent clip), evaluated only. A task that needs its
input learns above chance; its control stays near chance.

A plugin's demo subclasses :class:`ControlledDemoPlan` with its task: the configuration
files, ``prepare`` (model and data, including ``eval_<control>.jsonl``), its defaults and
the report's words."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import LightRFTConfig
from ..plugins import PluginManager, get_plugin_manager
from .run import DemoResult, StagedDemoPlan, sft_then_rl


@dataclass
class ControlledDemoPlan(StagedDemoPlan):
    """A demo's stages plus the control; a subclass sets its task, its defaults and the
    report's words."""

    #: The control's name: its run folder and data file (``eval_<control>.jsonl``).
    control: ClassVar[str]
    #: The report's title after "Demo: <algorithm> on ".
    title: ClassVar[str]
    #: The report's words for the control's inputs ("blank pictures").
    control_inputs: ClassVar[str]

    @abstractmethod
    def chance(self) -> float:
        """Accuracy of a guess."""

    @abstractmethod
    def try_it(self, result: ControlledDemoResult) -> str:
        """A ``lightrft generate`` command line for the trained model."""

    @property
    def paths(self) -> dict[str, Path]:
        return {**super().paths, self.control: self.output_dir / self.control}

    def control_config(self, manager: PluginManager) -> LightRFTConfig:
        """The trained model on the held-out questions without their input (evaluated
        only, never trained)."""
        p = self.paths
        held_out = f"eval_{self.control}.jsonl"
        return self._rl_config(manager, p[self.control], p["rl"] / "final", held_out, held_out)


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

    from .report import accuracy_table

    started = time.perf_counter()
    manager = get_plugin_manager()
    for spec in plugins:
        manager.load_plugin(spec)
    result = run_controlled_demo(plan, manager=manager, console=console, progress=progress)
    algorithm = plan.algorithm
    table = accuracy_table(f"Demo: {algorithm} on {plan.title}", algorithm, result)
    table.add_row(f"after {algorithm}, {plan.control_inputs}", f"{result.accuracy_control:.1%}")
    table.add_row("chance", f"{plan.chance():.1%}")
    console.print(table)
    console.print(escape(f"curves: {result.curves}"))
    console.print(escape(f"model (Hugging Face format, with its processor): {result.final_model}"))
    console.print(escape(plan.try_it(result)))
    console.print(f"total time {time.perf_counter() - started:.0f} s")
    return result
