"""What ``lightrft demo --task audio`` runs: the plan, progress bars and the report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightrft_cli.progress import progress_bars
from lightrft_core.demo.controlled import run_and_report

from .run import AudioDemoPlan


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
    plan = AudioDemoPlan(output_dir=output, algorithm=algorithm, seed=seed, rl_overrides=overrides)
    with progress_bars(console) as bars:
        run_and_report(plan, console=console, plugins=plugins, progress=bars)
