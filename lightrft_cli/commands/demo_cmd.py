"""``lightrft demo``: the built-in end-to-end run on a tiny model (CPU, minutes)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from lightrft_core.plugins import get_plugin_manager

from ..errors import user_errors
from ..progress import progress_bars

#: Demo tasks that come with a plugin: task -> (module with ``run_cli``, distribution).
PLUGIN_TASKS = {
    "vision": ("lightrft_plugin_qwen_vl.demo.cli", "lightrft-plugin-qwen-vl"),
    "audio": ("lightrft_plugin_qwen_audio.demo.cli", "lightrft-plugin-qwen-audio"),
}


def demo(
    task: str = typer.Option(
        "text",
        "--task",
        "-t",
        help="text: arithmetic with a tiny language model (built in). vision: name the colour "
        "of a shape in a picture with a tiny Qwen2-VL (lightrft-plugin-qwen-vl). audio: tell "
        "how high the tone in a clip is with a tiny Qwen2-Audio (lightrft-plugin-qwen-audio).",
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Run folder (default runs/demo, runs/demo-vision, runs/demo-audio).",
    ),
    algorithm: str = typer.Option("grpo", "--algorithm", "-a", help="RL algorithm to use."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model, the data and the run."),
    estimates: float = typer.Option(
        0.3,
        "--sft-estimates",
        min=0.0,
        max=1.0,
        help="Share of SFT demonstrations that only estimate the answer ('~10' for 14); "
        "0 gives exact demonstrations only.",
    ),
    plugin: list[str] = typer.Option(
        [], "--plugin", "-p", help="Load a plugin (e.g. one providing --algorithm). Repeatable."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="Overrides of the RL configuration, e.g. trainer.max_steps=20."
    ),
) -> None:
    """Build a tiny model and an arithmetic task, SFT-warm it, train it with RL (GRPO by
    default), and report held-out accuracy before and after RL."""
    console = Console(highlight=False)
    if task in PLUGIN_TASKS:
        module_name, distribution = PLUGIN_TASKS[task]
        with user_errors():
            module = _plugin_demo(task, module_name, distribution)
            module.run_cli(
                console=console,
                output=output or Path(f"runs/demo-{task}"),
                algorithm=algorithm,
                seed=seed,
                plugins=plugin,
                overrides=overrides or [],
            )
        return
    if task != "text":
        choices = ", ".join(["text", *PLUGIN_TASKS])
        console.print(
            escape(f"error: --task {task!r} is not a demo task; choose one of: {choices}")
        )
        raise typer.Exit(2)
    from lightrft_core.demo.report import accuracy_table
    from lightrft_core.demo.run import DemoPlan, run_demo

    plan = DemoPlan(
        output_dir=output or Path("runs/demo"),
        algorithm=algorithm,
        seed=seed,
        sft_estimate_fraction=estimates,
        rl_overrides=overrides or [],
    )
    started = time.perf_counter()
    manager = get_plugin_manager()
    with user_errors(), progress_bars(console) as bars:
        for spec in plugin:
            manager.load_plugin(spec)
        result = run_demo(plan, manager=manager, console=console, progress=bars)
    title = f"Demo: {algorithm} on the arithmetic task (held-out, greedy)"
    console.print(accuracy_table(title, algorithm, result))
    console.print(escape(f"curves: {result.curves}"))
    console.print(escape(f"model (Hugging Face format): {result.final_model}"))
    console.print(escape(f"try it: lightrft generate {result.rl_dir} --prompt '3+4-2='"))
    console.print(f"total time {time.perf_counter() - started:.0f} s")


def _plugin_demo(task: str, module_name: str, distribution: str) -> Any:
    """The module of a demo task that a plugin ships; a clear error when it is missing."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise
        raise ValueError(
            f"the {task} demo comes with {distribution}: pip install {distribution}"
        ) from None
