"""What ``lightrft demo --task audio`` runs: the plan, progress bars and the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from lightrft_cli.progress import progress_bars
from lightrft_core.plugins import get_plugin_manager

from .run import AudioDemoPlan, run_audio_demo
from .task import PITCHES, QUESTION


def run_cli(
    *,
    console: Any,
    output: Path,
    algorithm: str,
    seed: int,
    plugins: Sequence[str],
    overrides: Sequence[str],
) -> None:
    """Run the audio demo and print held-out accuracy after SFT, after RL and on silent
    clips (the control)."""
    started = time.perf_counter()
    manager = get_plugin_manager()
    for spec in plugins:
        manager.load_plugin(spec)
    plan = AudioDemoPlan(output_dir=output, algorithm=algorithm, seed=seed, rl_overrides=overrides)
    with progress_bars(console) as bars:
        result = run_audio_demo(plan, manager=manager, console=console, progress=bars)
    table = Table(title=f"Demo: {algorithm} on the pitch task (held-out clips, greedy)")
    for column in ("", "accuracy"):
        table.add_column(column)
    table.add_row("after SFT (before RL)", f"{result.accuracy_before:.1%}")
    table.add_row(f"after {algorithm}", f"{result.accuracy_after:.1%}")
    change = result.accuracy_after - result.accuracy_before
    table.add_row("change", f"{change * 100:+.1f} points")
    table.add_row(f"after {algorithm}, silent clips", f"{result.accuracy_silent:.1%}")
    table.add_row("chance", f"{1 / len(PITCHES):.1%}")
    console.print(table)
    console.print(f"curves: {result.curves}")
    console.print(f"model (Hugging Face format, with its processor): {result.final_model}")
    clip = plan.paths["data"] / "audio" / "eval_00000.wav"
    console.print(f"try it: lightrft generate {result.rl_dir} --audio {clip} --prompt '{QUESTION}'")
    console.print(f"total time {time.perf_counter() - started:.0f} s")
