"""``lightrft sft``: supervised fine-tuning with the same parts as RL."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..errors import user_errors
from ..progress import progress_bars
from .train_cmd import (
    CONFIG_OPTION,
    PLUGIN_OPTION,
    SUPERVISED_UNUSED,
    launched_as_rank_0,
    preflight,
    resolve,
    run_console,
)

SFT_OVERRIDES = typer.Argument(
    None, help="Overrides such as sft.epochs=2 sft.learning_rate=1e-4 (later wins)."
)


def sft(
    config: Path | None = CONFIG_OPTION,
    plugin: list[str] = PLUGIN_OPTION,
    overrides: list[str] | None = SFT_OVERRIDES,
) -> None:
    """Supervised fine-tuning on prompt/response rows (data.train_path, the sft section)."""
    from lightrft_core.trainer.sft import run_sft

    cfg, manager = resolve(config, plugin, overrides, SUPERVISED_UNUSED)
    console = run_console()  # silent on ranks other than 0 under torchrun
    bars_on = cfg.logging.progress_bar and launched_as_rank_0()
    with user_errors(), progress_bars(console, bars_on) as bars:
        preflight(cfg, manager)
        result = run_sft(cfg, manager, console=console, progress=bars("SFT steps"))
    last = result.history[-1] if result.history else {}
    console.print(
        escape(f"final loss {last.get('sft/loss', float('nan')):.4f}; model: {result.final_model}")
    )
